import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { lastLine, ROOT, runCli } from "./helpers/cli.ts";

/**
 * Limits the command line checks from config.json before any compute: the wasm device's one
 * memory against the plan's total, and the LoRA rank against the targeted layers' shapes. The
 * expected numbers are closed forms of the configs (bench/configs/mistral-7b: hidden_size 4096,
 * 32 layers, 8 KV heads of 128, intermediate_size 14336, vocab 32000; the tiny model: hidden 64).
 */
const mistral = join(ROOT, "bench", "configs", "mistral-7b");
const tmp = mkdtempSync(join(tmpdir(), "qalign-limits-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("the wasm device's memory", () => {
  it("plan --device wasm checks the total against the one 4 GiB memory and says it does not fit (the plan's answer: status 0)", () => {
    const r = runCli(["plan", "--model", mistral, "--device", "wasm", "--threads", "2"]);
    expect(r.status).toBe(0);
    // weights 2 (7,241,732,096 - 65 D) + 4 * 65 D (norm vectors f32) = 14,483,996,672; kv cache
    // 2 L Hkv T Dh 4 = 134,217,728; activations T (3 D + 2 (H + Hkv) Dh + 3 F) 4 + 4 V = 134,345,728:
    // 14.75 GB; 4 GiB = 4,294,967,296 bytes = 4.29 GB.
    expect(r.stdout).toContain("\ntotal          14.75 GB  7.24 B parameters, 2.000 bytes each (memory limit 4.29 GB on the wasm device): too large for the wasm device\n");
    const qwen = join(ROOT, "bench", "configs", "qwen2.5-0.5b");
    const fits = runCli(["plan", "--model", qwen, "--device", "wasm", "--threads", "2", "--dtype", "nf4"]);
    expect(fits.stdout).toMatch(/^total +0\.53 GB .*each \(memory limit 4\.29 GB on the wasm device\)$/m);
    // One thread: a private memory allocated at its limit up front, 1 GiB = 1.07 GB.
    // 494,032,768 f32 parameters alone are 1.98 GB.
    const one = runCli(["plan", "--model", qwen, "--device", "wasm", "--threads", "1", "--dtype", "f32"]);
    expect(one.status).toBe(0);
    expect(one.stdout).toMatch(/^total +2\.03 GB .*each \(memory limit 1\.07 GB on the wasm device\): too large for the wasm device$/m);
  });

  it("a command that loads the model on wasm refuses a plan above the memory before reading a weight", () => {
    // bench/configs/mistral-7b holds config.json only: a load would fail on the missing weights.
    const r = runCli(["logits", "--model", mistral, "--device", "wasm", "--threads", "2", "--ids", "1,2"]);
    expect(r.status).toBe(1);
    // weights 14,483,996,672 + kv cache and activations of one token: 14.48 GB.
    expect(lastLine(r.stderr)).toBe(
      "qalign: logits: total 14.48 GB is above the 4.29 GB of memory all tensors of the wasm device share; choose a smaller --dtype (nf4) or another --device (cpu has no such limit)",
    );
  });
  it("align plans its training (activations kept for backward, LoRA, AdamW) and refuses one above the memory", async () => {
    const tiny = await ensureTinyModel();
    // 4096 pairs of 4096 tokens: their logits and gradient alone, 2 B T V f32 with V = 32,000, are
    // 2 x 16,777,216 x 32,000 x 4 bytes = 4.29 TB, far above wasm's 4 GiB; one token's inference fits.
    const out = join(tmp, "align-plan");
    const r = runCli(["align", "--model", tiny, "--device", "wasm", "--threads", "2", "--langs", "en", "--limit", "2", "--batch-size", "4096", "--max-length", "4096", "--out", out]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^align: plan: lora /m);
    expect(r.stderr).toMatch(/^align: plan: adamw /m);
    expect(lastLine(r.stderr)).toMatch(/^qalign: align: total [\d.]+ GB is above the 4\.29 GB of memory all tensors of the wasm device share; choose a smaller --dtype, --batch-size or --max-length, --gradient-checkpointing, or another --device/);
  });
});

describe("the LoRA rank", () => {
  it("plan --train refuses an r above min(in_features, out_features) of a target", () => {
    const r = runCli(["plan", "--model", mistral, "--train", "--r", "1025", "--target-modules", "q_proj,k_proj"]);
    expect(r.status).toBe(1);
    // k_proj is [num_key_value_heads * head_dim, hidden_size] = [8 * 128, 4096].
    expect(lastLine(r.stderr)).toBe(
      `qalign: plan: --r 1025 is above 1024, min(in_features, out_features) of model.layers.0.self_attn.k_proj [1024, 4096]: a LoRA update there has rank at most 1024 (${join(mistral, "config.json")})`,
    );
    expect(runCli(["plan", "--model", mistral, "--train", "--r", "1024", "--target-modules", "q_proj,k_proj"]).status).toBe(0);
  });

  it("train refuses --r 100000 on the tiny model (hidden 64) before any compute and writes nothing", async () => {
    const tiny = await ensureTinyModel();
    const out = join(tmp, "train-r");
    const r = runCli(["train", "--model", tiny, "--data", join(ROOT, "no-such-data.json"), "--out", out, "--r", "100000", "--device", "cpu"], 60_000);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toBe(
      `qalign: train: --r 100000 is above 64, min(in_features, out_features) of model.layers.0.self_attn.q_proj [64, 64]: a LoRA update there has rank at most 64 (${join(tiny, "config.json")})`,
    );
    expect(existsSync(out)).toBe(false);
  });
});
