// One h-detach LSTM layer on a CPU: all T steps of the forward pass, and all T steps of the masked
// backward pass, each in one call, so that no per-step work is issued from Python. Per step: one
// GEMM through ATen (MKL), then one fused element-wise pass over the step's (B, 4H) gates.
//
// Layout and semantics are those of FusedHDetachLayer in _kernel.py: tensors are model-major
// (K, T, B, ...), gate columns are (o, i, f, 2g), and at a blocked step the recurrent GEMM of the
// backward pass is skipped. Registered as torch.ops.hdetach_lstm.{recurrence_forward,recurrence_backward}.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <tuple>
#include <vector>

namespace {

template <typename scalar_t>
constexpr scalar_t inverse_factorial(int k) {
  double factorial = 1.0;
  for (int m = 2; m <= k; ++m) factorial *= m;
  return static_cast<scalar_t>(1.0 / factorial);
}

template <typename scalar_t>
struct ExpConstants;

template <>
struct ExpConstants<float> {
  using bits_t = uint32_t;
  static constexpr int mantissa_bits = 23;
  static constexpr bits_t exponent_bias = 127;
  static constexpr int degree = 7;                       // Taylor remainder 0.35^8 / 8! ~ 5e-9
  static constexpr float lowest = -87.0f, highest = 88.0f;  // keeps 2^n a normal float
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float round_shift = 12582912.0f;  // 1.5 * 2^23
  // ln 2 split so that n * ln2_hi is exact for the n that occur.
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
};

template <>
struct ExpConstants<double> {
  using bits_t = uint64_t;
  static constexpr int mantissa_bits = 52;
  static constexpr bits_t exponent_bias = 1023;
  static constexpr int degree = 13;  // Taylor remainder 0.35^14 / 14! ~ 4e-18
  static constexpr double lowest = -708.0, highest = 709.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double round_shift = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
};

// The element-wise step kernels, compiled for AVX2 + FMA and for the baseline; the choice is made
// at run time, so the extension needs no -march flag and runs on any x86-64 (or other) machine.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HDETACH_HAVE_AVX2_CLONE 1
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "step_kernels.h"
#pragma GCC pop_options
}  // namespace avx2
#endif

namespace baseline {
#include "step_kernels.h"
}  // namespace baseline

bool use_avx2() {
#ifdef HDETACH_HAVE_AVX2_CLONE
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
#else
  return false;
#endif
}

// Calls the AVX2 build of a step kernel where the CPU has AVX2 and FMA, the baseline build elsewhere.
#ifdef HDETACH_HAVE_AVX2_CLONE
#define STEP_KERNEL(name, ...) (use_avx2() ? avx2::name(__VA_ARGS__) : baseline::name(__VA_ARGS__))
#else
#define STEP_KERNEL(name, ...) baseline::name(__VA_ARGS__)
#endif

// Up to this input size (1 for the copying task and pixel MNIST, 2 for adding) the input
// projection and the input-side weight gradient are loops inside the recurrence, on rows already in
// cache; a GEMM with so thin an inner dimension would be one more pass over the (T, B, 4H) gates.
constexpr int64_t max_fused_input_size = 4;

// Batch rows are independent through the whole recurrence, so each thread runs all T steps for its
// own slice of the batch: no synchronisation per step, and each step's GEMM runs single-threaded on
// rows that stay in that thread's cache. Small batches are not split.
template <typename F>
void over_batch_slices(int64_t batch, const F& f) {
  constexpr int64_t min_rows_per_thread = 16;
  at::parallel_for(0, batch, min_rows_per_thread, [&](int64_t begin, int64_t end) {
    // The ATen calls below are the kernel's own work, not autograd's: skip autograd in every thread
    // (grad mode is thread-local, and the pool's threads do not inherit the caller's).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    f(begin, end);
  });
}

// Large buffers (gates, h, c, tanh(c), d_pre: tens of MB each) recycled across calls. A fresh
// allocation that size comes from mmap and costs a page fault per 4 KB on first touch, measured
// here at about 0.4 ms per MB: more than the element-wise work of the recurrence. A buffer is
// handed out again only once nothing else holds its storage (autograd's saved tensors, the
// caller's outputs), and one not handed out for a while is released.
class BufferPool {
 public:
  at::Tensor acquire(at::IntArrayRef shape, const at::TensorOptions& options) {
    const int64_t numel = c10::multiply_integers(shape);
    std::lock_guard<std::mutex> lock(mutex_);
    ++clock_;
    at::Tensor found;
    for (Entry& entry : entries_) {
      if (is_free(entry.flat) && entry.flat.numel() == numel && entry.flat.scalar_type() == options.dtype()) {
        entry.last_used = clock_;
        found = entry.flat;
        break;
      }
    }
    std::erase_if(entries_, [&](const Entry& entry) {
      return clock_ - entry.last_used > max_idle_acquisitions && is_free(entry.flat);
    });
    if (!found.defined()) {
      found = at::empty({numel}, options);
      entries_.push_back({found, clock_});
    }
    return found.view(shape);
  }

 private:
  // A layer acquires 5 buffers per training iteration: this keeps those of packs of ~50 models.
  static constexpr uint64_t max_idle_acquisitions = 256;
  struct Entry {
    at::Tensor flat;
    uint64_t last_used;
  };
  static bool is_free(const at::Tensor& flat) { return flat.use_count() == 1 && flat.storage().use_count() == 1; }
  std::mutex mutex_;
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
};

BufferPool& buffers() {
  static BufferPool pool;
  return pool;
}

// The forward pass of one layer: x (K, T, B, I), weights (K, 4H, I) and (K, 4H, H) and bias (K, 4H)
// in internal gate order, initial state (K, B, H). Returns the gates (K, T, B, 4H), h and c
// (K, T + 1, B, H) with the initial state at step 0, and tanh(c) (K, T, B, H).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrence_forward(
    const at::Tensor& x_in, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias_in, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_hh) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() == 4, "x must be a (K, T, B, I) CPU tensor");
  const int64_t K = x_in.size(0), T = x_in.size(1), B = x_in.size(2), I = x_in.size(3), H = w_hh.size(2);
  TORCH_CHECK(w_ih.sizes() == at::IntArrayRef({K, 4 * H, I}) && w_hh.sizes() == at::IntArrayRef({K, 4 * H, H}),
              "weight shapes do not match x");
  const at::TensorOptions options = x_in.options();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::zeros({K, 4 * H}, options);
  TORCH_CHECK(bias.numel() == K * 4 * H, "bias must be (K, 4H)");
  at::Tensor gates = buffers().acquire({K, T, B, 4 * H}, options);
  at::Tensor h = buffers().acquire({K, T + 1, B, H}, options);
  at::Tensor c = buffers().acquire({K, T + 1, B, H}, options);
  at::Tensor tanh_c = buffers().acquire({K, T, B, H}, options);
  const bool fused_input = I >= 1 && I <= max_fused_input_size;
  const at::Tensor w_ih_t = w_ih.transpose(1, 2).contiguous();  // (K, I, 4H)
  if (!fused_input) {  // input projection of all steps in one GEMM per model
    at::Tensor gates_flat = gates.view({K, T * B, 4 * H});
    at::bmm_out(gates_flat, x.view({K, T * B, I}), w_ih_t);
  }
  h.select(1, 0).copy_(h0);
  c.select(1, 0).copy_(c0);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "hdetach_recurrence_forward", [&] {
    over_batch_slices(B, [&](int64_t b0, int64_t b1) {
      const int64_t rows = b1 - b0;
      for (int64_t k = 0; k < K; ++k) {
        const at::Tensor gates_k = gates[k].narrow(1, b0, rows), h_k = h[k].narrow(1, b0, rows);
        const at::Tensor w_hh_t = w_hh[k].t();
        const scalar_t* bias_k = bias.data_ptr<scalar_t>() + k * 4 * H;
        const scalar_t* w_ih_t_k = w_ih_t.data_ptr<scalar_t>() + k * I * 4 * H;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t row = (k * T + t) * B + b0;  // first row of the slice in (K, T, B, ...)
          const int64_t state_row = (k * (T + 1) + t) * B + b0;  // same in (K, T + 1, B, ...), step t
          scalar_t* gates_t = gates.data_ptr<scalar_t>() + row * 4 * H;
          if (fused_input) {
            STEP_KERNEL(project_input, gates_t, x.data_ptr<scalar_t>() + row * I, w_ih_t_k, rows, I, 4 * H);
          }
          gates_k[t].addmm_(h_k[t], w_hh_t);
          scalar_t* c_prev = c.data_ptr<scalar_t>() + state_row * H;
          scalar_t* h_next = h.data_ptr<scalar_t>() + state_row * H + B * H;
          scalar_t* tanh_c_t = tanh_c.data_ptr<scalar_t>() + row * H;
          STEP_KERNEL(forward_step, gates_t, bias_k, c_prev, c_prev + B * H, tanh_c_t, h_next, rows, H);
        }
      }
    });
  });
  return {gates, h, c, tanh_c};
}

// The masked backward pass of one layer. grad_out (K, T, B, H), grad_hn and grad_cn (K, B, H):
// gradients of the outputs; blocked: optional (T, K) bool, True where the gradient through h_{t-1}
// is blocked; x: the layer's input, to get the gradient of w_ih here for small input sizes.
// Returns d_pre (K, T, B, 4H), the gradient of every step's pre-activations, the gradients of h0
// and c0, of the bias (K, 4H), and of w_ih (K, 4H, I) or an undefined tensor when x was not given
// or is too wide: then, like those of w_hh and x, it is one GEMM over all steps for the caller.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrence_backward(
    const at::Tensor& gates, const at::Tensor& c, const at::Tensor& tanh_c, const at::Tensor& w_hh,
    const at::Tensor& grad_out_in, const at::Tensor& grad_hn, const at::Tensor& grad_cn,
    const std::optional<at::Tensor>& blocked_in, const std::optional<at::Tensor>& x_in) {
  for (const at::Tensor* t : {&gates, &c, &tanh_c}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "saved tensors must be contiguous CPU tensors");
  }
  const int64_t K = gates.size(0), T = gates.size(1), B = gates.size(2), H = w_hh.size(2);
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor blocked;
  if (blocked_in.has_value()) {
    blocked = blocked_in->to(at::kBool).contiguous();
    TORCH_CHECK(blocked.device().is_cpu() && blocked.dim() == 2 && blocked.size(0) == T && blocked.size(1) == K,
                "blocked must be a (T, K) CPU tensor");
  }
  const bool* blocked_ptr = blocked.defined() ? blocked.data_ptr<bool>() : nullptr;
  at::Tensor x;
  if (x_in.has_value() && x_in->size(3) <= max_fused_input_size) {
    x = x_in->contiguous();
    TORCH_CHECK(x.dim() == 4 && x.size(0) == K && x.size(1) == T && x.size(2) == B, "x must be (K, T, B, I)");
  }
  const int64_t I = x.defined() ? x.size(3) : 0;
  at::Tensor d_pre = buffers().acquire(gates.sizes(), gates.options());
  at::Tensor dc_carry = grad_cn.contiguous().clone();  // ends as the gradient of c0
  at::Tensor grad_h0 = at::zeros_like(dc_carry);
  // Input-side weight gradients accumulate in double, per batch slice, then are summed here.
  const at::TensorOptions double_options = gates.options().dtype(at::kDouble);
  at::Tensor grad_bias = at::zeros({K, 4 * H}, double_options);
  at::Tensor grad_w_ih_t = at::zeros({K, I, 4 * H}, double_options);
  std::mutex sum_mutex;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "hdetach_recurrence_backward", [&] {
    over_batch_slices(B, [&](int64_t b0, int64_t b1) {
      const int64_t rows = b1 - b0;
      at::Tensor dh_buffer = at::empty({rows, H}, gates.options());
      at::Tensor slice_grad_bias = at::zeros_like(grad_bias), slice_grad_w_ih_t = at::zeros_like(grad_w_ih_t);
      for (int64_t k = 0; k < K; ++k) {
        const at::Tensor grad_out_k = grad_out[k].narrow(1, b0, rows), d_pre_k = d_pre[k].narrow(1, b0, rows);
        const at::Tensor w_hh_k = w_hh[k];
        double* grad_bias_k = slice_grad_bias.data_ptr<double>() + k * 4 * H;
        double* grad_w_ih_t_k = slice_grad_w_ih_t.data_ptr<double>() + k * I * 4 * H;
        at::add_out(dh_buffer, grad_out_k[T - 1], grad_hn[k].narrow(0, b0, rows));
        const scalar_t* dh = dh_buffer.data_ptr<scalar_t>();
        scalar_t* dc = dc_carry.data_ptr<scalar_t>() + (k * B + b0) * H;
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t row = (k * T + t) * B + b0;  // first row of the slice in (K, T, B, ...)
          const scalar_t* gates_t = gates.data_ptr<scalar_t>() + row * 4 * H;
          const scalar_t* c_prev = c.data_ptr<scalar_t>() + ((k * (T + 1) + t) * B + b0) * H;
          const scalar_t* tanh_c_t = tanh_c.data_ptr<scalar_t>() + row * H;
          scalar_t* d_pre_t = d_pre.data_ptr<scalar_t>() + row * 4 * H;
          STEP_KERNEL(backward_step, gates_t, c_prev, tanh_c_t, dh, dc, d_pre_t, rows, H);
          const scalar_t* x_t = I > 0 ? x.data_ptr<scalar_t>() + row * I : nullptr;
          STEP_KERNEL(accumulate_input_grads, d_pre_t, x_t, rows, I, 4 * H, grad_bias_k, grad_w_ih_t_k);
          const bool is_blocked = blocked_ptr != nullptr && blocked_ptr[t * K + k];
          if (t == 0) {
            if (!is_blocked) {
              at::Tensor grad_h0_k = grad_h0[k].narrow(0, b0, rows);
              at::mm_out(grad_h0_k, d_pre_k[0], w_hh_k);
            }
          } else if (is_blocked) {
            dh = grad_out.data_ptr<scalar_t>() + (row - B) * H;  // no recurrent term: skip the GEMM
          } else {
            at::addmm_out(dh_buffer, grad_out_k[t - 1], d_pre_k[t], w_hh_k);
            dh = dh_buffer.data_ptr<scalar_t>();
          }
        }
      }
      std::lock_guard<std::mutex> lock(sum_mutex);
      grad_bias.add_(slice_grad_bias);
      grad_w_ih_t.add_(slice_grad_w_ih_t);
    });
  });
  const at::Tensor grad_w_ih = I > 0 ? grad_w_ih_t.transpose(1, 2).to(gates.scalar_type()) : at::Tensor();
  return {d_pre, grad_h0, dc_carry, grad_bias.to(gates.scalar_type()), grad_w_ih};
}

}  // namespace

TORCH_LIBRARY(hdetach_lstm, m) {
  m.def(
      "recurrence_forward(Tensor x, Tensor w_ih, Tensor? bias, Tensor h0, Tensor c0, Tensor w_hh) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "recurrence_backward(Tensor gates, Tensor c, Tensor tanh_c, Tensor w_hh, Tensor grad_out, Tensor grad_hn, "
      "Tensor grad_cn, Tensor? blocked, Tensor? x) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hdetach_lstm, CPU, m) {
  m.impl("recurrence_forward", &recurrence_forward);
  m.impl("recurrence_backward", &recurrence_backward);
}
