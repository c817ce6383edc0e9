#!/usr/bin/env bash
# The one-shot GPU check (issue 15): what a GPU machine runs, in under 8 minutes, leaving its
# results (JSON and logs, 6 files) in the folder given:
#
#   bash benchmarks/gpu/check.sh OUT_DIR
#
# It runs the `cuda` tests and the Triton kernels' tests (compiled, on the GPU), bench_lstm on the
# GPU (cuDNN nn.LSTM vanilla, ours at p=0.5 with and without the Triton step kernels, packs of 1, 8
# and 32 eager and replayed as CUDA graphs, at the copying T=100, T=300 and pixel MNIST shapes),
# one pack on the GPU against the CPU, and a 40-trial copying grid through the real worker on
# cuda:0 (SQLite), packed and one at a time. Every step runs even if one before it failed; the exit status says whether all passed.
#
# The machine's python3 has torch and triton but none of the project's other dependencies, and no
# network: fill benchmarks/gpu/wheels here first (the command is in benchmarks/gpu/requirements.txt)
# and carry it. With the device tool: run(command="bash benchmarks/gpu/check.sh $OUT",
# carry=["benchmarks/gpu/wheels"], timeout_s=540); then commit the JSON under benchmarks/results/
# (lstm_gpu.json, cuda_vs_cpu.json, study_gpu.json, gpu_environment.json) and the figures in the README.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bash benchmarks/gpu/check.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0
step() { echo "== $(date +%T) $*"; }

step install
if ! ls benchmarks/gpu/wheels/*.whl >/dev/null 2>&1; then
  echo "benchmarks/gpu/wheels is empty: fill it (benchmarks/gpu/requirements.txt) and carry it"; exit 2
fi
$py -m pip install -q --no-index --no-deps benchmarks/gpu/wheels/*.whl || status=1
$py -m pip install -q --no-index --no-deps --no-build-isolation -e . || status=1

step environment
$py - >"$out/environment.json" <<'PY' || status=1
import json, platform, subprocess
import torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
print(json.dumps({
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "nvidia_smi": smi, "torch": torch.__version__, "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(), "triton": triton_version,
    "python": platform.python_version(), "cpus": __import__("os").cpu_count(),
}, indent=1))
PY
cat "$out/environment.json"

step cuda tests
timeout 180 $py -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
  tests/studies/test_cuda.py tests/studies/test_lstm_triton.py 2>&1 | tee "$out/cuda_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step bench_lstm
timeout 240 $py benchmarks/bench_lstm.py --device cuda --packs 1 8 32 --repeats 5 \
  --out "$out/lstm_gpu.json" 2>&1 | tee "$out/bench_lstm.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step cuda against cpu
timeout 120 $py benchmarks/gpu/cuda_vs_cpu.py --out "$out/cuda_vs_cpu.json" || status=1

step study end to end
timeout 200 $py benchmarks/gpu/study_e2e.py --device cuda:0 --out "$out/study_gpu.json" || status=1

step "done, status $status"
exit $status
