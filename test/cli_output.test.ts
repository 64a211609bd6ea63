import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { getDevice } from "../src/kernels/devices.ts";
import { noGrad } from "../src/tensor/autograd.ts";
import { tensor } from "../src/tensor/ops/create.ts";
import { Rng } from "../src/tensor/random.ts";
import { parseConfig } from "../src/model/config.ts";
import { expectedWeights } from "../src/model/params.ts";
import { loadModel } from "../src/model/load.ts";
import { writeSafetensors, type TensorToWrite } from "../src/model/safetensors.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { ROOT, runCli } from "./helpers/cli.ts";

/**
 * Results on stdout reach a pipe, a slow reader and a file whole, and the command exits only
 * after the last byte: Node queues what a full pipe (64 KiB on Linux) does not take at once,
 * and an exit with that queue pending would cut the JSON short with status 0.
 */
const tmp = mkdtempSync(join(tmpdir(), "qalign-out-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Qwen2's vocabulary size: 151,936 logits per token, about 1.5 MB of JSON per token. */
const V = 151_936;
const CONFIG = {
  model_type: "qwen2", vocab_size: V, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1,
  num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 64, tie_word_embeddings: true,
};

/** A random 1-layer checkpoint with a full Qwen2 vocabulary (4.9 MB of f32 weights). */
async function wideVocabModel(): Promise<string> {
  const dir = join(tmp, "qwen2-wide-vocab");
  mkdirSync(dir);
  writeFileSync(join(dir, "config.json"), JSON.stringify(CONFIG));
  const rng = new Rng(7);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, shape] of expectedWeights(parseConfig(CONFIG, "config.json"))) {
    const data = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal());
    tensors[name] = { dtype: "F32", shape, data };
  }
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  return dir;
}

const MODEL = await wideVocabModel();
const IDS = [0, 151_935, 7];
const CLI = `"${process.execPath}" --import tsx "${join(ROOT, "src", "cli", "main.ts")}" logits --model "${MODEL}" --ids ${IDS.join(",")} --device cpu`;

/** The same logits computed in this process: what every destination must receive in full. */
async function expectedLogits(): Promise<number[][]> {
  const model = await loadModel(MODEL, { device: await getDevice("cpu") });
  const flat = await noGrad(() => model.forward(tensor(Int32Array.from(IDS), { device: model.device, shape: [1, IDS.length] })).logits!).data();
  return IDS.map((_, t) => Array.from(flat.subarray(t * V, (t + 1) * V)));
}
const EXPECTED = await expectedLogits();

/** Runs `script` in bash with pipefail, so a failing qalign fails the pipeline. */
function sh(script: string) {
  return spawnSync("bash", ["-c", `set -o pipefail; ${script}`], { cwd: ROOT, encoding: "utf8", timeout: 120_000, maxBuffer: 256 << 20 });
}

function expectComplete(file: string) {
  const text = readFileSync(file, "utf8");
  expect(text.length).toBeGreaterThan(3 * 65_536);
  expect(text.endsWith("}\n")).toBe(true);
  const { logits } = JSON.parse(text) as { logits: number[][] };
  expect(logits.map((row) => row.length)).toEqual([V, V, V]);
  // JSON prints each float32 as the shortest double that rounds to it: exact round trip.
  expect(logits).toEqual(EXPECTED);
}

describe("qalign logits on stdout, 151,936-token vocabulary", () => {
  it("reaches a slow reader through a pipe in full, and exits 0 only after the last byte", () => {
    const out = join(tmp, "slow.json");
    // The reader starts 2 s late: qalign must wait for it rather than exit with the pipe full.
    const r = sh(`${CLI} | (sleep 2; cat > "${out}")`);
    expect(r.stderr).not.toMatch(/qalign: /);
    expect(r.status).toBe(0);
    expectComplete(out);
  });

  it("reaches a consumer that parses the JSON as it reads", () => {
    const r = sh(`${CLI} | "${process.execPath}" -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).logits.map((r) => r.length).join(",")))'`);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(`${V},${V},${V}`);
  });

  it("reaches a file in full", () => {
    const out = join(tmp, "file.json");
    const r = sh(`${CLI} > "${out}"`);
    expect(r.status).toBe(0);
    expectComplete(out);
  });
});

describe("--out is checked before any compute", () => {
  const SAMPLE = (JSON.parse(readFileSync(join(ROOT, "src", "eval", "sample_data.json"), "utf8")) as { files: Record<string, unknown[]> }).files;
  const questions = join(tmp, "snli_zh10k_train_question.json");
  writeFileSync(questions, JSON.stringify(SAMPLE["snli/snli_zh10k_train_question.json"]));
  const blocker = join(tmp, "a-file");
  writeFileSync(blocker, "not a folder");
  const bad = join(blocker, "out"); // mkdir fails: ENOTDIR
  const TINY = ensureTinyModel();
  const probe = ["--task", "snli", "--langs", "en", "--protocol", "qalign", "--limit", "2", "--shots", "0", "--data", "sample", "--device", "cpu"];
  const commands: Record<string, string[]> = {
    train: ["--data", questions, "--max-samples", "8", "--epochs", "1", "--device", "cpu"],
    eval: probe,
    align: [...probe, "--max-train-samples", "8", "--epochs", "1"],
    lens: probe,
    pca: probe,
  };
  for (const [command, args] of Object.entries(commands)) {
    it(`${command} refuses an unwritable --out, naming it, before loading the model`, async () => {
      const r = runCli([command, "--model", await TINY, ...args, "--out", bad]);
      expect(r.stderr.trim().split("\n").at(-1)).toBe(`qalign: ${command}: --out ${bad} is not a writable folder (ENOTDIR)`);
      expect(r.status).toBe(1);
      expect(r.stderr).not.toMatch(/optimizer steps|base model|^en: /m); // no training, probing or evaluation ran
    });
  }
});

describe("a reader that closes stdout early (| head)", () => {
  const TINY = ensureTinyModel();
  const qalign = `"${process.execPath}" --import tsx "${join(ROOT, "src", "cli", "main.ts")}"`;
  // `yes | head -c 5` is the Unix model: the writer stops at the first write the reader refuses,
  // silently. qalign does the same, with status 0 (pipefail would otherwise fail the pipeline the
  // reader cut short on purpose); head's 5 bytes are the first 5 of the full output.
  it.each([
    ["logits", ["--ids", "1,2,3"]],
    ["generate", ["--prompt", "Hello", "--max-new-tokens", "50"]],
  ])("%s | head -c 5 stops quietly, status 0, no stack", async (command, args) => {
    const model = await TINY;
    const cmd = `${qalign} ${command} --model "${model}" ${args.join(" ")} --device cpu --quiet`;
    const full = sh(cmd);
    expect(full.status).toBe(0);
    const r = sh(`${cmd} | head -c 5`);
    expect(r.stderr).not.toMatch(/EPIPE|node:events|at /);
    expect(r.stderr).toBe(full.stderr); // the notices of a full run, nothing more
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(full.stdout.slice(0, 5));
  });
});
