#!/usr/bin/env python3
"""Makes the HF parity fixtures under tests/fixtures/ with HF transformers (not needed by the tests themselves).

    python3 -m venv /work/.venv && /work/.venv/bin/pip install torch transformers tokenizers gguf
    /work/.venv/bin/python scripts/make_hf_fixtures.py [tiny] [chat] [charlevel] [smollm2] [check-saved DIR]

tiny       tests/fixtures/hf/{llama,qwen2,llama3rope}/ : tiny random checkpoints (save_pretrained) + reference.json
           (input ids, float64 per-token logprobs of the f32 weights, 20-token greedy continuations)
chat       tests/fixtures/hf/chat_templates.json : HF apply_chat_template renderings (ChatML, SmolLM2, Llama-3 style, ...)
charlevel  tests/fixtures/hf/charlevel/reference.json : ids HF PreTrainedTokenizerFast gives with the tokenizer.json
           that luspo's Tok::char_level wrote (run the ignored test `write_charlevel_fixture` first)
smollm2    tests/fixtures/smollm2_reference.json : transformers loading models/SmolLM2-135M-Instruct.Q4_1.gguf
check-saved DIR : loads an HF dir written by luspo's save_hf with transformers, prints logprobs of a sequence
"""
import json
import math
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
HF = os.path.join(FIX, "hf")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# A Qwen2.5-like template: default system prompt, namespace, loop.last, python string methods, tojson.
QWENISH = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'].strip() + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(n_user=0) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.n_user = ns.n_user + 1 %}
        {{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' + message.content|tojson + '<|im_end|>' }}
        {%- if not loop.last %}{{- '\\n' }}{% endif %}
    {%- elif message.role != 'system' %}
        {{- raise_exception('unknown role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if ns.n_user > 1 %}{{ '(turn ' ~ ns.n_user ~ ') ' }}{% endif %}
{%- endif %}
"""

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "What is 12 + 30? The answer is 42. What is 7 times 6? It is 42 too.",
    "Hello world! The answer is 42, isn't it?",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "A quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "Reinforcement learning with verifiable rewards trains language models on math problems.",
]
PROMPTS = [
    "Hello world!",
    "The answer is 42, isn't it?",
    "What is 12 + 30?",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
]


def train_tokenizer(bos):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (["<s>"] if bos else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def reference(model, tok, prompts, n_new=20):
    m64 = model.to(torch.float64)
    out = []
    for text in prompts:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logits = m64(torch.tensor([ids])).logits[0]
            lp = torch.log_softmax(logits, -1)
            token_lp = [lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]
            seq = list(ids)
            margins = []
            for _ in range(n_new):
                last = torch.log_softmax(m64(torch.tensor([seq])).logits[0, -1], -1)
                top = torch.topk(last, 2)
                margins.append((top.values[0] - top.values[1]).item())
                seq.append(int(top.indices[0]))
        out.append(
            {
                "text": text,
                "ids": ids,
                "logprobs": token_lp,
                "greedy": seq[len(ids) :],
                "greedy_min_margin": min(margins),
                "last_logits": logits[-1].tolist(),
            }
        )
    model.to(torch.float32)
    return out


def make_tiny():
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specs = [
        ("llama", True, dict(tie_word_embeddings=False), 0),
        ("qwen2", False, dict(tie_word_embeddings=True), 1),
        (
            "llama3rope",
            True,
            dict(
                tie_word_embeddings=False,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 10000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            ),
            2,
        ),
    ]
    for name, is_llama, extra, seed in specs:
        raw = train_tokenizer(bos=is_llama)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            bos_token="<s>" if is_llama else None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            clean_up_tokenization_spaces=False,
        )
        tok.chat_template = CHATML
        common = dict(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        )
        if is_llama:
            common["bos_token_id"] = tok.convert_tokens_to_ids("<s>")
            if "rope_parameters" not in extra:
                extra = dict(extra, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
            cfg = LlamaConfig(**common, **extra)
            model = LlamaForCausalLM(cfg)
        else:
            cfg = Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **extra)
            model = Qwen2ForCausalLM(cfg)
        randomize(model, seed)
        if cfg.tie_word_embeddings:
            model.tie_weights()
        d = os.path.join(HF, name)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
        # qwen2 is written in shards to exercise model.safetensors.index.json.
        model.save_pretrained(d, max_shard_size="200KB" if name == "qwen2" else "50MB")
        tok.save_pretrained(d)
        ref = {
            "transformers": __import__("transformers").__version__,
            "model_type": cfg.model_type,
            "eos_token_id": cfg.eos_token_id,
            "sequences": reference(model, tok, PROMPTS),
            "chat": [
                {
                    "messages": msgs,
                    "add_generation_prompt": agp,
                    "text": tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp),
                    "ids": list(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=agp, return_dict=True)["input_ids"]),
                }
                for msgs, agp in [
                    ([{"role": "user", "content": "What is 2 + 2?"}], True),
                    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], False),
                ]
            ],
        }
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump(ref, f, indent=1)
        print(name, "files:", sorted(os.listdir(d)), "bytes:", sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d)))


def smollm2_template():
    path = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    from gguf import GGUFReader

    r = GGUFReader(path)
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def make_chat():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(HF, "llama", "tokenizer.json"), bos_token="<s>", eos_token="<|im_end|>")
    templates = {"chatml": CHATML, "llama3": LLAMA3, "qwenish": QWENISH}
    try:
        templates["smollm2"] = smollm2_template()
    except Exception as e:  # the GGUF is optional
        print("no SmolLM2 template:", e)
    convs = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [
            {"role": "system", "content": "  You are terse. "},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! \"quoted\" é"},
            {"role": "user", "content": " Bye \n"},
        ],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    ]
    cases = []
    for tname, src in templates.items():
        for msgs in convs:
            for agp in (True, False):
                text = tok.apply_chat_template(msgs, chat_template=src, tokenize=False, add_generation_prompt=agp)
                cases.append({"template": tname, "messages": msgs, "add_generation_prompt": agp, "text": text})
    out = {"bos_token": "<s>", "eos_token": "<|im_end|>", "templates": templates, "cases": cases}
    with open(os.path.join(HF, "chat_templates.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print("chat cases:", len(cases))


def make_charlevel():
    from transformers import PreTrainedTokenizerFast

    d = os.path.join(HF, "charlevel")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
    texts = ["12+30=42", "What is 7*6?\nAnswer: 42<eos>", "", "  at ease  ", "<pad><eos>ae"]
    ref = {
        "texts": texts,
        "ids": [tok(t, add_special_tokens=False)["input_ids"] for t in texts],
        "decoded": [tok.decode(tok(t)["input_ids"]) for t in texts],
    }
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(ref)


def make_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mdir = os.path.join(ROOT, "models")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(mdir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(mdir, gguf_file=name, dtype=torch.float32).to(torch.float64).eval()
    texts = ["Hello world! The answer is 42, isn't it?", "1234 apples and 56 pears cost 7.89 euros."]
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    chat_text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    seqs = []
    for text in texts + [chat_text]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        seqs.append({"text": text, "ids": ids, "logprobs": [lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]})
    chat_ids = tok(chat_text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        gen = model.generate(torch.tensor([chat_ids]), max_new_tokens=24, do_sample=False)
    completion = gen[0, len(chat_ids) :].tolist()
    ref = {
        "transformers": __import__("transformers").__version__,
        "gguf": name,
        "sequences": seqs,
        "chat_text": chat_text,
        "chat_ids": chat_ids,
        "greedy_ids": completion,
        "greedy_text": tok.decode(completion, skip_special_tokens=True),
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
    }
    with open(os.path.join(FIX, "smollm2_reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(json.dumps({k: v for k, v in ref.items() if k != "sequences"}, indent=1))


def check_saved(d):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    ids = tok("Hello world!")["input_ids"]
    if tok.unk_token is None and "<eos>" in tok.get_vocab():  # char-level: its alphabet has no 'w'
        ids = tok("Hello 12+30=?")["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    print(json.dumps({"ids": ids, "logprobs": [lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)],
                      "chat": tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
                      if tok.chat_template else None}))


if __name__ == "__main__":
    args = sys.argv[1:] or ["tiny", "chat", "charlevel", "smollm2"]
    if args[0] == "check-saved":
        check_saved(args[1])
        sys.exit(0)
    torch.manual_seed(0)
    for a in args:
        {"tiny": make_tiny, "chat": make_chat, "charlevel": make_charlevel, "smollm2": make_smollm2}[a]()
