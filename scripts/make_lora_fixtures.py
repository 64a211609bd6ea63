#!/usr/bin/python3
"""Reference LoRA loss and gradients for test/lora_golden.test.ts.

Rerun from the repository root, after scripts/make_fixtures.py (deterministic):

    /usr/bin/python3 scripts/make_lora_fixtures.py

Like make_fixtures.py it needs only PyTorch (1.13); the outputs are committed. It reuses that
script's float64 reference forward (imported, not copied) on a committed fixture model, with
LoRA on some of its linear layers. Without dropout, a LoRA layer computes
    x W^T + scaling (x A^T) B^T = x (W + scaling B A)^T,
so the forward runs on the merged weights W + scaling B A, built with autograd from A and B
(float64 leaves), and backward gives d loss / dA and d loss / dB.

For each case it writes test/fixtures/lora/<case>/:
  adapter_config.json         PEFT's LoraConfig JSON (json.dumps(..., indent=2, sort_keys=True),
                              as PeftConfigMixin.save_pretrained writes it); lora_dropout 0.05
                              as in training, though the loss here is computed without dropout
  adapter_model.safetensors   F32 base_model.model.<module>.lora_A.weight [r, in], .lora_B.weight
                              [out, r]: fixed random values, B nonzero so that dA is nonzero
  expected.safetensors
    input_ids    I32 [B, T]   B = 2, T = 8: row 0 has 8 tokens, row 1 has 6 then 2 pads (id 0)
    length       I32 [B]      tokens of each row, 8 and 6
    prompt_len   I32 [B]      tokens of each row that are context (label -100), 3 and 4
    loss         F64 []       mean over target tokens j >= prompt_len of -log p(ids[j] | ids[:j])
                              (HF causal-LM loss with labels = ids, -100 on prompt and padding)
    grad.<key>   F32          d loss / d weight for every adapter key
"""
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ in the repository
import make_fixtures as mf  # noqa: E402  (the reference forward and safetensors writer)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "test" / "fixtures" / "models"
OUT = ROOT / "test" / "fixtures" / "lora"
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = {
    # Every module type, plain scaling alpha / r = 1.5.
    "llama-untied": dict(model="llama-untied", seed=11, r=4, lora_alpha=6, use_rslora=False, target_modules=ALL),
    # The paper's targets on a model with q/k/v biases (BF16 weights), rsLoRA scaling alpha / sqrt(r) = 4.
    "qwen2-tied-rslora": dict(model="qwen2-tied", seed=12, r=4, lora_alpha=8, use_rslora=True,
                              target_modules=["q_proj", "v_proj"]),
}
LENGTHS, PROMPT_LENS = [8, 6], [3, 4]

def module_path(layer, name):
    return f"model.layers.{layer}.{'mlp' if name in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{name}"


def peft_config(case):
    """adapter_config.json of PEFT 0.12 for a causal-LM LoRA adapter: every LoraConfig field."""
    return {
        "alpha_pattern": {}, "auto_mapping": None,
        "base_model_name_or_path": f"test/fixtures/models/{case['model']}", "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
        "loftq_config": {}, "lora_alpha": case["lora_alpha"], "lora_dropout": 0.05,
        "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
        "peft_type": "LORA", "r": case["r"], "rank_pattern": {}, "revision": None,
        "target_modules": case["target_modules"], "task_type": "CAUSAL_LM", "use_dora": False,
        "use_rslora": case["use_rslora"],
    }


def write_case(name, case):
    cfg = json.loads((MODELS / case["model"] / "config.json").read_text())
    weights = mf.read_safetensors(MODELS / case["model"] / "model.safetensors")
    gen = torch.Generator().manual_seed(case["seed"])
    r = case["r"]
    scaling = case["lora_alpha"] / (math.sqrt(r) if case["use_rslora"] else r)

    # Fixed A ~ N(0, 1/in) and B ~ N(0, 0.25/r), rounded to float32 (what the file stores).
    leaves = {}
    merged = {k: v.to(torch.float64) for k, v in weights.items()}
    for layer in range(cfg["num_hidden_layers"]):
        for mod in case["target_modules"]:
            path = module_path(layer, mod)
            w = merged[path + ".weight"]
            out_f, in_f = w.shape
            A = (torch.randn(r, in_f, generator=gen, dtype=torch.float64) / math.sqrt(in_f)).float().double()
            B = (torch.randn(out_f, r, generator=gen, dtype=torch.float64) * 0.5 / math.sqrt(r)).float().double()
            A.requires_grad_(True)
            B.requires_grad_(True)
            leaves[f"base_model.model.{path}.lora_A.weight"] = A
            leaves[f"base_model.model.{path}.lora_B.weight"] = B
            merged[path + ".weight"] = w + scaling * (B @ A)

    V = cfg["vocab_size"]
    ids = torch.zeros(mf.B, mf.T, dtype=torch.int64)
    mask = torch.zeros(mf.B, mf.T, dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        ids[b, :n] = torch.randint(3, V - 2, (n,), generator=gen)
        mask[b, :n] = 1
    _, _, _, logits = mf.forward(cfg, merged, ids, mask)  # [B, T, V] float64
    logp = torch.log_softmax(logits, dim=-1)
    terms = [-logp[b, j - 1, ids[b, j]] for b, (n, p) in enumerate(zip(LENGTHS, PROMPT_LENS)) for j in range(p, n)]
    loss = torch.stack(terms).mean()
    loss.backward()

    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(peft_config(case), indent=2, sort_keys=True))
    mf.write_safetensors(out / "adapter_model.safetensors", {k: v.detach().float() for k, v in leaves.items()},
                         {"format": "pt"})
    expected = {
        "input_ids": ids.to(torch.int32),
        "length": torch.tensor(LENGTHS, dtype=torch.int32),
        "prompt_len": torch.tensor(PROMPT_LENS, dtype=torch.int32),
        "loss": loss.detach(),
    }
    expected.update({f"grad.{k}": v.grad.float() for k, v in leaves.items()})
    mf.write_safetensors(out / "expected.safetensors", expected, {
        "generator": "scripts/make_lora_fixtures.py (float64 reference; see its docstring)",
        "padding": "right; positions past each row's length hold id 0 and are not part of the loss",
    })
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {size} bytes, loss {loss.item():.6f}, scaling {scaling}")


def main():
    torch.set_num_threads(1)
    for name, case in CASES.items():
        write_case(name, case)


if __name__ == "__main__":
    main()
