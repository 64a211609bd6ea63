#!/usr/bin/python3
"""Reference numerics for qalign's NF4 weights: bitsandbytes' 4-bit NormalFloat quantization,
written here from its published definition (QLoRA, Dettmers et al. 2023, section 3, and
bitsandbytes' `functional.py` / `backends/default/ops.py`), and checkpoints saved in the layout
transformers + bitsandbytes write for `load_in_4bit` models.

Rerun from the repository root (deterministic): /usr/bin/python3 scripts/make_nf4_fixtures.py
Needs only PyTorch (Debian's 1.13; bitsandbytes itself is not needed and not imported). Run
scripts/make_fixtures.py first: the quantized models are made from its llama-untied and
qwen2-tied weights.

The algorithm (all arithmetic float32, as bitsandbytes' kernels):
  NF4 code      the 16 values of bitsandbytes get_4bit_type("nf4")
  blocks        the flattened weight in blocks of 64 (the last may be shorter)
  absmax        max |w| per block, float32
  index         argmin_i |clamp(w * (1 / absmax), -1, 1) - code[i]| (first index on ties)
  packing       byte j = index[2j] << 4 | index[2j + 1]  (even element in the high nibble)
  dequantize    w' = code[index] * absmax[block]
  double quant  offset = mean(absmax); absmax - offset quantized the same way with blocks of
                256 and the signed 8-bit dynamic code (create_dynamic_map(signed=True,
                max_exponent_bits=7, total_bits=8)); absmax' = code8[q] * nested_absmax + offset

Writes:
  test/fixtures/nf4/blocks.safetensors   one vector through every step:
      x F32 [1000] (15 full blocks and a partial one; block 3 scaled by 1e-3, block 5 by 30)
      quant_map F32 [16], packed U8 [500], absmax F32 [16], dequantized F32 [1000]
      dynamic_map F32 [256], nested_offset F32 [1], nested_indices U8 [16],
      nested_absmax F32 [1], absmax_nested_dequantized F32 [16], dequantized_nested F32 [1000]
  test/fixtures/models/llama-nf4/   llama-untied's weights, every decoder Linear in NF4 with
      double quantization (bnb_4bit_use_double_quant); embeddings, norms and lm_head kept as
      they were (F32), as transformers does
  test/fixtures/models/qwen2-nf4/   qwen2-tied's (BF16, tied, q/k/v biases), NF4 without double
      quantization; embeddings, norms, biases kept in BF16
  each with config.json (+ quantization_config), model.safetensors in the saved 4-bit layout:
      <linear>.weight                                   U8 [n/2, 1]  packed indices
      <linear>.weight.absmax                            F32 [n/64], or U8 [n/64] when nested
      <linear>.weight.quant_map                         F32 [16]
      <linear>.weight.nested_absmax, .nested_quant_map  F32 [n/64/256], F32 [256] (nested only)
      <linear>.weight.quant_state.bitsandbytes__nf4     U8: the JSON of quant_type, blocksize,
                                                        dtype, shape (+ nested_blocksize,
                                                        nested_dtype, nested_offset)
  and expected.safetensors: input_ids, attention_mask (I32 [2, 8]), logits F32 [2, 8, V] (the
      float64 forward of make_fixtures.py over the dequantized weights), and
      `dequantized.<linear>.weight` F32 [out, in] for every quantized weight.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (write_safetensors, forward, make_inputs)

ROOT = Path(__file__).resolve().parent.parent / "test" / "fixtures"

NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32)
BLOCK, NESTED_BLOCK = 64, 256


def dynamic_map():
    """create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), from its definition."""
    data = []
    for i in range(7):
        b = torch.linspace(0.1, 1, 2 ** i + 1)  # float32
        means = (b[:-1] + b[1:]) / 2.0
        scale = torch.tensor(10.0 ** (i - 6), dtype=torch.float32)
        data += (scale * means).tolist() + (-scale * means).tolist()
    data += [0.0, 1.0]
    assert len(data) == 256
    return torch.tensor(sorted(data), dtype=torch.float32)


def quantize_blockwise(a, code, blocksize):
    """(indices uint8 [n], absmax float32 [blocks]) of a flat float32 tensor."""
    n = a.numel()
    blocks = -(-n // blocksize)
    padded = torch.zeros(blocks * blocksize, dtype=torch.float32)
    padded[:n] = a.reshape(-1).to(torch.float32)
    grid = padded.view(blocks, blocksize)
    absmax = grid.abs().max(dim=1).values
    scaled = torch.clamp(grid * (1 / absmax).view(-1, 1), -1, 1).reshape(-1)[:n]
    idx = torch.argmin((scaled.view(-1, 1) - code.view(1, -1)).abs(), dim=1)
    return idx.to(torch.uint8), absmax


def dequantize_blockwise(idx, absmax, code, blocksize):
    out = code[idx.long()]
    scale = absmax.repeat_interleave(blocksize)[: out.numel()]
    return out * scale


def pack(idx):
    if idx.numel() % 2:
        idx = torch.cat([idx, torch.zeros(1, dtype=torch.uint8)])
    return (idx[0::2] << 4) | idx[1::2]


def compress(absmax):
    offset = absmax.mean()
    q, nested = quantize_blockwise(absmax - offset, dynamic_map(), NESTED_BLOCK)
    return offset, q, nested


def decompress(offset, q, nested):
    return dequantize_blockwise(q, nested, dynamic_map(), NESTED_BLOCK) + offset


def write_blocks():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1000, generator=gen, dtype=torch.float32)
    x[3 * BLOCK:4 * BLOCK] *= 1e-3
    x[5 * BLOCK:6 * BLOCK] *= 30
    idx, absmax = quantize_blockwise(x, NF4_CODE, BLOCK)
    deq = dequantize_blockwise(idx, absmax, NF4_CODE, BLOCK)
    offset, q8, nested = compress(absmax)
    absmax2 = decompress(offset, q8, nested)
    deq2 = dequantize_blockwise(idx, absmax2, NF4_CODE, BLOCK)
    out = ROOT / "nf4"
    out.mkdir(parents=True, exist_ok=True)
    mf.write_safetensors(out / "blocks.safetensors", {
        "x": x, "quant_map": NF4_CODE, "packed": pack(idx), "absmax": absmax, "dequantized": deq,
        "dynamic_map": dynamic_map(), "nested_offset": offset.view(1), "nested_indices": q8,
        "nested_absmax": nested, "absmax_nested_dequantized": absmax2, "dequantized_nested": deq2,
    }, {"generator": "scripts/make_nf4_fixtures.py (bitsandbytes NF4, see its docstring)"})


QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def write_quantized(name, source, nested):
    src = ROOT / "models" / source
    cfg = json.loads((src / "config.json").read_text())
    weights = mf.read_safetensors(src / "model.safetensors")
    dtype = next(iter(weights.values())).dtype
    saved, deq = {}, {}
    for key, w in weights.items():
        if not (key.endswith(".weight") and key.split(".")[-2] in QUANTIZED):
            saved[key] = w
            continue
        idx, absmax = quantize_blockwise(w.to(torch.float32), NF4_CODE, BLOCK)
        state = {"quant_type": "nf4", "blocksize": BLOCK, "dtype": DTYPE_NAME[dtype], "shape": list(w.shape)}
        saved[key] = pack(idx).view(-1, 1)
        saved[key + ".quant_map"] = NF4_CODE.clone()
        if nested:
            offset, q8, nabs = compress(absmax)
            saved[key + ".absmax"] = q8
            saved[key + ".nested_absmax"] = nabs
            saved[key + ".nested_quant_map"] = dynamic_map()
            state.update(nested_blocksize=NESTED_BLOCK, nested_dtype="float32", nested_offset=offset.item())
            absmax = decompress(offset, q8, nabs)
        else:
            saved[key + ".absmax"] = absmax
        saved[key + ".quant_state.bitsandbytes__nf4"] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
        deq[key] = dequantize_blockwise(idx, absmax, NF4_CODE, BLOCK).view(w.shape)
    cfg["quantization_config"] = {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": nested,
        "bnb_4bit_compute_dtype": DTYPE_NAME[dtype], "bnb_4bit_quant_storage": "uint8",
        "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False,
    }
    out = ROOT / "models" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    mf.write_safetensors(out / "model.safetensors", saved, {"format": "pt"})
    gen = torch.Generator().manual_seed(5)
    ids, mask = mf.make_inputs(cfg, gen)
    ref = {k: (deq[k] if k in deq else v) for k, v in weights.items()}
    _, _, _, logits = mf.forward(cfg, ref, ids, mask)
    expected = {"input_ids": ids.to(torch.int32), "attention_mask": mask.to(torch.int32), "logits": logits.to(torch.float32)}
    expected.update({f"dequantized.{k}": v for k, v in deq.items()})
    mf.write_safetensors(out / "expected.safetensors", expected, {
        "generator": "scripts/make_nf4_fixtures.py (float64 forward over the dequantized NF4 weights)",
        "padding": "logits at positions where attention_mask == 0 are 0; ignore them",
    })
    print(f"{name}: from {source}, {len(deq)} NF4 weights, nested={nested}")


def main():
    torch.set_num_threads(1)
    write_blocks()
    write_quantized("llama-nf4", "llama-untied", nested=True)
    write_quantized("qwen2-nf4", "qwen2-tied", nested=False)


if __name__ == "__main__":
    main()
