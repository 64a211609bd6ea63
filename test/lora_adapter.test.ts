import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel } from "../src/model/load.ts";
import { Linear, type LlamaModel } from "../src/model/llama.ts";
import { openSafetensors, writeSafetensors } from "../src/model/safetensors.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { runCli } from "./helpers/cli.ts";
import { expectClose } from "./helpers/close.ts";
import { expectCheckpointError } from "./helpers/errors.ts";
import { fixtureDir, maxAbs } from "./helpers/fixtures.ts";

/**
 * LoRA modules, the PEFT adapter layout (save, load, validation) and merging. Models: the
 * committed fixture llama-untied (vocab 320) and its golden adapter (nonzero A and B,
 * scripts/make_lora_fixtures.py), and the tiny checkpoint for a merged export with tokenizer.
 */
const cpu = qa.cpuDevice();
const tmp = mkdtempSync(join(tmpdir(), "qalign-lora-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const GOLDEN = join(import.meta.dirname, "fixtures", "lora", "llama-untied");
const IDS = [5, 17, 42, 7, 300, 2, 99, 1];

async function fixtureModel(): Promise<LlamaModel> {
  return loadModel(fixtureDir("llama-untied"), { device: cpu });
}

async function logits(model: LlamaModel, ids = IDS): Promise<Float32Array> {
  const input = qa.tensor(Int32Array.from(ids), { device: cpu, shape: [1, ids.length] });
  return (await qa.noGrad(() => model.forward(input).logits!).data()) as Float32Array;
}

/** A copy of the golden adapter with adapter_config.json fields replaced (undefined deletes). */
function adapterWith(name: string, patch: Record<string, unknown>): string {
  const dir = join(tmp, name);
  cpSync(GOLDEN, dir, { recursive: true });
  const config = { ...JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8")), ...patch };
  writeFileSync(join(dir, "adapter_config.json"), JSON.stringify(config));
  return dir;
}

describe("applyLora", () => {
  test("wraps the targets, freezes the base, initialises A in ±1/sqrt(in) and B = 0: outputs unchanged", async () => {
    const model = await fixtureModel();
    const before = await logits(model);
    const adapter = qa.applyLora(model, { seed: 3 });
    expect([...adapter.modules.keys()]).toEqual([
      "model.layers.0.self_attn.q_proj",
      "model.layers.0.self_attn.v_proj",
      "model.layers.1.self_attn.q_proj",
      "model.layers.1.self_attn.v_proj",
    ]);
    expect(adapter.params.every((p) => p.requiresGrad)).toBe(true);
    expect([...model.namedWeights().values()].some((w) => w.requiresGrad)).toBe(false);
    for (const m of adapter.modules.values()) {
      expect(m.lora_A.shape).toEqual([8, 64]);
      expect(m.lora_B.shape).toEqual([m.base.weight.shape[0], 8]);
      expect(m.scaling).toBe(2);
      const A = await m.lora_A.data();
      expect(maxAbs(A)).toBeLessThanOrEqual(1 / 8);
      expect(maxAbs(A)).toBeGreaterThan(0.1); // 512 draws of U(-1/8, 1/8) reach near the bound
      expect(maxAbs(await m.lora_B.data())).toBe(0);
    }
    expect(await logits(model)).toEqual(before);
    const again = qa.applyLora(await fixtureModel(), { seed: 3 });
    expect(await again.params[0]!.data()).toEqual(await adapter.params[0]!.data());
  });

  test("target_modules follow PEFT: suffixes, a full-match regex, all-linear; unknown names fail", async () => {
    const paths = async (t: string[] | string) => [...qa.applyLora(await fixtureModel(), { target_modules: t }).modules.keys()];
    expect(await paths(["self_attn.o_proj", "down_proj"])).toEqual([
      "model.layers.0.self_attn.o_proj",
      "model.layers.0.mlp.down_proj",
      "model.layers.1.self_attn.o_proj",
      "model.layers.1.mlp.down_proj",
    ]);
    expect(await paths(String.raw`model\.layers\.1\..*_proj`)).toHaveLength(7);
    expect(await paths("all-linear")).toHaveLength(14);
    const model = await fixtureModel();
    expect(() => qa.applyLora(model, { target_modules: ["q_proj", "qproj"] })).toThrow(/"qproj" matches no module/);
    expect(qa.loraModules(model).size).toBe(0); // a failed call leaves the model untouched
    qa.applyLora(model);
    expect(() => qa.applyLora(model)).toThrow(/already has LoRA modules/);
  });

  test("an r above a target's min(in_features, out_features) is refused before any module is swapped", async () => {
    const model = await fixtureModel();
    // v_proj is [num_key_value_heads * head_dim, hidden_size] = [2 * 16, 64]: rank at most 32; q_proj [64, 64] takes 64.
    expect(() => qa.applyLora(model, { r: 33 })).toThrow(
      new RangeError("applyLora: LoRA r 33 is above 32, min(in_features, out_features) of model.layers.0.self_attn.v_proj [32, 64]: a LoRA update there has rank at most 32"),
    );
    expect(qa.loraModules(model).size).toBe(0);
    expect(qa.applyLora(model, { r: 64, target_modules: ["q_proj"] }).modules.size).toBe(2);
  });

  test("rsLoRA scales by alpha / sqrt(r)", () => {
    expect(qa.loraScaling({ r: 16, lora_alpha: 8, use_rslora: true })).toBe(2);
    expect(qa.loraScaling({ r: 16, lora_alpha: 8, use_rslora: false })).toBe(0.5);
  });

  test("dropout acts only with an Rng (training) and only on the LoRA branch", async () => {
    const W = qa.randn([6, 5], { device: cpu, seed: 1 });
    const layer = new qa.LoraLinear(new Linear(W), qa.randn([2, 5], { device: cpu, seed: 2 }), qa.zeros([6, 2], { device: cpu }), 1, 0.5);
    const x = qa.randn([3, 5], { device: cpu, seed: 3 });
    layer.rng = new qa.Rng(0);
    // B = 0: whatever the mask, the output is the base layer's.
    expect(await layer.forward(x).data()).toEqual(await qa.linear(x, W).data());
  });
});

describe("PEFT layout", () => {
  test("adapter_config.json has exactly PEFT 0.12's LoraConfig fields and bytes; tensors have PEFT's keys", async () => {
    const model = await fixtureModel();
    const adapter = await qa.loadAdapter(model, GOLDEN);
    const out = join(tmp, "saved");
    await qa.saveAdapter(adapter, out, "test/fixtures/models/llama-untied");
    const text = readFileSync(join(out, "adapter_config.json"), "utf8");
    // The fixture was written by json.dumps(indent=2, sort_keys=True), PEFT's own writer. (Only
    // integral floats would differ: Python writes 0.0 where JavaScript writes 0.)
    expect(text).toBe(readFileSync(join(GOLDEN, "adapter_config.json"), "utf8"));
    expect(Object.keys(JSON.parse(text))).toEqual([
      "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode",
      "init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha",
      "lora_dropout", "megatron_config", "megatron_core", "modules_to_save", "peft_type", "r", "rank_pattern", "revision",
      "target_modules", "task_type", "use_dora", "use_rslora",
    ]);
    const f = await openSafetensors(join(out, "adapter_model.safetensors"));
    expect(f.metadata).toEqual({ format: "pt" });
    expect(f.names()).toContain("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
    expect(f.info("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight")).toMatchObject({ dtype: "F32", shape: [32, 4] });
    expect(f.names().every((n) => /^base_model\.model\.model\.layers\.\d\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight$/.test(n))).toBe(true);
    await f.close();
  });

  test("a saved adapter reloads to identical logits", async () => {
    const tuned = await fixtureModel();
    const dir = join(tmp, "roundtrip");
    await qa.saveAdapter(await qa.loadAdapter(tuned, GOLDEN), dir, null);
    const reloaded = await fixtureModel();
    await qa.loadAdapter(reloaded, dir);
    const base = await logits(await fixtureModel());
    const want = await logits(tuned);
    expect(maxAbs(want.map((x, i) => x - base[i]!))).toBeGreaterThan(0.1); // the adapter matters
    expect(await logits(reloaded)).toEqual(want);
  });

  test("bad adapter configs are rejected naming the file and field", async () => {
    const model = await fixtureModel();
    const cases: [Record<string, unknown>, string][] = [
      [{ peft_type: "IA3" }, 'field "peft_type" = "IA3"'],
      [{ task_type: "SEQ_CLS" }, 'field "task_type"'],
      [{ r: 0 }, 'field "r" = 0'],
      [{ lora_dropout: 1 }, 'field "lora_dropout"'],
      [{ target_modules: [] }, 'field "target_modules"'],
      [{ rank_pattern: { q_proj: 8 } }, 'field "rank_pattern"'],
      [{ alpha_pattern: { q_proj: 8 } }, 'field "alpha_pattern"'],
      [{ use_dora: true }, 'field "use_dora" = true: not supported'],
      [{ bias: "all" }, 'field "bias"'],
      [{ modules_to_save: ["lm_head"] }, 'field "modules_to_save"'],
      [{ target_modules: ["lm_head"] }, 'target module "lm_head" matches no module'],
      // k_proj is [num_key_value_heads * head_dim, hidden_size] = [2 * 16, 64]: B A has rank <= 32.
      [{ r: 33 }, 'field "r" = 33: above 32, min(in_features, out_features) of model.layers.0.self_attn.k_proj [32, 64]: a LoRA update there has rank at most 32'],
    ];
    for (const [i, [patch, message]] of cases.entries()) {
      await expectCheckpointError(qa.loadAdapter(model, adapterWith(`bad-${i}`, patch)), "adapter_config.json", message);
    }
    const notJson = adapterWith("not-json", {});
    writeFileSync(join(notJson, "adapter_config.json"), "{r: 8");
    await expectCheckpointError(qa.loadAdapter(model, notJson), "adapter_config.json", "cannot read");
    expect(qa.loraModules(model).size).toBe(0);
  });

  test("an unknown adapter_config key is ignored with one warning naming the file and the key, as PEFT does; known ones warn nothing", async () => {
    const warnings: string[] = [];
    const dir = adapterWith("unknown-key", { brand_new_key: 1, peft_version: "0.17.1" });
    const adapter = await qa.loadAdapter(await fixtureModel(), dir, undefined, (w) => warnings.push(w));
    expect(warnings).toEqual([
      `${join(dir, "adapter_config.json")}: ignored "brand_new_key", not a LoraConfig field qalign knows (PEFT ignores the fields of a newer version too); if a newer PEFT wrote it, check that the adapter's output is as expected`,
    ]);
    expect(adapter.config.r).toBe(4); // the rest of the file as without the key
    const quiet: string[] = [];
    await qa.loadAdapter(await fixtureModel(), GOLDEN, undefined, (w) => quiet.push(w));
    expect(quiet).toEqual([]);
  });

  test("lora_dropout has one range, [0, 1), on the command line, in applyLora and in adapter_config.json", async () => {
    const tiny = await ensureTinyModel();
    for (const [value, ok] of [["0.995", true], ["1", false]] as const) {
      const r = runCli(["train", "--model", tiny, "--data", join(tmp, "no-such-data.json"), "--out", join(tmp, `dropout-${value}`), "--lora-dropout", value, "--device", "cpu"], 60_000);
      expect(r.status).toBe(1);
      // 0.995 passes the range and fails on the missing data next; 1 fails on the range.
      expect(r.stderr.trim().split("\n").at(-1)).toMatch(ok ? /no-such-data\.json/ : /^qalign: train: --lora-dropout must be a number in \[0, 1\), got "1"$/);
    }
    const model = await fixtureModel();
    expect(() => qa.applyLora(model, { lora_dropout: 1 })).toThrow(new RangeError("lora_dropout must be in [0, 1), got 1"));
    expect(qa.applyLora(model, { lora_dropout: 0.995 }).config.lora_dropout).toBe(0.995);
    await expectCheckpointError(qa.loadAdapter(await fixtureModel(), adapterWith("dropout-1", { lora_dropout: 1 })), 'field "lora_dropout" = 1: must be a number in [0, 1)');
  });

  test("every adapter_config key that changes the computation, set away from its default, is implemented or refused by name", async () => {
    // Non-default values of each listed key, as PEFT writes them.
    const examples: Record<string, unknown[]> = {
      r: [16],
      lora_alpha: [32],
      use_rslora: [true],
      target_modules: [["q_proj"], ".*v_proj"],
      lora_dropout: [0.1],
      fan_in_fan_out: [true],
      bias: ["all", "lora_only"],
      lora_bias: [true],
      use_dora: [true],
      modules_to_save: [["lm_head"]],
      layers_to_transform: [[0]],
      layer_replication: [[[0, 1], [0, 2]]],
      exclude_modules: [["k_proj"]],
      rank_pattern: [{ q_proj: 8 }],
      alpha_pattern: [{ q_proj: 8 }],
      init_lora_weights: ["pissa", "pissa_niter_16", "olora", "corda", "loftq"],
      loftq_config: [{ loftq_bits: 4, loftq_iter: 1 }],
      alora_invocation_tokens: [[151644, 77091]],
      use_qalora: [true],
      use_bdlora: [true],
      trainable_token_indices: [[0, 1], { embed_tokens: [5] }],
      target_parameters: [["mlp.experts.down_proj"]],
    };
    const refused = qa.REFUSED_ADAPTER_KEYS.map(([key]) => key);
    expect(Object.keys(examples).sort()).toEqual([...qa.IMPLEMENTED_ADAPTER_KEYS, ...refused].sort());
    let n = 0;
    for (const key of qa.IMPLEMENTED_ADAPTER_KEYS) {
      for (const value of examples[key]!) {
        const config = (await qa.readAdapterConfig(adapterWith(`key-${n++}`, { [key]: value }))) as unknown as Record<string, unknown>;
        expect(config[key], key).toEqual(value);
      }
    }
    for (const key of refused) {
      for (const value of examples[key]!) {
        await expectCheckpointError(qa.readAdapterConfig(adapterWith(`key-${n++}`, { [key]: value })), "adapter_config.json", `field "${key}" = ${JSON.stringify(value)}: not supported`);
      }
    }
    // The values that only choose the initialisation load as plain LoRA.
    for (const value of [true, false, "gaussian", "eva", "orthogonal"]) {
      expect((await qa.readAdapterConfig(adapterWith(`init-${String(value)}`, { init_lora_weights: value }))).r).toBe(4);
    }
  });

  test("missing, unexpected and mis-shaped tensors are named with file, key and shapes", async () => {
    const model = await fixtureModel();
    const tensors = async (dir: string) => {
      const f = await openSafetensors(join(dir, "adapter_model.safetensors"));
      const out: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
      for (const n of f.names()) out[n] = { dtype: "F32", shape: f.info(n).shape, data: await f.readF32(n) };
      await f.close();
      return out;
    };
    const key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    const write = async (name: string, edit: (t: Awaited<ReturnType<typeof tensors>>) => void) => {
      const dir = adapterWith(name, {});
      const t = await tensors(dir);
      edit(t);
      await writeSafetensors(join(dir, "adapter_model.safetensors"), t, { format: "pt" });
      return dir;
    };
    const file = "adapter_model.safetensors";
    await expectCheckpointError(qa.loadAdapter(model, await write("missing", (t) => delete t[key])), file, `"${key}"`, "missing (expected shape [32,4])");
    await expectCheckpointError(
      qa.loadAdapter(model, await write("extra", (t) => (t["base_model.model.lm_head.lora_A.weight"] = { dtype: "F32", shape: [1], data: new Float32Array(1) }))),
      file,
      '"base_model.model.lm_head.lora_A.weight"',
      "unexpected tensor",
    );
    await expectCheckpointError(
      qa.loadAdapter(model, await write("shape", (t) => (t[key] = { dtype: "F32", shape: [4, 32], data: new Float32Array(128) }))),
      file,
      `"${key}"`,
      "shape [4,32]",
      "imply [32,4]",
    );
    // A rank that disagrees with the config shows up as a shape mismatch of every tensor.
    await expectCheckpointError(qa.loadAdapter(model, adapterWith("rank", { r: 8 })), file, "shape [4,64]", "imply [8,64]");
    const pickled = adapterWith("pickled", {});
    rmSync(join(pickled, file));
    writeFileSync(join(pickled, "adapter_model.bin"), "");
    await expectCheckpointError(qa.loadAdapter(model, pickled), file, "adapter_model.bin is a pickle");
    expect(qa.loraModules(model).size).toBe(0);
  });

  test("qalign loss --adapter prints the adapter's loss", async () => {
    const model = await fixtureModel();
    await qa.loadAdapter(model, GOLDEN);
    const { loss } = await qa.meanTargetLoss(model, [{ ids: IDS, promptLen: 3 }], 1);
    const { status, stdout } = runCli(["loss", "--model", fixtureDir("llama-untied"), "--adapter", GOLDEN, "--ids", IDS.join(","), "--prompt-len", "3", "--device", "cpu"]);
    expect(status).toBe(0);
    expect(JSON.parse(stdout)).toEqual({ loss });
  });
});

describe("merging", () => {
  test("merged weights give the logits of base + adapter; the exported folder loads with its tokenizer", async () => {
    const dir = await ensureTinyModel();
    const model = await loadModel(dir, { device: cpu });
    const adapter = qa.applyLora(model, { target_modules: "all-linear", seed: 1 });
    // Nonzero B, as after training.
    for (const m of adapter.modules.values()) cpu.assign(m.lora_B, qa.randn(m.lora_B.shape, { device: cpu, seed: 5, std: 0.05 }));
    const ids = [1, 415, 2936, 9060, 285, 1142];
    const want = await logits(model, ids);
    expect(qa.mergeLora(model)).toBe(14);
    expect(qa.loraModules(model).size).toBe(0);
    const out = join(tmp, "merged");
    await qa.saveMergedModel(model, dir, out);
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]) expect(existsSync(join(out, f)), f).toBe(true);
    const got = await logits(await loadModel(out, { device: cpu }), ids);
    // W + s B A rounded to f32 once vs the two-branch sum: both are within a few f32 ulps of
    // the exact value, so logits agree to ~1e-6 relative; 1e-5 x max |logit| is the bound.
    expectClose(got, want, { atol: 1e-5 * maxAbs(want), rtol: 0 }, "merged model's logits");
    await expect(qa.saveMergedModel(model, dir, out)).rejects.toThrow(/not empty/);
  });
});
