// Element-wise work of one LSTM step, forward and backward, for `rows` consecutive rows of the
// batch (pointers to the first). hdetach_cpu.cpp includes this file twice, inside two namespaces,
// to compile it once for AVX2 + FMA and once for the x86-64 baseline; hence no include guard and no
// includes here.
//
// Gate columns are (o, i, f, 2g) as in _kernel.py: a row of the (B, 4H) step block holds the four
// gates side by side, so each of them is a contiguous run of H values that the compiler vectorises.

// exp(x) with a polynomial the compiler can vectorise (std::exp stays a scalar call without
// -ffast-math). Range reduction x = n ln2 + r, |r| <= ln2 / 2, then exp(r) by its Taylor series,
// whose degree (ExpConstants) keeps the error within a few ulp; 2^n is built in the exponent bits.
template <typename scalar_t>
__attribute__((always_inline)) inline scalar_t exp_poly(scalar_t x) {
  using C = ExpConstants<scalar_t>;
  using bits_t = typename C::bits_t;
  // Comparisons written so that NaN falls through both and propagates, as through std::exp.
  x = x < C::lowest ? C::lowest : x;
  x = x > C::highest ? C::highest : x;
  // Adding 1.5 * 2^mantissa_bits rounds x / ln2 to an integer n held in t's low mantissa bits.
  const scalar_t t = x * C::log2e + C::round_shift;
  const scalar_t n = t - C::round_shift;
  const scalar_t r = (x - n * C::ln2_hi) - n * C::ln2_lo;
  scalar_t p = inverse_factorial<scalar_t>(C::degree);
#pragma GCC unroll 16
  for (int k = C::degree - 1; k >= 0; --k) {
    p = p * r + inverse_factorial<scalar_t>(k);
  }
  bits_t n_bits;
  std::memcpy(&n_bits, &t, sizeof t);
  // Shifting by mantissa_bits drops the 1.5 * 2^mantissa_bits offset and leaves n in the exponent.
  const bits_t scale_bits = (n_bits << C::mantissa_bits) + (C::exponent_bias << C::mantissa_bits);
  scalar_t scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

template <typename scalar_t>
__attribute__((always_inline)) inline scalar_t sigmoid(scalar_t x) {
  return scalar_t(1) / (scalar_t(1) + exp_poly(-x));
}

// Forward: gates (in: pre-activations less the bias (4H), out: o, i, f, g), c_{t-1} -> c_t, tanh(c_t), h_t.
template <typename scalar_t>
void forward_step(scalar_t* gates, const scalar_t* bias, const scalar_t* c_prev, scalar_t* c_next, scalar_t* tanh_c,
                  scalar_t* h_next, int64_t rows, int64_t H) {
  const scalar_t* bias_o = bias;
  const scalar_t* bias_i = bias + H;
  const scalar_t* bias_f = bias + 2 * H;
  const scalar_t* bias_g = bias + 3 * H;
  for (int64_t b = 0; b < rows; ++b) {
    scalar_t* o = gates + b * 4 * H;
    scalar_t* i = o + H;
    scalar_t* f = i + H;
    scalar_t* g = f + H;
    const scalar_t* cp = c_prev + b * H;
    scalar_t* cn = c_next + b * H;
    scalar_t* tc = tanh_c + b * H;
    scalar_t* hn = h_next + b * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t o_j = sigmoid(o[j] + bias_o[j]), i_j = sigmoid(i[j] + bias_i[j]);
      const scalar_t f_j = sigmoid(f[j] + bias_f[j]);
      const scalar_t g_j = scalar_t(2) * sigmoid(g[j] + bias_g[j]) - scalar_t(1);  // tanh of the unscaled pre-activation
      const scalar_t c_j = f_j * cp[j] + i_j * g_j;
      const scalar_t tanh_c_j = scalar_t(2) * sigmoid(scalar_t(2) * c_j) - scalar_t(1);
      o[j] = o_j;
      i[j] = i_j;
      f[j] = f_j;
      g[j] = g_j;
      cn[j] = c_j;
      tc[j] = tanh_c_j;
      hn[j] = o_j * tanh_c_j;
    }
  }
}

// Backward: from dh_t and the carried dc (in: from step t+1, out: dc_t f_t, for step t-1) to the
// gradient of step t's pre-activations d_pre (internal order, g's derivative taken w.r.t. 2x).
template <typename scalar_t>
void backward_step(const scalar_t* gates, const scalar_t* c_prev, const scalar_t* tanh_c, const scalar_t* dh,
                   scalar_t* dc_carry, scalar_t* d_pre, int64_t rows, int64_t H) {
  for (int64_t b = 0; b < rows; ++b) {
    const scalar_t* o = gates + b * 4 * H;
    const scalar_t* i = o + H;
    const scalar_t* f = i + H;
    const scalar_t* g = f + H;
    const scalar_t* cp = c_prev + b * H;
    const scalar_t* tc = tanh_c + b * H;
    const scalar_t* dh_b = dh + b * H;
    scalar_t* dc_b = dc_carry + b * H;
    scalar_t* d_o = d_pre + b * 4 * H;
    scalar_t* d_i = d_o + H;
    scalar_t* d_f = d_i + H;
    scalar_t* d_g = d_f + H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t o_j = o[j], i_j = i[j], f_j = f[j], g_j = g[j], tc_j = tc[j], dh_j = dh_b[j];
      const scalar_t dc_j = dc_b[j] + dh_j * o_j * (scalar_t(1) - tc_j * tc_j);
      d_o[j] = dh_j * tc_j * o_j * (scalar_t(1) - o_j);
      d_i[j] = dc_j * g_j * i_j * (scalar_t(1) - i_j);
      d_f[j] = dc_j * cp[j] * f_j * (scalar_t(1) - f_j);
      d_g[j] = dc_j * i_j * (scalar_t(0.5) - scalar_t(0.5) * g_j * g_j);
      dc_b[j] = dc_j * f_j;
    }
  }
}

// gates = x w_ih^T for a small input size I: x (rows, I), w_ih_t (I, width), gates (rows, width).
template <typename scalar_t>
void project_input(scalar_t* gates, const scalar_t* x, const scalar_t* w_ih_t, int64_t rows, int64_t I,
                   int64_t width) {
  for (int64_t b = 0; b < rows; ++b) {
    scalar_t* g = gates + b * width;
    const scalar_t x0 = x[b * I];
#pragma GCC ivdep
    for (int64_t j = 0; j < width; ++j) g[j] = x0 * w_ih_t[j];
    for (int64_t i = 1; i < I; ++i) {
      const scalar_t x_i = x[b * I + i];
      const scalar_t* w = w_ih_t + i * width;
#pragma GCC ivdep
      for (int64_t j = 0; j < width; ++j) g[j] += x_i * w[j];
    }
  }
}

// Input-side weight gradients of one step, added to double accumulators: grad_bias (width) gets
// the column sums of d_pre (rows, width), grad_w_ih_t (I, width) gets x^T d_pre for x (rows, I).
template <typename scalar_t>
void accumulate_input_grads(const scalar_t* d_pre, const scalar_t* x, int64_t rows, int64_t I, int64_t width,
                            double* grad_bias, double* grad_w_ih_t) {
  for (int64_t b = 0; b < rows; ++b) {
    const scalar_t* d = d_pre + b * width;
#pragma GCC ivdep
    for (int64_t j = 0; j < width; ++j) grad_bias[j] += d[j];
    for (int64_t i = 0; i < I; ++i) {
      const double x_i = x[b * I + i];
      double* w = grad_w_ih_t + i * width;
#pragma GCC ivdep
      for (int64_t j = 0; j < width; ++j) w[j] += x_i * d[j];
    }
  }
}
