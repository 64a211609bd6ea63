import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { PAPER_PROMPTS_FILE } from "../src/eval/default_data.ts";
import { sha256SafetensorsHeader, type Provenance } from "../src/io/provenance.ts";
import { baseModelMismatch } from "../src/cli/model.ts";
import { scheduleNote } from "../src/lora/trainer.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { ROOT, runCli } from "./helpers/cli.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

/**
 * Every results file says what ran, on what and from which files: the hashes are checked against
 * SHA-256 of the files' bytes computed here, the versions against the packages' own package.json.
 * And the warnings a run likely did not mean: a schedule that trains nothing, an adapter made
 * for another model.
 */
const tmp = mkdtempSync(join(tmpdir(), "qalign-prov-"));
const TINY = await ensureTinyModel();
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const hex = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");
const fileHash = (file: string) => hex(readFileSync(file));
/** SHA-256 of a safetensors file's first 8 + N bytes (N: the u64 it starts with). */
const headerHash = (file: string) => {
  const b = readFileSync(file);
  return hex(b.subarray(0, 8 + Number(b.readBigUInt64LE(0))));
};
const version = (pkg: string) => (JSON.parse(readFileSync(join(ROOT, "node_modules", pkg, "package.json"), "utf8")) as { version: string }).version;

/** The built-in sample's SNLI English file, as a data folder of its own. */
function englishData(): string {
  const dir = join(tmp, "data");
  const sample = JSON.parse(readFileSync(join(ROOT, "src", "eval", "sample_data.json"), "utf8")) as { files: Record<string, unknown> };
  mkdirSync(join(dir, "snli"), { recursive: true });
  writeFileSync(join(dir, "snli", "snli_en600_test.json"), JSON.stringify(sample.files["snli/snli_en600_test.json"], null, 2));
  return dir;
}

describe("provenance", () => {
  it("eval --out records versions, commit, device, the model's and every data file's hashes, and the times", () => {
    const data = englishData();
    const out = join(tmp, "eval");
    const before = new Date();
    const r = runCli(["eval", "--model", TINY, "--langs", "en", "--limit", "3", "--shots", "0", "--protocol", "qalign", "--data", data, "--out", out, "--device", "cpu"]);
    expect(r.status, r.stderr).toBe(0);
    const p = (JSON.parse(readFileSync(join(out, "results.json"), "utf8")) as { provenance: Provenance }).provenance;
    expect(p.qalign).toBe((JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version);
    expect(p.node).toBe(process.version);
    expect(p.packages).toEqual({ webgpu: version("webgpu"), "@huggingface/tokenizers": version("@huggingface/tokenizers") });
    expect(p.git!.commit).toBe(execFileSync("git", ["-C", ROOT, "rev-parse", "HEAD"], { encoding: "utf8" }).trim());
    expect(p.device).toEqual({ name: "cpu" });
    expect(p.model).toEqual({
      dir: TINY,
      stored: ["F32"],
      loaded: "as stored",
      sha256: { "config.json": fileHash(join(TINY, "config.json")), "model.safetensors (header)": headerHash(join(TINY, "model.safetensors")) },
    });
    expect(p.adapter).toBeNull();
    const en = join(data, "snli", "snli_en600_test.json");
    expect(p.data).toEqual({ source: `folder ${data}`, sha256: { [en]: fileHash(en), [PAPER_PROMPTS_FILE]: fileHash(PAPER_PROMPTS_FILE) } });
    expect(new Date(p.started).getTime()).toBeGreaterThanOrEqual(before.getTime() - 1000);
    expect(new Date(p.finished!).getTime()).toBeGreaterThanOrEqual(new Date(p.started).getTime());
  });

  it("pca records it in summary.json", () => {
    const out = join(tmp, "pca");
    const r = runCli(["pca", "--model", TINY, "--task", "snli", "--langs", "en,sw", "--limit", "3", "--protocol", "qalign", "--shots", "0", "--data", "sample", "--out", out, "--device", "cpu"]);
    expect(r.status, r.stderr).toBe(0);
    const p = (JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as { provenance: Provenance }).provenance;
    expect(p.model!.sha256["config.json"]).toBe(fileHash(join(TINY, "config.json")));
    const sample = join(ROOT, "src", "eval", "sample_data.json");
    expect(p.data).toEqual({ source: "built-in sample (src/eval/sample_data.json)", sha256: { [sample]: fileHash(sample), [PAPER_PROMPTS_FILE]: fileHash(PAPER_PROMPTS_FILE) } });
    expect(p.finished).not.toBeNull();
  });

  it("a sharded checkpoint is identified by its index and every shard's header", async () => {
    const { provenance } = await import("../src/cli/provenance.ts");
    const { cpuDevice } = await import("../src/kernels/devices.ts");
    const dir = fixtureDir("qwen2-sharded");
    const p = await provenance({ started: new Date(), finished: null, device: cpuDevice(), modelDir: dir, dtype: "bf16" });
    expect(p.model!.loaded).toBe("bf16");
    expect(p.model!.sha256).toEqual({
      "config.json": fileHash(join(dir, "config.json")),
      "model.safetensors.index.json": fileHash(join(dir, "model.safetensors.index.json")),
      "model-00001-of-00002.safetensors (header)": headerHash(join(dir, "model-00001-of-00002.safetensors")),
      "model-00002-of-00002.safetensors (header)": headerHash(join(dir, "model-00002-of-00002.safetensors")),
    });
    expect(p.finished).toBeNull();
  });

  it("an adapter made for another model is warned about, and still applied", () => {
    const model = join(tmp, "other-model");
    cpSync(fixtureDir("llama-untied"), model, { recursive: true });
    const adapter = join(fixtureDir("llama-untied"), "..", "..", "lora", "llama-untied");
    const r = runCli(["logits", "--model", model, "--ids", "1,2", "--adapter", adapter, "--device", "cpu"]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(`warning: adapter ${adapter} was trained on "test/fixtures/models/llama-untied" (its base_model_name_or_path), which is not ${model}`);
  });
});

describe("warnings", () => {
  it("a schedule whose only step has lr 0 trains nothing; a longer one notes its idle first step", () => {
    expect(scheduleNote(5e-5, 1, 1)).toMatch(/^warning: 1 optimizer step, at learning rate 0/);
    expect(scheduleNote(5e-5, 10, 1)).toBe("step 1 runs at learning rate 0: the linear warmup over 1 step(s) starts at 0, as HF's scheduler does");
    expect(scheduleNote(5e-5, 10, 0)).toBeNull(); // no warmup: step 1 runs at the peak
  });

  it("base_model_name_or_path agrees with the same folder, a Hub id of the folder's name, or config.json's _name_or_path", async () => {
    const dir = join(tmp, "names");
    const adapter = (base: string | null) => {
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ peft_type: "LORA", base_model_name_or_path: base }));
      return dir;
    };
    const model = fixtureDir("llama-untied");
    expect(await baseModelMismatch(adapter(model), model)).toBeNull();
    expect(await baseModelMismatch(adapter("someone/llama-untied"), model)).toBeNull();
    expect(await baseModelMismatch(adapter(null), model)).toBeNull();
    expect(await baseModelMismatch(adapter("Qwen/Qwen1.5-1.8B"), model)).toMatch(/was trained on "Qwen\/Qwen1\.5-1\.8B"/);
  });
});

describe("sha256SafetensorsHeader", () => {
  it("refuses a header length beyond the file's size before allocating it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "qalign-header-"));
    const file = join(dir, "model.safetensors");
    const bytes = Buffer.alloc(16);
    bytes.writeBigUInt64LE(2n ** 50n, 0); // a petabyte header in a 16-byte file
    writeFileSync(file, bytes);
    await expect(sha256SafetensorsHeader(file)).rejects.toThrow(`${file}: shorter than its ${2 ** 50}-byte safetensors header`);
    rmSync(dir, { recursive: true, force: true });
  });
});
