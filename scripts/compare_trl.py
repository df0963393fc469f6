"""One RL step of luspo (`luspo bench --rl`) against TRL's GRPOTrainer (loss_type="luspo"), alternated, with medians.

Both sides get the same model (a random tiny Llama, d = 128, 2 layers, vocab 1024, written here as an HF directory
with a word-level tokenizer (<pad>, <s>, </s>, "t3".."t1023"), so text and token ids map one to one), the same 8 prompts of 16 tokens,
8 responses per prompt of at most 64 new tokens (temperature 1, eos id 2), and one optimizer step of 64 sequences in
two micro-batches of 32 per RL step (LUSPO, no KL, one PPO epoch). The reward is the fraction of a response's tokens
with an even id on both sides. Each contender runs in a fresh process; the first step of each run is a warm-up and
is not timed; a run's figure is the median of its timed steps, and the table gives the median (and range) over
rounds. Needs `cargo build --release` and a Python with torch, transformers and trl (e.g. /work/.venv).

Usage: python scripts/compare_trl.py [--rounds 3] [--steps 3] [--threads 2]
"""
import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB, EOS, PAD, BOS = 1024, 2, 0, 1
LUSPO_LINE = re.compile(r"rl step median of \d+: ([\d.]+) s/step .*?, (\d+) completion tokens/step, peak RSS (\d+) MB")


def write_tiny(dir_: Path, seed: int):
    """The random tiny Llama and its one-to-one word-level tokenizer, as an HF directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=False, max_position_embeddings=512,
                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    LlamaForCausalLM(cfg).save_pretrained(dir_, safe_serialization=True)
    # Special tokens must not be prefixes of other tokens (added tokens are matched before pre-tokenization).
    names = ["<pad>", "<s>", "</s>"] + [f"t{i}" for i in range(3, VOCAB)]
    tok = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token="<s>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins word-level tokens with spaces
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<s>").save_pretrained(dir_)


def even_fraction(ids):
    """The bench's reward (the same as luspo's `bench_rl::even_fraction`)."""
    return sum(1 for t in ids if t % 2 == 0) / len(ids) if ids else 0.0


def trl_worker(a):
    """Runs `steps + 1` TRL RL steps and prints one JSON line: step times (warm-up dropped), tokens, peak RSS."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    prompts = json.loads(Path(a.prompts).read_text())
    texts = [" ".join(f"t{t}" for t in p) for p in prompts]
    tok = AutoTokenizer.from_pretrained(a.model)
    assert tok(texts[0], add_special_tokens=False)["input_ids"] == prompts[0], "tokenizer is not one to one"
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    ds = Dataset.from_dict({"prompt": texts * (a.steps + 1)})

    def reward(completions, completion_ids, **_):
        return [even_fraction(c) for c in completion_ids]

    want = dict(output_dir=a.out, per_device_train_batch_size=a.micro_batch,
                gradient_accumulation_steps=len(prompts) * a.group // a.micro_batch, num_generations=a.group,
                max_completion_length=a.new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=0.0,
                loss_type="luspo", importance_sampling_level="sequence", epsilon=2e-3, epsilon_high=2.5e-3,
                num_iterations=1, learning_rate=1e-6, max_grad_norm=1.0, max_steps=a.steps + 1, logging_steps=1,
                report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False, seed=0,
                shuffle_dataset=False, dataloader_num_workers=0, disable_tqdm=True)
    fields = set(GRPOConfig.__dataclass_fields__)
    cfg = GRPOConfig(**{k: v for k, v in want.items() if k in fields})
    marks, lengths = [], []

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, *args, **kw):
            marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Clock()])
    trainer.train()
    times = [b - a_ for a_, b in zip(marks, marks[1:])][1:]
    n = len(prompts) * a.group
    print(json.dumps({"times": times, "tokens": [l * n for l in lengths[1:]],
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                      "versions": {"torch": torch.__version__, "trl": __import__("trl").__version__,
                                   "transformers": __import__("transformers").__version__}}))


def run_luspo(a, model, prompts):
    exe = str(ROOT / "target" / "release" / "luspo")
    cmd = [exe, "bench", "--rl", "--model", str(model), "--prompts-file", str(prompts), "--group", str(a.group),
           "--rl-new-tokens", str(a.new_tokens), "--micro-batch", str(a.micro_batch), "--eos", str(EOS),
           "--steps", str(a.steps)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"luspo bench --rl failed ({out.returncode}):\n{out.stderr}")
    for line in out.stdout.splitlines():
        m = LUSPO_LINE.search(line)
        if m:
            return float(m.group(1)), float(m.group(2)), int(m.group(3)), line
    sys.exit(f"no median line in luspo's output:\n{out.stdout}")


def run_trl(a, model, prompts, out_dir):
    cmd = [sys.executable, __file__, "--trl-worker", "--model", str(model), "--prompts", str(prompts),
           "--out", str(out_dir), "--steps", str(a.steps), "--threads", str(a.threads), "--group", str(a.group),
           "--new-tokens", str(a.new_tokens), "--micro-batch", str(a.micro_batch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"TRL worker failed ({out.returncode}):\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return statistics.median(r["times"]), statistics.median(r["tokens"]), r["rss_mb"], r["versions"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed RL steps per run (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts-n", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.trl_worker:
        return trl_worker(a)
    if (a.prompts_n * a.group) % a.micro_batch:
        sys.exit("--prompts-n × --group must be a multiple of --micro-batch")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, prompts = tmp / "tiny", tmp / "prompts.json"
        write_tiny(model, seed=0)
        rng = random.Random(0)
        prompts.write_text(json.dumps([[rng.randrange(3, VOCAB) for _ in range(a.prompt_len)]
                                       for _ in range(a.prompts_n)]))
        res = {"luspo": [], "TRL": []}
        versions = None
        for r in range(a.rounds):
            res["luspo"].append(run_luspo(a, model, prompts)[:3])
            *row, versions = run_trl(a, model, prompts, tmp / "trl_out")
            res["TRL"].append(tuple(row))
            print(f"round {r + 1}/{a.rounds}: luspo {res['luspo'][-1][0]:.3f} s, TRL {res['TRL'][-1][0]:.3f} s",
                  file=sys.stderr)
    print(f"load: {os.getloadavg()[0]:.2f} (1-min) on {os.cpu_count()} cores; {a.threads} threads each; "
          f"TRL {versions['trl']}, transformers {versions['transformers']}, torch {versions['torch']}")
    print("| contender | median s/step | range s/step | completion tokens/step | peak RSS MB |\n|---|---|---|---|---|")
    for name, rows in res.items():
        s = [x[0] for x in rows]
        print(f"| {name} | {statistics.median(s):.3f} | {min(s):.3f}–{max(s):.3f} | "
              f"{statistics.median([x[1] for x in rows]):.0f} | {max(x[2] for x in rows)} |")
    ratios = [t[0] / l[0] for l, t in zip(res["luspo"], res["TRL"])]
    print(f"TRL / luspo per round: median {statistics.median(ratios):.2f}× "
          f"(range {min(ratios):.2f}–{max(ratios):.2f}×)")


if __name__ == "__main__":
    main()
