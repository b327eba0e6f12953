#!/usr/bin/env bash
# The whole GPU test suite on the machine at hand, its log named after the card:
#   COMMIT=<hash> bash benchmarks/gpu_suite.sh [OUT_DIR]
# Writes OUT_DIR/gpu_tests_<card>.txt (default OUT_DIR: $OUT, else benchmarks/results):
# the commit it ran at, the card, torch / Triton / CUDA, then pytest's output.
# Exit status: pytest's. The checkout is put on PYTHONPATH as `sparse_vdit`
# (a link), so no install is needed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$out" /tmp/sparse_vdit_path
ln -sfn "$(pwd)" /tmp/sparse_vdit_path/sparse_vdit
export PYTHONPATH="/tmp/sparse_vdit_path${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
commit="${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
card="$(python -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "_"))' 2>/dev/null || echo no_gpu)"
log="$out/gpu_tests_${card}.txt"
{
    echo "# python -m pytest -q -m gpu tests, at commit $commit"
    python -c 'import torch, triton; print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")'
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC')"
} >"$log"
python -m pytest -q -m gpu -rs tests 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
