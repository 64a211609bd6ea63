#!/usr/bin/python3
"""Exports a Llama-family checkpoint to ONNX for the benchmark's ONNX Runtime peer.

    /usr/bin/python3 scripts/export_onnx.py CHECKPOINT_DIR OUT.onnx

CHECKPOINT_DIR holds config.json and model.safetensors (F32, F16 or BF16; one file), as
bench/model.ts writes its random checkpoints. It needs only PyTorch (Debian's python3-torch
1.13; no transformers, no onnx package). The benchmark runs it into its cache directory; the
output is never committed.

The graph is the forward of transformers' modeling_llama.py / modeling_qwen2.py in float32 with
a KV cache, the same math as scripts/make_fixtures.py (which see for the formulas), causal, no
padding and no sliding window (the benchmark feeds one unpadded sequence):
  inputs   input_ids int64 [1, T]; past_key_<l>, past_value_<l> float [1, Hkv, P, Dh] (P may be 0)
  outputs  logits float [1, V] of the last position; present_key_<l>, present_value_<l>
           float [1, Hkv, P + T, Dh]
Positions are P .. P + T - 1, so prefill is P = 0 and each decode step feeds the presents back.
"""
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ in the repository
import make_fixtures as mf  # noqa: E402  (the safetensors reader)


class Llama(torch.nn.Module):
    def __init__(self, cfg, w):
        super().__init__()
        self.cfg = cfg
        self.D, self.H, self.Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.Dh = cfg.get("head_dim") or self.D // self.H
        self.L = cfg["num_hidden_layers"]
        self.eps = cfg["rms_norm_eps"]
        self.w = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(v, requires_grad=False) for k, v in w.items()})
        inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, self.Dh, 2, dtype=torch.float64) / self.Dh)
        self.register_buffer("inv_freq", inv.to(torch.float32))
        self.head = "model.embed_tokens.weight" if cfg.get("tie_word_embeddings", False) else "lm_head.weight"

    def p(self, name):
        return self.w[name.replace(".", "__")]

    def has(self, name):
        return name.replace(".", "__") in self.w

    def lin(self, x, name):
        y = x @ self.p(name + ".weight").T
        return y + self.p(name + ".bias") if self.has(name + ".bias") else y

    def rms(self, x, name):
        return self.p(name) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def repeat_kv(self, x):
        """[1, Hkv, S, Dh] -> [1, H, S, Dh], query head h reading kv head h // (H / Hkv) (an
        expand and a reshape: repeat_interleave's export fixes the traced sequence length)."""
        g = self.H // self.Hkv
        return x[:, :, None].expand(-1, -1, g, -1, -1).reshape(1, self.H, -1, self.Dh)

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def forward(self, input_ids, *past):
        T = input_ids.shape[1]
        P = past[0].shape[2]
        pos = torch.arange(T) + P
        angles = pos[:, None].to(torch.float32) * self.inv_freq[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        # query i (absolute position P + i) sees key j iff j <= P + i
        blocked = torch.arange(P + T)[None, :] > pos[:, None]
        x = self.p("model.embed_tokens.weight")[input_ids]
        presents = []
        for layer in range(self.L):
            pre = f"model.layers.{layer}."
            h = self.rms(x, pre + "input_layernorm.weight")
            q = self.lin(h, pre + "self_attn.q_proj").view(1, T, self.H, self.Dh).transpose(1, 2)
            k = self.lin(h, pre + "self_attn.k_proj").view(1, T, self.Hkv, self.Dh).transpose(1, 2)
            v = self.lin(h, pre + "self_attn.v_proj").view(1, T, self.Hkv, self.Dh).transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            k = torch.cat((past[2 * layer], k), dim=2)
            v = torch.cat((past[2 * layer + 1], v), dim=2)
            presents += [k, v]
            kr, vr = self.repeat_kv(k), self.repeat_kv(v)
            scores = (q @ kr.transpose(-1, -2)) / math.sqrt(self.Dh)
            scores = scores.masked_fill(blocked, -1e30)
            attn = (torch.softmax(scores, dim=-1) @ vr).transpose(1, 2).reshape(1, T, self.H * self.Dh)
            x = x + self.lin(attn, pre + "self_attn.o_proj")
            h = self.rms(x, pre + "post_attention_layernorm.weight")
            gate = self.lin(h, pre + "mlp.gate_proj")
            x = x + self.lin(torch.nn.functional.silu(gate) * self.lin(h, pre + "mlp.up_proj"), pre + "mlp.down_proj")
        last = self.rms(x[:, -1, :], "model.norm.weight")
        return (last @ self.p(self.head).T, *presents)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: export_onnx.py CHECKPOINT_DIR OUT.onnx")
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = json.loads((src / "config.json").read_text())
    model = Llama(cfg, {k: v.to(torch.float32) for k, v in mf.read_safetensors(src / "model.safetensors").items()}).eval()
    L, Hkv, Dh = model.L, model.Hkv, model.Dh
    names = [f"past_{kind}_{l}" for l in range(L) for kind in ("key", "value")]
    present = [n.replace("past_", "present_") for n in names]
    example = (torch.tensor([[5, 6, 7]], dtype=torch.int64), *[torch.zeros(1, Hkv, 2, Dh) for _ in names])
    axes = {"input_ids": {1: "T"}, **{n: {2: "P"} for n in names}, **{n: {2: "PT"} for n in present}}
    with torch.no_grad():
        torch.onnx.export(model, example, str(out), input_names=["input_ids", *names], output_names=["logits", *present],
                          dynamic_axes=axes, opset_version=14, do_constant_folding=True)


if __name__ == "__main__":
    main()
