"""PyTorch reference for `luspo bench`'s tiny train step (forward + backward + AdamW).

Same shapes as `luspo bench`: Llama, 2 layers, d=128, 4 heads, ffn 344, vocab 1024, B=8, T=128,
loss = -(mean over the batch of the masked response logprob sum) / (B*T).
Two models: HF transformers' LlamaForCausalLM (eager attention and sdpa) and, like the libtorch
figure of research/stack.md, the same model written by hand.

Usage: python scripts/torch_bench.py [--threads N] [--steps N]
"""
import argparse
import time

import torch
import torch.nn.functional as F


def hand_model(V, d, L, H, ffn):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(d, d, bias=False)
            self.k = torch.nn.Linear(d, d, bias=False)
            self.v = torch.nn.Linear(d, d, bias=False)
            self.o = torch.nn.Linear(d, d, bias=False)
            self.g = torch.nn.Linear(d, ffn, bias=False)
            self.u = torch.nn.Linear(d, ffn, bias=False)
            self.dn = torch.nn.Linear(ffn, d, bias=False)
            self.n1 = torch.nn.RMSNorm(d, eps=1e-5)
            self.n2 = torch.nn.RMSNorm(d, eps=1e-5)

        def forward(self, x, cos, sin, mask):
            B, T, _ = x.shape
            h = self.n1(x)
            q, k, v = (m(h).view(B, T, H, d // H).transpose(1, 2) for m in (self.q, self.k, self.v))

            def rope(t):
                t1, t2 = t.chunk(2, dim=-1)
                return t * cos + torch.cat((-t2, t1), dim=-1) * sin

            q, k = rope(q), rope(k)
            att = (q @ k.transpose(-1, -2)) / (d // H) ** 0.5 + mask
            y = att.softmax(-1) @ v
            x = x + self.o(y.transpose(1, 2).reshape(B, T, d))
            h = self.n2(x)
            return x + self.dn(F.silu(self.g(h)) * self.u(h))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, d)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(L))
            self.norm = torch.nn.RMSNorm(d, eps=1e-5)
            self.head = torch.nn.Linear(d, V, bias=False)

        def forward(self, ids):
            B, T = ids.shape
            dh = d // H
            inv = 1.0 / (10000 ** (torch.arange(0, dh, 2).float() / dh))
            ang = torch.outer(torch.arange(T).float(), inv)
            ang = torch.cat((ang, ang), -1)
            cos, sin = ang.cos(), ang.sin()
            mask = torch.full((T, T), float("-inf")).triu(1)
            x = self.emb(ids)
            for b in self.blocks:
                x = b(x, cos, sin, mask)
            return self.head(self.norm(x))

    return Model()


def hf_model(V, d, L, H, ffn, attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=ffn, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=H, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False, attn_implementation=attn)
    m = LlamaForCausalLM(cfg)
    return lambda ids: m(input_ids=ids).logits, m


def bench(name, fwd, params, B, T, V, steps):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T - 1)
    mask[:, T // 4 - 1:] = 1.0
    opt = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        logits = fwd(ids)[:, :-1]
        logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -(logp * mask).sum() / (B * T)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if step > 0:
            times.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    fw, bw, op, all_ = (sum(x) / len(times) for x in zip(*times))
    print(f"{name:<22} B={B} T={T}: fwd {fw*1e3:.1f} ms, bwd {bw*1e3:.1f} ms, AdamW {op*1e3:.1f} ms "
          f"= {all_*1e3:.1f} ms/step = {B*T/all_:>8.0f} tok/s (mean of {steps} steps)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=1024)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    V, d, L, H, ffn, B, T = a.vocab, 128, 2, 4, 344, 8, 128
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    m = hand_model(V, d, L, H, ffn)
    bench("hand-written", m, list(m.parameters()), B, T, V, a.steps)
    for attn in ("eager", "sdpa"):
        f, m = hf_model(V, d, L, H, ffn, attn)
        bench(f"transformers ({attn})", f, list(m.parameters()), B, T, V, a.steps)


if __name__ == "__main__":
    main()
