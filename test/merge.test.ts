import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseSize } from "../src/cli/merge.ts";
import { cpuDevice } from "../src/kernels/devices.ts";
import { collate, targetNllSum } from "../src/lora/loss.ts";
import { loraScaling } from "../src/lora/layer.ts";
import { mergeCheckpoint, planShards } from "../src/lora/merge_checkpoint.ts";
import { readAdapterConfig } from "../src/lora/peft.ts";
import { loadModel } from "../src/model/load.ts";
import { openCheckpoint, openSafetensors, writeSafetensors, type TensorToWrite } from "../src/model/safetensors.ts";
import { runCli } from "./helpers/cli.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

/**
 * `qalign merge`: W + scaling B A written tensor by tensor. Checked against PyTorch (the merged
 * f32 model's loss equals the float64 loss of base + adapter that scripts/make_lora_fixtures.py
 * wrote) and against a float64 sum computed here (bf16 output within half a bf16 ulp), on a bf16
 * sharded checkpoint derived from the llama-untied fixture.
 */
const tmp = mkdtempSync(join(tmpdir(), "qalign-merge-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const BASE = fixtureDir("llama-untied");
const ADAPTER = join(BASE, "..", "..", "lora", "llama-untied");

/** Header entries of a safetensors file: name -> {dtype, shape}. */
function header(file: string): Record<string, { dtype: string; shape: number[] }> {
  const b = readFileSync(file);
  const h = JSON.parse(b.subarray(8, 8 + Number(b.readBigUInt64LE(0))).toString("utf8")) as Record<string, { dtype: string; shape: number[] }>;
  delete h["__metadata__"];
  return h;
}

/** The llama-untied fixture in bf16, in two shards with an index, plus tokenizer and generation files. */
async function bf16Sharded(): Promise<string> {
  const dir = join(tmp, "bf16-sharded");
  if (existsSync(dir)) return dir;
  mkdirSync(dir);
  const ckpt = await openCheckpoint(BASE);
  const names = ckpt.names();
  const halves = [names.slice(0, 10), names.slice(10)];
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const [i, part] of halves.entries()) {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    const tensors: Record<string, TensorToWrite> = {};
    for (const n of part) {
      tensors[n] = { dtype: "BF16", shape: ckpt.info(n).shape, data: await ckpt.readF32(n) };
      weightMap[n] = file;
      total += tensors[n].data.length * 2;
    }
    await writeSafetensors(join(dir, file), tensors, { format: "pt" });
  }
  await ckpt.close();
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }));
  const config = JSON.parse(readFileSync(join(BASE, "config.json"), "utf8")) as Record<string, unknown>;
  writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, torch_dtype: "bfloat16" }));
  writeFileSync(join(dir, "tokenizer.json"), '{"version": "1.0", "note": "copied byte for byte"}\n');
  writeFileSync(join(dir, "generation_config.json"), '{"do_sample": false}\n');
  return dir;
}

/** Loss of the golden batch of make_lora_fixtures.py on `model`, and the float64 PyTorch value. */
async function goldenLoss(dir: string): Promise<{ got: number; want: number }> {
  const cpu = cpuDevice();
  const model = await loadModel(dir, { device: cpu });
  const f = await openSafetensors(join(ADAPTER, "expected.safetensors"));
  const ids = await f.readI32("input_ids");
  const [B, T] = f.info("input_ids").shape as [number, number];
  const lengths = await f.readI32("length");
  const promptLens = await f.readI32("prompt_len");
  const examples = Array.from({ length: B }, (_, b) => ({ ids: Array.from(ids.subarray(b * T, b * T + lengths[b]!)), promptLen: promptLens[b]! }));
  const batch = collate(examples, cpu);
  const got = await targetNllSum(model, batch).div(batch.targetCount).item();
  const want = (await f.readF32("loss"))[0]!;
  await f.close();
  model.dispose();
  return { got, want };
}

describe("qalign merge", () => {
  it("f32: the merged model's loss equals PyTorch's float64 loss of base + adapter", async () => {
    const out = join(tmp, "f32");
    const r = runCli(["merge", "--model", BASE, "--adapter", ADAPTER, "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ out, files: ["model.safetensors"], merged: 14 });
    const { got, want } = await goldenLoss(out);
    // f32 weights and activations against a float64 reference: the lora_golden test's 1e-5.
    expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-5 * Math.abs(want));
  });

  it("bf16 sharded: keeps bf16, adds scaling B A to within half a bf16 ulp, copies the rest and the tokenizer files", async () => {
    const base = await bf16Sharded();
    const out = join(tmp, "bf16");
    const r = runCli(["merge", "--model", base, "--adapter", ADAPTER, "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).files).toEqual(["model.safetensors"]); // 5 GB shards: one file, no index
    expect(existsSync(join(out, "model.safetensors.index.json"))).toBe(false);
    expect(Object.values(header(join(out, "model.safetensors"))).every((t) => t.dtype === "BF16")).toBe(true);
    expect((JSON.parse(readFileSync(join(out, "config.json"), "utf8")) as { torch_dtype: string }).torch_dtype).toBe("bfloat16");
    for (const f of ["tokenizer.json", "generation_config.json"]) expect(readFileSync(join(out, f))).toEqual(readFileSync(join(base, f)));

    const cfg = await readAdapterConfig(ADAPTER);
    const s = loraScaling(cfg);
    const src = await openCheckpoint(base);
    const merged = await openCheckpoint(out);
    const adapter = await openSafetensors(join(ADAPTER, "adapter_model.safetensors"));
    let adapted = 0;
    for (const name of src.names()) {
      const key = `base_model.model.${name.replace(/\.weight$/, "")}.lora_A.weight`;
      if (!adapter.has(key)) {
        expect(await merged.readRaw(name), name).toEqual(await src.readRaw(name));
        continue;
      }
      adapted++;
      const [O, I] = src.info(name).shape as [number, number];
      const w = await src.readF32(name);
      const A = await adapter.readF32(key);
      const Bm = await adapter.readF32(key.replace("lora_A", "lora_B"));
      const got = await merged.readF32(name);
      let worst = 0;
      for (let o = 0; o < O; o++) {
        for (let i = 0; i < I; i++) {
          let ref = w[o * I + i]!;
          for (let k = 0; k < cfg.r; k++) ref += s * Bm[o * cfg.r + k]! * A[k * I + i]!;
          // bf16 keeps 8 significant bits: rounding to nearest is off by at most 2^-8 |ref|
          // (plus the f32 sum's own rounding, 2^-24 relative).
          worst = Math.max(worst, Math.abs(got[o * I + i]! - ref) / (2 ** -8 * (1 + 2 ** -15) * Math.abs(ref) + 1e-30));
        }
      }
      expect(worst, name).toBeLessThanOrEqual(1);
    }
    expect(adapted).toBe(14);
    await Promise.all([src.close(), merged.close(), adapter.close()]);
  });

  it("shards when the shard size is lowered, with an index as transformers writes it, and loads the same", async () => {
    const base = await bf16Sharded();
    const out = join(tmp, "bf16-small-shards");
    const r = runCli(["merge", "--model", base, "--adapter", ADAPTER, "--out", out, "--max-shard-size", "30kB"]);
    expect(r.status, r.stderr).toBe(0);
    const files = JSON.parse(r.stdout).files as string[];
    expect(files.length).toBeGreaterThan(2);
    expect(files).toEqual(files.map((_, i) => `model-${String(i + 1).padStart(5, "0")}-of-${String(files.length).padStart(5, "0")}.safetensors`));
    const index = JSON.parse(readFileSync(join(out, "model.safetensors.index.json"), "utf8")) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    let total = 0;
    for (const f of files) {
      const h = header(join(out, f));
      const bytes = Object.values(h).map((t) => t.shape.reduce((a, b) => a * b, 1) * 2);
      total += bytes.reduce((a, b) => a + b, 0);
      // A shard stays within 30 kB unless it holds one tensor larger than that.
      expect(bytes.length === 1 || bytes.reduce((a, b) => a + b, 0) <= 30_000, f).toBe(true);
      for (const name of Object.keys(h)) expect(index.weight_map[name]).toBe(f);
    }
    expect(index.metadata.total_size).toBe(total);
    const one = await openCheckpoint(join(tmp, "bf16"));
    const many = await openCheckpoint(out);
    expect(many.names().sort()).toEqual(one.names().sort());
    for (const n of one.names()) expect(await many.readRaw(n), n).toEqual(await one.readRaw(n));
    await Promise.all([one.close(), many.close()]);
    const model = await loadModel(out, { device: cpuDevice() });
    expect(model.config.num_hidden_layers).toBeGreaterThan(0);
    model.dispose();
  });

  it("--dtype f32 widens every float tensor and says so in config.json", async () => {
    const out = join(tmp, "bf16-to-f32");
    const r = runCli(["merge", "--model", await bf16Sharded(), "--adapter", ADAPTER, "--out", out, "--dtype", "f32"]);
    expect(r.status, r.stderr).toBe(0);
    expect(Object.values(header(join(out, "model.safetensors"))).every((t) => t.dtype === "F32")).toBe(true);
    expect((JSON.parse(readFileSync(join(out, "config.json"), "utf8")) as { torch_dtype: string }).torch_dtype).toBe("float32");
  });

  it("refuses an --out that holds files, and a bad --max-shard-size, before writing", async () => {
    const out = join(tmp, "occupied");
    cpSync(BASE, out, { recursive: true });
    await expect(mergeCheckpoint(BASE, ADAPTER, out)).rejects.toThrow(/exists and is not empty/);
    expect(() => parseSize("merge", "max-shard-size", "5 parsecs")).toThrow('merge: --max-shard-size must be a size such as 5GB, 200MiB or 1000000 (bytes), got "5 parsecs"');
    expect(parseSize("merge", "max-shard-size", "5GB")).toBe(5e9);
    expect(parseSize("merge", "max-shard-size", "2MiB")).toBe(2 ** 21);
  });

  it("plans shards as transformers does: a tensor that would overflow starts the next shard", () => {
    expect(planShards([["a", 4], ["b", 4], ["c", 3], ["d", 9], ["e", 1]], 8)).toEqual([["a", "b"], ["c"], ["d"], ["e"]]);
  });
});

describe("merging into a bitsandbytes 4-bit base", () => {
  it("writes the dequantized NF4 weights plus the update in BF16, without the quant state, and says so", async () => {
    const NF4 = fixtureDir("llama-nf4");
    const out = join(tmp, "nf4-merged");
    // llama-nf4 is llama-untied quantized: the same modules and shapes, so its adapter fits.
    const r = await mergeCheckpoint(NF4, ADAPTER, out);
    expect(r.dequantized).toBe(14);
    const config = JSON.parse(readFileSync(join(out, "config.json"), "utf8")) as Record<string, unknown>;
    expect(config["quantization_config"]).toBeUndefined();
    const h = header(join(out, "model.safetensors"));
    expect(Object.keys(h).some((k) => /\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\..*)$/.test(k))).toBe(false);
    const exp = await openSafetensors(join(NF4, "expected.safetensors"));
    const adapter = await openSafetensors(join(ADAPTER, "adapter_model.safetensors"));
    const merged = await openCheckpoint(out);
    const scaling = loraScaling(await readAdapterConfig(ADAPTER));
    for (const name of ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.gate_proj.weight"]) {
      expect(h[name]!.dtype).toBe("BF16");
      const base = await exp.readF32(`dequantized.${name}`);
      const path = name.slice(0, -".weight".length);
      const a = adapter.has(`base_model.model.${path}.lora_A.weight`) ? await adapter.readF32(`base_model.model.${path}.lora_A.weight`) : null;
      const b = a ? await adapter.readF32(`base_model.model.${path}.lora_B.weight`) : null;
      const [O, I] = h[name]!.shape as [number, number];
      const R = a ? a.length / I : 0;
      const got = await merged.readF32(name);
      for (let o = 0; o < O; o++) {
        for (let i = 0; i < I; i++) {
          let want = base[o * I + i]!;
          for (let k = 0; k < R; k++) want += scaling * b![o * R + k]! * a![k * I + i]!;
          // BF16 keeps 8 significant bits: within half an ulp, 2^-8 relative (+ the f32 sum's rounding).
          expect(Math.abs(got[o * I + i]! - want)).toBeLessThanOrEqual(Math.abs(want) * 2 ** -8 + 1e-7);
        }
      }
    }
    await Promise.all([exp.close(), adapter.close(), merged.close()]);
    // The CLI says what it did with the 4-bit weights.
    const cli = runCli(["merge", "--model", NF4, "--adapter", ADAPTER, "--out", join(tmp, "nf4-merged-cli")]);
    expect(cli.status).toBe(0);
    expect(cli.stderr).toContain("merge: the base stores 14 weights in 4 bits (bitsandbytes NF4); a merged update has no 4-bit form, so they are written as BF16");
  });
});
