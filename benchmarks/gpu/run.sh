#!/usr/bin/env bash
# The one prepared GPU run (python -m benchmarks.gpu.h100; ../shared/GPU.md): capabilities; per model
# (EfficientNet-Lite0 240x320 and VGG16 480x640) PyTorch FP32/FP16, the runtime's ONNX Runtime backend on
# CUDA with IO binding, a batch-1 copy with CUDA graphs, ONNX Runtime's TensorRT provider, whether a QDQ model
# needs trt_int8_enable, TensorRT engines - each with parity against the CPU backend (cosine, top-1
# agreement) and latency p50/p99; the Localizer end to end on the GPU (faiss-gpu map) against the CPU, per
# stage; exact search over 1M x 4096 and an IVF-PQ map on the GPU; a few training steps on CUDA, a checkpoint
# and a resume (images/s). Writes $OUT/gpu.json and run.log (OUT defaults to runs/gpu; models, maps, runs go
# to WORK, default /tmp/netvlad-gpu-work), prints a table last, exits 1 when
# any step failed (listed under "errors"). Without a GPU it runs the CPU side and names what is missing.
#
#   bash benchmarks/gpu/run.sh                                 the whole run
#   bash benchmarks/gpu/run.sh --sections inference,search     a subset (inference, localizer, search, training)
#   bash benchmarks/gpu/run.sh --models effnet-lite0-240x320   one model
#   QUICK=1 bash benchmarks/gpu/run.sh                         tiny model and maps (the CPU smoke run)
#
# On the H100 test machine, onnxruntime-gpu, faiss-gpu and a few small packages come as wheel parts
# (GPU.md): here, run ../shared/gpu/fetch-wheels, then benchmarks/gpu/fetch-deps; send .gpu-wheels/parts in
# calls that carry at most 64 MiB each, each running `bash .gpu-wheels/install-wheels` (it collects the parts
# under /tmp/gpu-parts while the machine stays warm); this script installs them into /tmp/gpu-site once all
# have arrived. The "packages" capability in the table says what is still missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -f .gpu-wheels/install-wheels ] && [ ! -d /tmp/gpu-site ]; then
  bash .gpu-wheels/install-wheels --install || echo "gpu wheels not complete; running without them" >&2
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d /tmp/gpu-site ] && export PYTHONPATH="/tmp/gpu-site:$PYTHONPATH"
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}
# $OUT gets gpu.json and run.log only (what a device run brings back); the rest goes to WORK
args=(--out "$OUT" --work "${WORK:-/tmp/netvlad-gpu-work}")
[ -n "${QUICK:-}" ] && args+=(--quick)
mkdir -p "$OUT"
"$PY" -m benchmarks.gpu.h100 "${args[@]}" "$@" 2>&1 | tee "$OUT/run.log"
