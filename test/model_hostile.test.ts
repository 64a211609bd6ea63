import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadModel } from "../src/model/load.ts";
import { planForDir } from "../src/model/plan.ts";
import { openSafetensors, writeSafetensors, type TensorToWrite } from "../src/model/safetensors.ts";
import { CpuBackend } from "../src/kernels/cpu.ts";
import { runCli } from "./helpers/cli.ts";
import { expectCheckpointError } from "./helpers/errors.ts";

/**
 * Hostile configs beside real checkpoints: every size config.json implies is checked against
 * what the files hold before anything proportional to it is allocated or looped over; and a
 * tied checkpoint whose stored lm_head differs from the embedding loads tied, with a warning.
 */

const FIXTURES = join(import.meta.dirname, "fixtures", "models");
const tmp = mkdtempSync(join(tmpdir(), "qalign-hostile-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let dirCount = 0;

/** A copy of fixture `name` with config.json's fields replaced by `edit` (a path "a.b" edits a nested field). */
function withConfig(name: string, edit: Record<string, unknown>): string {
  const dir = join(tmp, `${name}-${dirCount++}`);
  cpSync(join(FIXTURES, name), dir, { recursive: true });
  const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, Record<string, unknown>>;
  for (const [path, value] of Object.entries(edit)) {
    const [outer, inner] = path.split(".") as [string, string | undefined];
    if (inner === undefined) (config as Record<string, unknown>)[outer] = value;
    else config[outer]![inner] = value;
  }
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  return dir;
}

/** Expects `p` to reject with a CheckpointError naming a file of `dir`, config.json, and matching each of `patterns`. */
function expectConfigError(p: Promise<unknown>, dir: string, patterns: RegExp[]): Promise<void> {
  return expectCheckpointError(p, dir, "config.json", ...patterns);
}

const ABSURD = 100_000_000;

describe("absurd sizes in config.json beside a real checkpoint", () => {
  // llama-untied: 2 layers, V 320, D 64, F 96, H 4, Hkv 2, Dh 16 (see its config.json).
  it("num_hidden_layers far above the files' layers fails naming the field and the layers the files hold", async () => {
    const dir = withConfig("llama-untied", { num_hidden_layers: ABSURD });
    const patterns = [/num_hidden_layers/, /100000000/, /2 layers/];
    await expectConfigError(loadModel(dir, { device: new CpuBackend() }), dir, patterns);
    // The memory plan (printed before the load) checks the same first.
    await expectConfigError(planForDir(dir, { batch: 1, seq: 1 }), dir, patterns);
  });

  // Each field enters a tensor's shape; the error names the field, the tensor and both shapes.
  const shapeFields: [string, Record<string, unknown>, RegExp][] = [
    ["hidden_size", { hidden_size: ABSURD, head_dim: 16 }, /hidden_size 100000000/],
    ["intermediate_size", { intermediate_size: ABSURD }, /intermediate_size 100000000/],
    ["vocab_size", { vocab_size: ABSURD }, /vocab_size 100000000/],
    ["num_attention_heads", { num_attention_heads: 4 * 2 ** 20, num_key_value_heads: 2, head_dim: 16 }, /num_attention_heads 4194304/],
    ["num_key_value_heads", { num_attention_heads: 2 ** 22, num_key_value_heads: 2 ** 21, head_dim: 16 }, /num_key_value_heads 2097152/],
    ["head_dim", { head_dim: ABSURD }, /head_dim 100000000/],
  ];
  for (const [field, edit, pattern] of shapeFields) {
    it(`${field} far above the checkpoint's shapes fails naming the field and the shapes`, async () => {
      const dir = withConfig("llama-untied", edit);
      await expectConfigError(loadModel(dir, { device: new CpuBackend() }), dir, [pattern, /shape \[\d+(,\d+)*\] disagrees/]);
      await expectConfigError(planForDir(dir, { batch: 1, seq: 1 }), dir, [pattern]);
    });
  }

  it("tie_word_embeddings false beside a tied checkpoint fails naming the field", async () => {
    const dir = withConfig("qwen2-tied", { tie_word_embeddings: false });
    await expectConfigError(loadModel(dir, { device: new CpuBackend() }), dir, [/lm_head\.weight/, /tie_word_embeddings/]);
  });

  // Fields that bound positions, not tensors: nothing is allocated for them, so an absurd value
  // loads the same weights as the fixture's own config (the device holds the same bytes).
  const positionFields: [string, Record<string, unknown>][] = [
    ["max_position_embeddings", { max_position_embeddings: 2 ** 40 }],
    ["rope_scaling.original_max_position_embeddings", { "rope_scaling.original_max_position_embeddings": 2 ** 40 }],
  ];
  for (const [field, edit] of positionFields) {
    it(`${field} = 2^40 allocates nothing for it`, async () => {
      const device = new CpuBackend();
      const model = await loadModel(withConfig("llama-untied", edit), { device });
      const baseline = new CpuBackend();
      const ref = await loadModel(join(FIXTURES, "llama-untied"), { device: baseline });
      expect(device.liveBytes()).toBe(baseline.liveBytes());
      model.dispose();
      ref.dispose();
    });
  }

  it("mistral sliding_window = 2^40 allocates nothing for it", async () => {
    const device = new CpuBackend();
    const model = await loadModel(withConfig("mistral-sliding", { sliding_window: 2 ** 40 }), { device });
    const baseline = new CpuBackend();
    const ref = await loadModel(join(FIXTURES, "mistral-sliding"), { device: baseline });
    expect(device.liveBytes()).toBe(baseline.liveBytes());
    model.dispose();
    ref.dispose();
  });
});

/** qwen2-tied with an lm_head.weight added to its safetensors: the embedding itself, or the embedding plus `delta` at element 7. */
async function tiedWithHead(delta: number): Promise<string> {
  const dir = join(tmp, `tied-head-${dirCount++}`);
  cpSync(join(FIXTURES, "qwen2-tied"), dir, { recursive: true });
  const file = join(dir, "model.safetensors");
  const st = await openSafetensors(file);
  const tensors: Record<string, TensorToWrite> = {};
  for (const name of st.names()) {
    const info = st.info(name);
    tensors[name] = { dtype: info.dtype as TensorToWrite["dtype"], shape: info.shape, data: await st.readF32(name) };
  }
  await st.close();
  const embed = tensors["model.embed_tokens.weight"]!;
  const head = embed.data.slice();
  head[7] = head[7]! + delta;
  tensors["lm_head.weight"] = { ...embed, data: head };
  await writeSafetensors(file, tensors);
  return dir;
}

describe("a tied checkpoint that also stores lm_head.weight", () => {
  it("loads tied and warns through onWarning when the stored lm_head differs from the embedding", async () => {
    const dir = await tiedWithHead(1);
    const warnings: string[] = [];
    const device = new CpuBackend();
    const model = await loadModel(dir, { device, onWarning: (w) => warnings.push(w) });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/lm_head\.weight/);
    expect(warnings[0]).toMatch(/tie_word_embeddings/);
    expect(warnings[0]).toContain(join(dir, "model.safetensors"));
    // Tied as transformers ties: the head is the embedding, not the stored lm_head.
    expect(model.lm_head).toBe(model.embed_tokens);
    model.dispose();
  });

  it("loads without a warning when the stored lm_head equals the embedding", async () => {
    const warnings: string[] = [];
    const model = await loadModel(await tiedWithHead(0), { device: new CpuBackend(), onWarning: (w) => warnings.push(w) });
    expect(warnings).toEqual([]);
    model.dispose();
  });

  it("the CLI prints the warning on stderr and completes", async () => {
    const dir = await tiedWithHead(1);
    const r = runCli(["logits", "--model", dir, "--ids", "5,17", "--device", "cpu"]);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/warning: .*lm_head\.weight.*differs/);
  });
});
