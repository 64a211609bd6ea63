/**
 * Evaluation throughput on the tiny model (cpu): items per second with the shared-prefix KV
 * cache (the k-shot demonstrations run once per language) and without it (every prompt run in
 * full), for a short-token language and a byte-fallback-heavy one. Printed, not asserted.
 *
 *     npx tsx bench/eval.ts [--task snli] [--langs en,hi] [--limit 24] [--batch-size 8] [--data DIR]
 */
import { parseArgs } from "node:util";
import { evaluateLanguage } from "../src/eval/evaluate.ts";
import { parseLangs } from "../src/eval/languages.ts";
import { resolveDataSource } from "../src/eval/default_data.ts";
import { getTask } from "../src/eval/tasks.ts";
import { cpuDevice } from "../src/kernels/devices.ts";
import { loadModel } from "../src/model/load.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { loadTokenizer } from "../src/model/tokenizer.ts";

const { values } = parseArgs({
  options: { task: { type: "string", default: "snli" }, langs: { type: "string", default: "en,hi" }, limit: { type: "string", default: "24" }, "batch-size": { type: "string", default: "8" }, data: { type: "string" } },
});
const dir = await ensureTinyModel();
const model = await loadModel(dir, { device: cpuDevice() });
const tokenizer = (await loadTokenizer(dir))!;
const source = await resolveDataSource(values.data);
const task = getTask(values.task!);
console.log(`tiny model, cpu, ${task.title} ${task.shots}-shot, ${source.description}`);
console.log("lang  items  prefix tok  cached items/s  uncached items/s  speed-up  same predictions");
for (const lang of parseLangs(values.langs!)) {
  const options = { limit: Number(values.limit), batchSize: Number(values["batch-size"]) };
  const cached = await evaluateLanguage({ model, tokenizer, source, task, options }, lang);
  const plain = await evaluateLanguage({ model, tokenizer, source, task, options: { ...options, prefixCache: false } }, lang);
  const same = cached.items.every((r, i) => r.pred === plain.items[i]!.pred);
  console.log(
    `${lang.padEnd(4)}  ${String(cached.n).padStart(5)}  ${String(cached.prefixTokens).padStart(10)}  ${cached.itemsPerSecond.toFixed(2).padStart(14)}  ` +
      `${plain.itemsPerSecond.toFixed(2).padStart(16)}  ${(cached.itemsPerSecond / plain.itemsPerSecond).toFixed(1).padStart(7)}x  ${same}`,
  );
}
model.dispose();
