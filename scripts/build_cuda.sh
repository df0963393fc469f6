#!/usr/bin/env bash
# Builds luspo with `--features cuda` on a machine without a system CUDA toolkit, using NVIDIA's PyPI wheels
# (nvcc, cicc, headers, CCCL) unpacked into $CUDA_TK (default /work/cuda-tk). Target: sm_90 (H100/H200).
set -euo pipefail
TK=${CUDA_TK:-/work/cuda-tk}
if [ ! -x "$TK/nvidia/cu13/bin/nvcc" ]; then
  d=$(mktemp -d)
  pip download --no-deps -q -d "$d" "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*"
  mkdir -p "$TK"; for f in "$d"/*.whl; do unzip -qo "$f" -d "$TK"; done
fi
export CUDA_ROOT=$TK/nvidia/cu13 CUDA_PATH=$TK/nvidia/cu13 PATH=$TK/nvidia/cu13/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cargo build --release --features cuda "$@"
