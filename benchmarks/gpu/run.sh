#!/usr/bin/env bash
# One prepared run on the H100 test machine (../shared/GPU.md): ONNX Runtime CUDA parity and latency (FP32,
# FP16, IO binding, CUDA graphs), PyTorch eager for reference, and GPU map search (faiss-gpu flat FP16 vs
# torch matmul + top-k). Builds nothing that needs the network; writes JSON under $OUT; prints a table last.
# Without a GPU it runs the CPU path on a small model and says what it skipped and why.
#   bash benchmarks/gpu/run.sh            (OUT defaults to runs/gpu)
#   QUICK=1 bash benchmarks/gpu/run.sh    (small model and map: the CPU smoke run)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -f .gpu-wheels/install-wheels ] && [ -d .gpu-wheels/parts ] && [ ! -d /tmp/gpu-site ]; then
  bash .gpu-wheels/install-wheels --install || echo "gpu wheels not complete; running without them" >&2
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d /tmp/gpu-site ] && export PYTHONPATH="/tmp/gpu-site:$PYTHONPATH"
args=(--out "${OUT:-runs/gpu}")
[ -n "${QUICK:-}" ] && args+=(--quick)
exec "$PY" -m benchmarks.gpu.h100 "${args[@]}" "$@"
