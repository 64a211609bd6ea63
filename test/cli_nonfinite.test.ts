import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openSafetensors, writeSafetensors, type TensorToWrite } from "../src/model/safetensors.ts";
import { TINY_CONFIG, ensureTinyModel } from "../src/model/tiny.ts";
import { lastLine, runCli, SAMPLE } from "./helpers/cli.ts";

/**
 * Non-finite numbers never end in a result with exit status 0: training stops at the first NaN
 * or infinite loss or gradient norm keeping the last good checkpoint, evaluation names the item
 * and language whose scores are not finite, generation refuses NaN logits, and a --max-length
 * beyond the model's context is refused before any work.
 */
const tmp = mkdtempSync(join(tmpdir(), "qalign-nonfinite-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const TINY = await ensureTinyModel();

/** The tiny checkpoint with model.norm.weight set to NaN: every logit is NaN. */
async function nanModel(): Promise<string> {
  const dir = join(tmp, "tiny-nan");
  cpSync(TINY, dir, { recursive: true });
  const src = await openSafetensors(join(TINY, "model.safetensors"));
  const tensors: Record<string, TensorToWrite> = {};
  for (const name of src.names()) {
    const data = await src.readF32(name);
    if (name === "model.norm.weight") data.fill(NaN);
    tensors[name] = { dtype: "F32", shape: src.info(name).shape, data };
  }
  await src.close();
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  return dir;
}
const NAN_MODEL = await nanModel();

const QUESTIONS = join(tmp, "snli_zh10k_train_question.json");
writeFileSync(QUESTIONS, JSON.stringify(SAMPLE["snli/snli_zh10k_train_question.json"]));
const QUESTIONS_ES = join(tmp, "snli_es10k_train_question.json");
writeFileSync(QUESTIONS_ES, JSON.stringify(SAMPLE["snli/snli_es10k_train_question.json"]));

describe("qalign train", () => {
  it("stops at the first step whose loss, gradient norm or updated weights are not finite, naming it, keeping the last good checkpoint", () => {
    // lr 1e300: the first update that the warmup lets through moves the LoRA weights to +-inf in f32,
    // so the next forward gives NaN.
    const out = join(tmp, "train-diverges");
    const r = runCli(["train", "--model", TINY, "--data", `${QUESTIONS},${QUESTIONS_ES}`, "--out", out, "--max-samples", "12", "--val-size", "0", "--batch-size", "1", "--grad-accum", "1", "--epochs", "1", "--lr", "1e300", "--save-steps", "1", "--device", "cpu"]);
    expect(r.status).toBe(1);
    const m = /^qalign: train: step (\d+)\/12: .*not finite; stopped without writing the adapter \(the last good checkpoint, after step (\d+), is kept in (\S+)\)\. /.exec(lastLine(r.stderr));
    expect(m, lastLine(r.stderr)).not.toBeNull();
    const [, failed, kept, dir] = m!;
    expect(Number(kept)).toBe(Number(failed) - 1);
    expect(dir).toBe(join(out, "checkpoint"));
    const state = JSON.parse(readFileSync(join(dir!, "trainer_state.json"), "utf8")) as { step: number };
    expect(state.step).toBe(Number(kept));
    expect(existsSync(join(out, "adapter_model.safetensors"))).toBe(false);
    expect(r.stdout).toBe("");
  });

  it("stops at step 1 of a model whose outputs are NaN, before writing anything", () => {
    const out = join(tmp, "train-nan-model");
    const r = runCli(["train", "--model", NAN_MODEL, "--data", QUESTIONS, "--out", out, "--max-samples", "8", "--val-size", "0", "--epochs", "1", "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toMatch(/^qalign: train: step 1\/1: the loss is NaN and the gradient norm NaN, not finite; stopped without writing the adapter \(no checkpoint was saved yet\)/);
    expect(existsSync(join(out, "adapter_model.safetensors"))).toBe(false);
  });

  it("stops at a validation loss that is not finite", () => {
    const r = runCli(["train", "--model", NAN_MODEL, "--data", QUESTIONS, "--out", join(tmp, "train-nan-val"), "--max-samples", "40", "--val-size", "0.1", "--epochs", "1", "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toMatch(/^qalign: train: the validation loss after step 0 is NaN; stopped without writing the adapter/);
  });

  it("refuses a --max-length beyond the model's context before loading it", () => {
    const r = runCli(["train", "--model", TINY, "--data", QUESTIONS, "--out", join(tmp, "train-long"), "--max-length", "5000", "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toBe(`qalign: train: --max-length 5000 exceeds the model's context: max_position_embeddings is ${TINY_CONFIG.max_position_embeddings} in ${join(TINY, "config.json")}`);
  });
});

describe("qalign eval", () => {
  it("names the item and language whose scores are not finite", () => {
    const r = runCli(["eval", "--model", NAN_MODEL, "--protocol", "qalign", "--task", "snli", "--langs", "de", "--limit", "2", "--shots", "0", "--data", "sample", "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toMatch(/^qalign: sample:snli\/snli_de600_test\.json: item \d+ \(de\): the class scores are not finite \(\[NaN, NaN, NaN\]\)/);
    expect(r.stdout).toBe("");
  });

  it("refuses an --eval-max-length beyond the model's context before loading it, naming that option", () => {
    const r = runCli(["eval", "--model", TINY, "--task", "snli", "--langs", "en", "--limit", "2", "--eval-max-length", "99999", "--data", "sample", "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toBe(`qalign: eval: --eval-max-length 99999 exceeds the model's context: max_position_embeddings is ${TINY_CONFIG.max_position_embeddings} in ${join(TINY, "config.json")}`);
    expect(r.stderr).not.toMatch(/^en: /m);
  });
});

describe("qalign align", () => {
  // align has both: --max-length is the training's, --eval-max-length the evaluation's.
  it.each(["max-length", "eval-max-length"])("refuses a --%s beyond the model's context before loading it, naming that option", (option) => {
    const r = runCli(["align", "--model", TINY, "--langs", "en", "--limit", "2", `--${option}`, "99999", "--data", "sample", "--device", "cpu", "--out", join(tmp, `align-long-${option}`)]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toBe(`qalign: align: --${option} 99999 exceeds the model's context: max_position_embeddings is ${TINY_CONFIG.max_position_embeddings} in ${join(TINY, "config.json")}`);
    expect(r.stderr).not.toContain("loading ");
  });
});

describe("qalign generate", () => {
  it("refuses NaN logits instead of printing a token", () => {
    const r = runCli(["generate", "--model", NAN_MODEL, "--prompt", "Hello", "--max-new-tokens", "3", "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toMatch(/^qalign: generate: the logits of new token 1 are not finite \(logit 0 is NaN\)/);
    expect(r.stdout).not.toContain("<unk>");
  });
});
