"""SmolLM2-135M generation throughput of luspo (f32 and f16 decoding) and transformers' `generate`, alternated.

The same GGUF (scripts/fetch_smollm2.sh; transformers dequantises it to f32 with the `gguf` package), batch sizes,
prompt lengths (random token ids, 8..16 tokens, left-padded) and 112 new tokens per row, no early stop. luspo's
bench samples at temperature 1, transformers decodes greedily (its sampling adds logits processors; the step is
bound by the weights either way). Each contender runs in a fresh process per round; the table gives medians.

Usage: python scripts/compare_generate.py [--rounds 3] [--threads 2] [--batches 8,32]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LINE = re.compile(r"generate\s+batch\s+(\d+): (\d+) new tokens in ([\d.]+) s")


def luspo(batch, f16, threads):
    cmd = [str(ROOT / "target" / "release" / "luspo"), "bench", "--model", str(GGUF), "--no-train",
           "--gen-batch", str(batch), "--new-tokens", "112"] + (["--decode-f16"] if f16 else [])
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, env=env).stdout
    for line in out.splitlines():
        m = LINE.search(line)
        if m:
            return int(m.group(2)) / float(m.group(3))
    raise RuntimeError(f"no generate line in: {out}")


def hf_worker(batch, threads):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, torch_dtype=torch.float32)
    model.eval()
    g = torch.Generator().manual_seed(0)
    lens = [8 + (i * 5) % 9 for i in range(batch)]
    width = max(lens)
    ids = torch.zeros((batch, width), dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for r, n in enumerate(lens):
        ids[r, width - n:] = torch.randint(100, model.config.vocab_size, (n,), generator=g)
        mask[r, width - n:] = 1
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=112, min_new_tokens=112,
                             do_sample=False, pad_token_id=0)
        dt = time.perf_counter() - t0
    new = (out.shape[1] - width) * batch
    print(f"HF {new / dt}")


def hf(batch, threads):
    cmd = [sys.executable, __file__, "--hf-worker", str(batch), "--threads", str(threads)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return float(out.split("HF ")[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--hf-worker", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hf_worker:
        return hf_worker(a.hf_worker, a.threads)
    if not GGUF.exists():
        sys.exit(f"error: {GGUF} is missing (scripts/fetch_smollm2.sh)")
    res = {}
    for r in range(a.rounds):
        for b in [int(x) for x in a.batches.split(",")]:
            for name, f in [("luspo f32", lambda b: luspo(b, False, a.threads)),
                            ("luspo f16 decoding", lambda b: luspo(b, True, a.threads)),
                            ("transformers generate", lambda b: hf(b, a.threads))]:
                res.setdefault((name, b), []).append(f(b))
        print(f"round {r + 1}/{a.rounds} done, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print("| contender | batch | median tok/s | runs |\n|---|---|---|---|")
    for (name, b), xs in res.items():
        print(f"| {name} | {b} | {statistics.median(xs):.0f} | {' / '.join(f'{x:.0f}' for x in xs)} |")


if __name__ == "__main__":
    main()
