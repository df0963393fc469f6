#!/usr/bin/env python3
"""RL step time and peak memory of LoRA against full fine-tuning on SmolLM2, in alternation (no dependencies).

    scripts/fetch_smollm2.sh && cargo build --release
    RAYON_NUM_THREADS=2 python3 scripts/bench_lora.py --rounds 3

Each round runs `luspo train` once with configs/smollm2_wordproblem.toml (full fine-tuning) and once with
configs/smollm2_lora.toml (r = 16, all seven projections), under `/usr/bin/time -v`, into temporary directories
(no final export). It prints, per run, the median `step_seconds` and `tokens_per_s` of metrics.jsonl and the peak
RSS, then the medians over rounds and the ratios. On a shared machine only alternating runs compare.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"full": "configs/smollm2_wordproblem.toml", "lora": "configs/smollm2_lora.toml"}


def run(kind, luspo, extra):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        cmd = ["/usr/bin/time", "-v", luspo, "train", "--config", CONFIGS[kind], "--out", out,
               "--set", "checkpoint.save_final=false"] + sum([["--set", s] for s in extra], [])
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{kind}: luspo failed:\n{p.stderr[-3000:]}")
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
        steps = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        ck = sorted(os.listdir(os.path.join(out, "checkpoints")))[-1]
        ck_bytes = sum(
            os.path.getsize(os.path.join(out, "checkpoints", ck, f))
            for f in os.listdir(os.path.join(out, "checkpoints", ck))
        )
    return {
        "step_s": statistics.median(s["step_seconds"] for s in steps),
        "tok_s": statistics.median(s["tokens_per_s"] for s in steps),
        "rss_mb": rss_kb / 1024,
        "ckpt_mb": ck_bytes / 1e6,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--luspo", default=os.path.join(ROOT, "target", "release", "luspo"))
    ap.add_argument("--set", action="append", default=[], help="extra --set for both runs")
    a = ap.parse_args()
    res = {"full": [], "lora": []}
    for i in range(a.rounds):
        for kind in ("full", "lora") if i % 2 == 0 else ("lora", "full"):
            r = run(kind, a.luspo, a.set)
            res[kind].append(r)
            load = os.getloadavg()[0]
            print(f"round {i + 1} {kind}: {r['step_s']:.2f} s/step, {r['tok_s']:.1f} tok/s, "
                  f"peak RSS {r['rss_mb']:.0f} MB, checkpoint {r['ckpt_mb']:.1f} MB (load {load:.1f})", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in res.items()}
    for k, m in med.items():
        rng = lambda key: f"{min(r[key] for r in res[k]):.2f}–{max(r[key] for r in res[k]):.2f}"
        print(f"{k}: median {m['step_s']:.2f} s/step (range {rng('step_s')}), {m['tok_s']:.1f} tok/s, "
              f"peak RSS {m['rss_mb']:.0f} MB, checkpoint {m['ckpt_mb']:.1f} MB")
    print(f"LoRA / full: step time {med['lora']['step_s'] / med['full']['step_s']:.2f}×, "
          f"peak RSS {med['lora']['rss_mb'] / med['full']['rss_mb']:.2f}×")


if __name__ == "__main__":
    main()
