#!/usr/bin/python3
"""Reference numerics for qalign's Llama-family loader: tiny random checkpoints and their outputs.

Rerun from the repository root (deterministic: the same bytes every time):

    /usr/bin/python3 scripts/make_fixtures.py

It needs only PyTorch (written against Debian's python3-torch 1.13; no `transformers`, no
`safetensors`, no network). The outputs are committed, so the tests never need PyTorch.

For each model it writes test/fixtures/models/<name>/:
  config.json                   HF config (field names as transformers writes them)
  model.safetensors             the weights, in the checkpoint dtype
    or model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json (sharded)
  expected.safetensors          the reference forward pass, tensors:
    input_ids               I32 [B, T]      B = 2, T = 8; row 1 is left-padded with pad id 0
    attention_mask          I32 [B, T]      1 = token, 0 = padding
    position_ids            I32 [B, T]      cumsum(attention_mask) - 1, clamped at 0
    rope_inv_freq           F64 [Dh/2]      inverse frequencies after rope_scaling
    hidden_states_residual  F32 [L+1, B, T, D]  the residual stream: [0] = embedding output,
                                            [l] = after decoder layer l (1-based), no final norm
    hidden_states_hf        F32 [L+1, B, T, D]  what HF returns with output_hidden_states=True:
                                            equal to the residual for [0..L-1]; [L] is
                                            model.norm(residual[L]) (HF normalises the last one)
    logits                  F32 [B, T, V]

The forward follows transformers' modeling_llama.py / modeling_mistral.py / modeling_qwen2.py
(eager attention), computed in float64 from the stored weights (F16/BF16 weights are rounded
first, then upcast), so it is the exact answer that a float32 engine approximates:
  x = embed_tokens[input_ids]
  per layer: x = x + o_proj(attn(input_layernorm(x)));  h = post_attention_layernorm(x)
             x = x + down_proj(silu(gate_proj(h)) * up_proj(h))
  logits = lm_head(norm(x))   (lm_head = embed_tokens when tie_word_embeddings)
  RMSNorm(x) = weight * x * rsqrt(mean(x^2) + eps)   (HF: in float32; here float64)
  RoPE: rotate_half form, angle = position * inv_freq, inv_freq from modeling_rope_utils.py
        (_compute_default_rope_parameters, linear = inv_freq / factor, _compute_llama3_parameters)
  attention: softmax(q k^T / sqrt(Dh) + mask) v with k, v shared by groups of H/Hkv query heads
        (repeat_kv); query i may attend key j iff j <= i, attention_mask[j] == 1 and, with a
        sliding window W (mistral), j > i - W (W keys including itself; HF's mask convention).
Padding: position_ids = cumsum(attention_mask) - 1 clamped at 0, as in left-padded generation
(HF generate fills padded slots with 1 instead; only padded slots differ and they never matter).
A padded query attends nothing; all stored values at padded positions are 0 and must be ignored.
"""
import json
import math
import shutil
import sys
from pathlib import Path

import torch

assert sys.byteorder == "little"
ROOT = Path(__file__).resolve().parent.parent / "test" / "fixtures" / "models"
B, T, PAD = 2, 8, 0

# Tiny configs: every feature the loader must handle appears in at least one.
MODELS = {
    "llama-untied": dict(
        seed=1, dtype="F32", shards=1,
        config=dict(
            architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=320,
            hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
            max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
            # Dh = 16: wavelengths 6.3 (kept), 19.9 and 62.8 (blended), >= 199 (divided).
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=64),
            attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
            torch_dtype="float32", bos_token_id=1, eos_token_id=[2, 3],
        ),
    ),
    "mistral-sliding": dict(
        seed=2, dtype="F16", shards=1,
        config=dict(
            architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=300,
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
            max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
            sliding_window=3, tie_word_embeddings=False, torch_dtype="float16",
            bos_token_id=1, eos_token_id=2,
        ),
    ),
    "qwen2-tied": dict(
        seed=3, dtype="BF16", shards=1,
        config=dict(
            architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=300,
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
            max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
            # Real Qwen configs ship a sliding_window that use_sliding_window=false disables.
            use_sliding_window=False, sliding_window=4, max_window_layers=2,
            tie_word_embeddings=True, torch_dtype="bfloat16",
            bos_token_id=298, eos_token_id=299,
        ),
    ),
    "qwen2-sharded": dict(
        seed=4, dtype="F32", shards=2,
        config=dict(
            architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=400,
            hidden_size=48, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2, hidden_act="silu",
            max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=10000.0,
            use_sliding_window=False, sliding_window=None, max_window_layers=2,
            tie_word_embeddings=False, torch_dtype="float32",
            bos_token_id=398, eos_token_id=[398, 399],
        ),
    ),
}

TORCH_DTYPE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------
# safetensors, written by hand: u64 header length (LE) | JSON header padded with spaces to a
# multiple of 8 | raw little-endian data, laid out by decreasing element size then name.

def tensor_bytes(t):
    """(dtype name, shape, raw bytes) of a tensor in its own dtype."""
    name = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.float64: "F64", torch.int32: "I32", torch.uint8: "U8"}[t.dtype]
    t = t.contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
    return name, list(t.shape), raw.numpy().tobytes()


ITEM_SIZE = {"F64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "U8": 1}


def write_safetensors(path, tensors, metadata):
    """Writes one file; returns the size of its data section in bytes."""
    entries = [(tensor_bytes(t), name) for name, t in tensors.items()]
    entries.sort(key=lambda e: (-ITEM_SIZE[e[0][0]], e[1]))
    header, offset = {"__metadata__": metadata}, 0
    for (dtype, shape, raw), name in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for (_, _, raw), _ in entries:
            f.write(raw)
    return offset


def read_safetensors(path):
    """{name: tensor in its stored dtype} of a safetensors file written as above (F32, F16, BF16 only:
    the committed fixtures; no `safetensors` package here). Halves go through int16 because
    torch.frombuffer cannot read bfloat16 in every PyTorch version."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = TORCH_DTYPE[info["dtype"]]
        half = dtype in (torch.float16, torch.bfloat16)
        t = torch.frombuffer(bytearray(body[begin:end]), dtype=torch.int16 if half else dtype)
        out[name] = (t.view(dtype) if half else t).reshape(info["shape"])
    return out


# ----------------------------------------------------------------------------------------------
# Weights

def make_weights(cfg, dtype, gen):
    """HF-named random weights, already rounded to the checkpoint dtype."""
    D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    Dh = D // H
    qkv_bias = cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)
    o_bias = cfg["model_type"] == "llama" and cfg.get("attention_bias", False)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    def linear(out, inp):
        return randn(out, inp, scale=inp ** -0.5)

    w = {"model.embed_tokens.weight": randn(V, D)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, out in (("q_proj", H * Dh), ("k_proj", Hkv * Dh), ("v_proj", Hkv * Dh)):
            w[f"{p}self_attn.{name}.weight"] = linear(out, D)
            if qkv_bias:
                w[f"{p}self_attn.{name}.bias"] = randn(out, scale=0.5)
        w[f"{p}self_attn.o_proj.weight"] = linear(D, H * Dh)
        if o_bias:
            w[f"{p}self_attn.o_proj.bias"] = randn(D, scale=0.5)
        w[f"{p}mlp.gate_proj.weight"] = linear(F, D)
        w[f"{p}mlp.up_proj.weight"] = linear(F, D)
        w[f"{p}mlp.down_proj.weight"] = linear(D, F)
        w[f"{p}input_layernorm.weight"] = 1 + randn(D, scale=0.2)
        w[f"{p}post_attention_layernorm.weight"] = 1 + randn(D, scale=0.2)
    w["model.norm.weight"] = 1 + randn(D, scale=0.2)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = linear(V, D)
    return {k: v.to(TORCH_DTYPE[dtype]) for k, v in w.items()}


# ----------------------------------------------------------------------------------------------
# Reference forward (float64)

def rope_inv_freq(cfg):
    """modeling_rope_utils.py: default, linear (inv_freq / factor) and llama3."""
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    dim = cfg.get("head_dim") or D // H
    inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    s = cfg.get("rope_scaling")
    if s is None:
        return inv
    kind = s.get("rope_type", s.get("type"))
    if kind == "linear":
        return inv / s["factor"]
    assert kind == "llama3", kind
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    inv_llama = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return torch.where(medium, smoothed, inv_llama)


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def forward(cfg, w, input_ids, attention_mask):
    """Returns (position_ids, residual stream [L+1, B, T, D], HF hidden states, logits)."""
    D, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    Dh, eps = D // H, cfg["rms_norm_eps"]
    W = {k: v.to(torch.float64) for k, v in w.items()}

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    angles = position_ids[..., None].to(torch.float64) * rope_inv_freq(cfg)  # [B, T, Dh/2]
    emb = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, T, Dh]
    cos, sin = emb.cos(), emb.sin()

    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = (j <= i)[None] & (attention_mask[:, None, :] == 1)  # [B, T(query), T(key)]
    window = cfg.get("sliding_window") if cfg["model_type"] == "mistral" else None
    if window is not None:
        allowed = allowed & (j > i - window)[None]
    assert (allowed.any(-1) | (attention_mask == 0)).all(), "only padded queries attend nothing"
    bias = torch.zeros(B, 1, T, T, dtype=torch.float64).masked_fill(~allowed[:, None], -math.inf)

    x = W["model.embed_tokens.weight"][input_ids]  # [B, T, D]
    residual = [x]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").view(B, T, H, Dh).transpose(1, 2)  # [B, H, T, Dh]
        k = lin(h, p + "self_attn.k_proj").view(B, T, Hkv, Dh).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(B, T, Hkv, Dh).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // Hkv, dim=1)  # repeat_kv: query head h reads kv head h // (H/Hkv)
        v = v.repeat_interleave(H // Hkv, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(Dh) + bias
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key: padded queries
        attn = (probs @ v).transpose(1, 2).reshape(B, T, H * Dh)
        x = x + lin(attn, p + "self_attn.o_proj")
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        gate = lin(h, p + "mlp.gate_proj")
        x = x + lin(torch.nn.functional.silu(gate) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        residual.append(x)
    final = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"]
    logits = final @ head.T
    residual = torch.stack(residual)
    hf = torch.cat((residual[:-1], final[None]))
    keep = attention_mask[None, :, :, None].to(torch.float64)  # zero every padded position
    return position_ids, residual * keep, hf * keep, logits * keep[0]


# ----------------------------------------------------------------------------------------------

def make_inputs(cfg, gen):
    V = cfg["vocab_size"]
    ids = torch.randint(3, V - 2, (B, T), generator=gen, dtype=torch.int64)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[1, :2] = 0
    ids[1, :2] = PAD
    return ids, mask


def write_model(name, spec):
    out = ROOT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = spec["config"]
    gen = torch.Generator().manual_seed(spec["seed"])
    weights = make_weights(cfg, spec["dtype"], gen)
    ids, mask = make_inputs(cfg, gen)

    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    meta = {"format": "pt"}
    if spec["shards"] == 1:
        write_safetensors(out / "model.safetensors", weights, meta)
    else:
        # Shard 1: embeddings and the first half of the layers; shard 2: the rest.
        half = cfg["num_hidden_layers"] // 2
        first = lambda k: k.startswith("model.embed_tokens") or any(
            k.startswith(f"model.layers.{i}.") for i in range(half))
        files = [f"model-0000{s}-of-00002.safetensors" for s in (1, 2)]
        parts = [{k: v for k, v in weights.items() if first(k) == (s == 0)} for s in (0, 1)]
        total = sum(write_safetensors(out / f, part, meta) for f, part in zip(files, parts))
        weight_map = {k: files[0 if first(k) else 1] for k in sorted(weights)}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    pos, residual, hf, logits = forward(cfg, weights, ids, mask)
    expected = {
        "input_ids": ids.to(torch.int32),
        "attention_mask": mask.to(torch.int32),
        "position_ids": pos.to(torch.int32),
        "rope_inv_freq": rope_inv_freq(cfg),
        "hidden_states_residual": residual.to(torch.float32),
        "hidden_states_hf": hf.to(torch.float32),
        "logits": logits.to(torch.float32),
    }
    write_safetensors(out / "expected.safetensors", expected, {
        "generator": "scripts/make_fixtures.py (float64 reference forward; see its docstring)",
        "hidden_states_residual": "[L+1,B,T,D] embedding output, then the residual after each layer; no final norm",
        "hidden_states_hf": "[L+1,B,T,D] HF output_hidden_states: residual[0..L-1], then norm(residual[L])",
        "padding": "values at positions where attention_mask == 0 are set to 0; ignore them",
        "position_ids": "cumsum(attention_mask) - 1, clamped at 0",
    })
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {size} bytes, logits |max| {logits.abs().max():.3f}")


def main():
    torch.set_num_threads(1)  # the same summation order on every machine
    for name, spec in MODELS.items():
        write_model(name, spec)


if __name__ == "__main__":
    main()
