import { mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ensureTinyModel, writeTinyModel } from "../src/model/tiny.ts";

// Test files run in parallel processes that all want the tiny model on a fresh cache, and one
// file often asks for it from several places at once: every writer must end with one complete folder.
describe("the tiny checkpoint under concurrent writers", () => {
  const saved = process.env["QALIGN_CACHE"];
  const cache = mkdtempSync(join(tmpdir(), "qalign-tiny-"));
  process.env["QALIGN_CACHE"] = cache;
  afterAll(() => {
    process.env["QALIGN_CACHE"] = saved;
  });

  it("concurrent ensureTinyModel calls share one generation and leave no temporary folder", async () => {
    const dirs = await Promise.all([ensureTinyModel(), ensureTinyModel(), ensureTinyModel()]);
    expect(new Set(dirs)).toEqual(new Set([join(cache, "tiny-llama")]));
    expect(readdirSync(cache)).toEqual(["tiny-llama"]);
    expect(readdirSync(dirs[0]!).sort()).toEqual(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
  });

  it("writers racing on one folder (as separate processes do) keep one copy with the same bytes", async () => {
    const reference = join(cache, "reference");
    await writeTinyModel(reference);
    const raced = join(cache, "raced");
    await Promise.all([writeTinyModel(raced), writeTinyModel(raced), writeTinyModel(raced)]);
    expect(readdirSync(cache).sort()).toEqual(["raced", "reference", "tiny-llama"]);
    for (const f of readdirSync(reference)) expect(readFileSync(join(raced, f)).equals(readFileSync(join(reference, f)))).toBe(true);
  });
});
