#!/usr/bin/env bash
# The GPU path, run for real: the default CLIP recipe on CUDA (nccl, bf16) on one GPU and on all of
# them, its losses checked against the same run on the CPU, then ViT-B/32 at 224 px: samples/s per
# GPU and MFU (bench/gpu_smoke.py). Needs a machine with NVIDIA GPUs and a CUDA build of PyTorch in
# the venv (PyPI's Linux wheel is one: `make setup` there installs it). Usage: make gpu-smoke
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'this PyTorch has no CUDA'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
"$PY" -m data.reading.demo emoji
exec "$PY" bench/gpu_smoke.py "$@"
