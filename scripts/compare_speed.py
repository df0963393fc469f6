"""Tiny-config train-step throughput of luspo (fused and composed) and PyTorch, interleaved, with medians.

The machine may be shared, so single runs are noisy: this alternates the contenders for several rounds and
reports the median (and range) of each. Needs a release build (`cargo build --release`) and a Python with torch
(and transformers, for the HF rows of scripts/torch_bench.py).

Usage: python scripts/compare_speed.py [--rounds 5] [--steps 50]
"""
import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(.*?)\s*B=\d+ T=\d+: .*= ([\d.]+) ms/step =\s+(\d+) tok/s")


def run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = LINE.match(line.strip())
        if m:
            rows.append((m.group(1).strip(), float(m.group(2)), int(m.group(3))))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    a = ap.parse_args()
    luspo = str(ROOT / "target" / "release" / "luspo")
    steps = str(a.steps)
    contenders = [
        ("luspo fused", [luspo, "bench", "--no-gen", "--steps", steps]),
        ("luspo composed", [luspo, "bench", "--no-gen", "--composed", "--steps", steps]),
        ("torch", [sys.executable, "scripts/torch_bench.py", "--steps", steps]),
    ]
    results = {}
    for r in range(a.rounds):
        for name, cmd in contenders:
            for label, ms, tok in run(cmd):
                key = name if label == "train" else f"{name}: {label}"
                results.setdefault(key, []).append((tok, ms))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"| contender | median tok/s | range tok/s | median ms/step |\n|---|---|---|---|")
    for key, xs in results.items():
        toks = [t for t, _ in xs]
        print(f"| {key} | {statistics.median(toks):,.0f} | {min(toks):,}–{max(toks):,} | "
              f"{statistics.median([m for _, m in xs]):.1f} |")


if __name__ == "__main__":
    main()
