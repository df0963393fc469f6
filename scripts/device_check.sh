#!/usr/bin/env bash
# CUDA check on a GPU machine that has no Rust toolchain: runs a luspo binary built with `--features cuda`
# (see scripts/build_cuda.sh) from .devbin/, compares CUDA against CPU and times both. Results go to $OUT (or ./out).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
B=${LUSPO_BIN:-.devbin/luspo}
# The stripped CUDA binary travels xz-compressed (the PTX kernels make it ~70 MB).
if [ ! -x "$B" ] && [ -f "$B.xz" ]; then xz -dc "$B.xz" > /tmp/luspo && chmod +x /tmp/luspo && B=/tmp/luspo; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# cudarc loads cuBLAS/cuRAND at run time: find them wherever the machine keeps them.
libs=$(find /usr /opt /lib /lib64 /etc/alternatives \( -name 'libcublas.so.13' -o -name 'libcurand.so.10' -o -name 'libcublasLt.so.13' -o -name 'libcudart.so.13' -o -name 'libcuda.so.1' -o -name 'libnvrtc.so.13' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
M=tests/fixtures/hf/llama
echo '{"sequences": [[1, 5, 9, 13, 20, 33, 41, 7], [2, 8, 64, 3], [11, 12, 13, 14, 15, 16]]}' > "$OUT/seq.json"
for d in cpu cuda; do
  "$B" score --model $M --device $d < "$OUT/seq.json" > "$OUT/score_$d.json" || echo "score on $d failed"
  "$B" generate --model $M --prompt "hello world" --max-new-tokens 24 --temperature 0 --json --device $d > "$OUT/gen_$d.json" || echo "generate on $d failed"
done
python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
try:
    a = json.load(open(f"{o}/score_cpu.json"))["logprobs"]; b = json.load(open(f"{o}/score_cuda.json"))["logprobs"]
    print("score max |cpu - cuda| =", max(abs(x - y) for r, s in zip(a, b) for x, y in zip(r, s)))
    g1 = json.load(open(f"{o}/gen_cpu.json"))["completion_ids"]; g2 = json.load(open(f"{o}/gen_cuda.json"))["completion_ids"]
    print("greedy ids identical:", g1 == g2)
except Exception as e:
    print("comparison failed:", e)
PY
"$B" bench --device cuda --steps 10 2>&1 | tee "$OUT/bench_cuda.txt"
# SmolLM2-135M shapes with random weights (the GGUF itself is too large to carry).
cat > "$OUT/smollm2_config.json" <<'JSON'
{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
 "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
 "rope_theta": 100000.0, "tie_word_embeddings": true, "hidden_act": "silu"}
JSON
"$B" bench --device cuda --config "$OUT/smollm2_config.json" --steps 5 2>&1 | tee "$OUT/bench_cuda_smollm2.txt"
timeout 150 "$B" train --quiet --out "$OUT/run_cuda" --set model.device=\"cuda\" --set train.steps=3 --set sft.steps=50 2>&1 | tail -15
ls "$OUT/run_cuda" 2>/dev/null && tail -n 3 "$OUT/run_cuda/metrics.jsonl"
