#!/usr/bin/env python3
"""Makes the PEFT LoRA fixtures under tests/fixtures/hf/lora*/ with Python `peft` (not needed by the tests themselves).

    python3 -m venv /tmp/lvenv && /tmp/lvenv/bin/pip install torch transformers peft safetensors
    /tmp/lvenv/bin/python scripts/make_lora_fixtures.py [make] [check DIR]

make       tests/fixtures/hf/lora_all/ and tests/fixtures/hf/lora_qv/ : PEFT adapters (save_pretrained) over the tiny
           random Llama of tests/fixtures/hf/llama/ (r = 4, all seven projections; r = 2, q_proj + v_proj), with
           random A and B (B is zero at PEFT's init, which would test nothing), and reference.json: input ids and
           float64 per-token log-probs and last-position logits of the base model with the adapter applied.
check DIR  loads the adapter directory DIR (e.g. one luspo wrote) over tests/fixtures/hf/llama/ with
           PeftModel.from_pretrained and prints the float64 per-token log-probs of reference.json's first sequence,
           and the merged model's (merge_and_unload), for comparison with luspo's.
"""
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF = os.path.join(ROOT, "tests", "fixtures", "hf")
BASE = os.path.join(HF, "llama")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32).eval()


def sequences():
    ref = json.load(open(os.path.join(BASE, "reference.json")))
    return [s["ids"] for s in ref["sequences"]]


def logprobs(model, ids):
    m64 = model.to(torch.float64)
    with torch.no_grad():
        logits = m64(torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits, -1)
    return [lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)], logits[-1].tolist()


def make(name, r, alpha, targets, seed):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(base_model(), cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    out = os.path.join(HF, name)
    model.save_pretrained(out)
    # A relative base path, so the committed fixture does not name this machine's checkout.
    cp = os.path.join(out, "adapter_config.json")
    c = json.load(open(cp))
    c["base_model_name_or_path"] = os.path.relpath(BASE, ROOT)
    with open(cp, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    seqs = []
    for ids in sequences():
        lp, last = logprobs(model, ids)
        seqs.append({"ids": ids, "logprobs": lp, "last_logits": last})
    import peft

    ref = {"peft": peft.__version__, "r": r, "lora_alpha": alpha, "targets": targets, "sequences": seqs}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)
    # The README of save_pretrained is boilerplate; keep the fixture to what the test reads.
    readme = os.path.join(out, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    print(f"wrote {out}")


def check(d):
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model(), d).eval()
    ids = sequences()[0]
    lp, _ = logprobs(model, ids)
    print(json.dumps({"adapter": lp}))
    merged = model.merge_and_unload()
    lp, _ = logprobs(merged, ids)
    print(json.dumps({"merged": lp}))


if __name__ == "__main__":
    args = sys.argv[1:] or ["make"]
    if args[0] == "make":
        make("lora_all", 4, 8, TARGETS, 1)
        make("lora_qv", 2, 3, ["q_proj", "v_proj"], 2)
    elif args[0] == "check":
        check(args[1])
    else:
        sys.exit(__doc__)
