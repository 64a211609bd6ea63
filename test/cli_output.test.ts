import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
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

  // Linux's /proc refuses new names with ENOENT; Node 20's recursive mkdir would retry forever.
  it("refuses an --out under /proc at once instead of hanging", async () => {
    const r = runCli(["train", "--model", await TINY, ...commands["train"]!, "--out", "/proc/qalign-out"], 60_000);
    expect(r.stderr.trim().split("\n").at(-1)).toBe("qalign: train: --out /proc/qalign-out is not a writable folder (ENOENT)");
    expect(r.status).toBe(1);
  });
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

describe("train --out that holds a finished adapter", () => {
  const SAMPLE = (JSON.parse(readFileSync(join(ROOT, "src", "eval", "sample_data.json"), "utf8")) as { files: Record<string, unknown[]> }).files;
  const questions = join(tmp, "train_pairs.json");
  writeFileSync(questions, JSON.stringify(SAMPLE["snli/snli_zh10k_train_question.json"]));
  const out = join(tmp, "adapter-r8");
  const train = async (...extra: string[]) =>
    runCli(["train", "--model", await ensureTinyModel(), "--data", questions, "--max-train-samples", "8", "--epochs", "1", "--device", "cpu", "--quiet", "--out", out, ...extra]);
  const weights = () => readFileSync(join(out, "adapter_model.safetensors"));
  const rank = () => (JSON.parse(readFileSync(join(out, "adapter_config.json"), "utf8")) as { r: number }).r;

  it("is refused, kept on --resume with the same settings, refused naming each other setting, replaced on --overwrite", async () => {
    const first = await train();
    expect(first.status, first.stderr).toBe(0);
    const finished = weights();
    expect(rank()).toBe(8);

    const again = await train();
    expect(again.status).toBe(1);
    expect(again.stderr).toContain(`train: --out ${out} holds a finished adapter`);
    expect(weights().equals(finished)).toBe(true);

    const resumed = await train("--resume");
    expect(resumed.status, resumed.stderr).toBe(0);
    expect(resumed.stderr).toContain("holds a finished adapter with these settings already; nothing to train");
    expect(resumed.stderr).not.toMatch(/optimizer steps|from scratch/);
    expect(JSON.parse(resumed.stdout)).toEqual(JSON.parse(first.stdout)); // the first run's result line
    expect(weights().equals(finished)).toBe(true);

    const other = await train("--resume", "--lr", "0.5", "--r", "4");
    expect(other.status).toBe(1);
    expect(other.stderr).toContain("holds a run with other settings (lora.r was 8, now 4; hyper.lr was 0.00005, now 0.5)");
    expect(weights().equals(finished)).toBe(true);

    const replaced = await train("--overwrite", "--r", "4");
    expect(replaced.status, replaced.stderr).toBe(0);
    expect(rank()).toBe(4);
  }, 300_000);

  it("refuses a folder that holds something else, naming it", async () => {
    // A model folder of its own (not the shared tiny model's, which a regression would fill).
    const model = join(tmp, "a-model-folder");
    mkdirSync(model);
    for (const f of ["config.json", "model.safetensors", "tokenizer.json"]) writeFileSync(join(model, f), readFileSync(join(await ensureTinyModel(), f)));
    const r = runCli(["train", "--model", model, "--data", questions, "--max-train-samples", "8", "--epochs", "1", "--device", "cpu", "--out", model]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split("\n").at(-1)).toBe(`qalign: train: --out ${model} is not empty and holds no earlier train run (config.json, model.safetensors, tokenizer.json); choose an empty or new folder`);
  });
});

describe("train --resume from a damaged checkpoint", () => {
  it("names trainer_state.json and what to remove", async () => {
    const SAMPLE = (JSON.parse(readFileSync(join(ROOT, "src", "eval", "sample_data.json"), "utf8")) as { files: Record<string, unknown[]> }).files;
    const questions = join(tmp, "resume_pairs.json");
    writeFileSync(questions, JSON.stringify(SAMPLE["snli/snli_zh10k_train_question.json"]));
    const out = join(tmp, "truncated-checkpoint");
    const checkpoint = join(out, "checkpoint");
    mkdirSync(checkpoint, { recursive: true });
    writeFileSync(join(checkpoint, "trainer_state.json"), '{"version": 1, "step": 4, "ep'); // cut short, as a full disk leaves it
    const r = runCli(["train", "--model", await ensureTinyModel(), "--data", questions, "--max-train-samples", "8", "--epochs", "1", "--device", "cpu", "--out", out, "--resume"]);
    expect(r.status).toBe(1);
    const file = join(checkpoint, "trainer_state.json");
    expect(r.stderr.trim().split("\n").at(-1)).toMatch(new RegExp(`${file.replace(/[.]/g, "\\.")}.*cannot be read back \\(.*\\); remove ${checkpoint.replace(/[.]/g, "\\.")} to train again from the start`));
  });
});

describe("lens and pca --out hold one run", () => {
  const probe = ["--task", "snli", "--langs", "en", "--protocol", "qalign", "--limit", "2", "--shots", "0", "--data", "sample", "--device", "cpu", "--quiet"];
  const interp = async (command: string, out: string, ...extra: string[]) => runCli([command, "--model", await ensureTinyModel(), ...probe, "--out", out, ...extra]);

  it("pca into its own earlier run replaces it: no file of the earlier run stays", async () => {
    const out = join(tmp, "pca-rerun");
    const first = await interp("pca", out, "--layers", "0,1,2");
    expect(first.status, first.stderr).toBe(0);
    expect(readdirSync(out)).toContain("pca_layer2.svg");
    const second = await interp("pca", out, "--layers", "0");
    expect(second.status, second.stderr).toBe(0);
    // What the folder holds is exactly what the second run says it wrote.
    const { files } = JSON.parse(second.stdout) as { files: string[] };
    expect(readdirSync(out).sort()).toEqual(files.map((f) => basename(f)).sort());
    expect(files.map((f) => basename(f))).not.toContain("pca_layer2.svg");
  }, 120_000);

  it.each([
    ["lens", ["config.json", "model.safetensors"]], // a model folder
    ["pca", ["notes.txt"]],
  ])("%s refuses a folder of other files, naming the folder, and leaves it as it was", async (command, names) => {
    const out = join(tmp, `${command}-foreign`);
    mkdirSync(out);
    for (const n of names) writeFileSync(join(out, n), n);
    const r = await interp(command, out);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split("\n").at(-1)).toBe(`qalign: ${command}: --out ${out} is not empty and holds no earlier ${command} run (${[...names].sort().join(", ")}); choose an empty or new folder`);
    expect(readdirSync(out).sort()).toEqual([...names].sort());
  });

  it("lens refuses the folder of a pca run", async () => {
    const out = join(tmp, "pca-then-lens");
    expect((await interp("pca", out, "--layers", "0")).status).toBe(0);
    const before = readdirSync(out).sort();
    const r = await interp("lens", out);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split("\n").at(-1)).toMatch(new RegExp(`^qalign: lens: --out ${out} is not empty and holds no earlier lens run \\(correlation\\.csv`));
    expect(readdirSync(out).sort()).toEqual(before);
  }, 120_000);
});

describe("qalign plan", () => {
  const mistral = join(ROOT, "bench", "configs", "mistral-7b");
  it("reads config.json only: no device starts, nothing on stderr, and says no device limit was checked", () => {
    const r = runCli(["plan", "--model", mistral]);
    expect(r.stderr).toBe(""); // no "using the wasm device", no Dawn/Vulkan warnings
    expect(r.status).toBe(0);
    // Mistral-7B's largest packed weight is embed_tokens (or lm_head): 32000 x 4096 bf16 = 262,144,000 bytes, 0.26 GB.
    expect(r.stdout).toMatch(/^largest +0\.26 GB .*\(no device limit checked\)$/m);
  });

  it("--device checks the limit of the device it names", () => {
    const r = runCli(["plan", "--model", mistral, "--device", "cpu"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^largest +0\.26 GB .*\(limit none on the cpu device\)$/m);
  });
});
