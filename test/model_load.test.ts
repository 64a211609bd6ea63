import { execFile } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel } from "../src/model/load.ts";
import { openSafetensors, writeSafetensors, type TensorToWrite } from "../src/model/safetensors.ts";
import { fixtureDir, loadExpected, maxAbs, maxDiffAtTokens } from "./helpers/fixtures.ts";

/**
 * The strict loader: a checkpoint that disagrees with its config.json fails before any compute
 * with an error naming the file and the tensor; and the `qalign logits` command prints the
 * golden logits of a committed fixture.
 */
const cpu = qa.cpuDevice();

/** A writable copy of a fixture checkpoint. */
function copyFixture(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), "qalign-load-"));
  cpSync(fixtureDir(name), dir, { recursive: true });
  return dir;
}

/** Rewrites model.safetensors of `dir` through `edit` (a map of name -> tensor). */
async function editWeights(dir: string, edit: (t: Map<string, TensorToWrite>) => void): Promise<void> {
  const file = join(dir, "model.safetensors");
  const f = await openSafetensors(file);
  const tensors = new Map<string, TensorToWrite>();
  for (const name of f.names()) tensors.set(name, { dtype: "F32", shape: f.info(name).shape, data: await f.readF32(name) });
  await f.close();
  edit(tensors);
  await writeSafetensors(file, Object.fromEntries(tensors));
}

describe("loadModel rejects checkpoints that disagree with config.json", () => {
  test("a tensor whose shape disagrees with the config names the file, the tensor and both shapes", async () => {
    const dir = copyFixture("llama-untied");
    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    config.intermediate_size += 1;
    writeFileSync(join(dir, "config.json"), JSON.stringify(config));
    await expect(loadModel(dir, { device: cpu })).rejects.toThrow(/model\.safetensors.*model\.layers\.0\.mlp\.gate_proj\.weight.*shape \[\d+,\d+\] disagrees with config\.json, which implies \[\d+,\d+\]/);
  });
  test("a missing tensor is named with its expected shape", async () => {
    const dir = copyFixture("llama-untied");
    await editWeights(dir, (t) => t.delete("model.layers.1.post_attention_layernorm.weight"));
    await expect(loadModel(dir, { device: cpu })).rejects.toThrow(/model\.layers\.1\.post_attention_layernorm\.weight.*missing tensor/);
  });
  test("an unexpected tensor is named", async () => {
    const dir = copyFixture("llama-untied");
    await editWeights(dir, (t) => t.set("model.layers.0.mlp.extra.weight", { dtype: "F32", shape: [2], data: new Float32Array(2) }));
    await expect(loadModel(dir, { device: cpu })).rejects.toThrow(/model\.layers\.0\.mlp\.extra\.weight.*unexpected tensor/);
  });
});

describe("qalign logits", () => {
  test("prints the golden logits of a committed fixture, and nothing else on stdout", async () => {
    const exp = await loadExpected("qwen2-tied");
    const row = exp.inputIds[0]!;
    const { stdout } = await promisify(execFile)(
      "npx",
      ["tsx", "src/cli/main.ts", "logits", "--model", fixtureDir("qwen2-tied"), "--ids", row.join(","), "--device", "cpu"],
      { maxBuffer: 64 << 20 },
    );
    const logits = (JSON.parse(stdout) as { logits: number[][] }).logits;
    expect(logits).toHaveLength(row.length);
    const ref = exp.logits.subarray(0, row.length * exp.V);
    expect(maxDiffAtTokens(logits.flat(), ref, [row.map(() => 1)], exp.V)).toBeLessThanOrEqual(1e-4 * maxAbs(ref));
  });
});
