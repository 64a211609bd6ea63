import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, Page } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { demoFiles } from "../scripts/browser_bundle.mjs";
import { formatIssue } from "../src/io/data_error.ts";
import { blobFiles } from "../src/io/web_files.ts";
import { cpuDevice } from "../src/kernels/devices.ts";
import { readQuestionPairs } from "../src/lora/data.ts";
import { readAdapterConfig, readAdapterWeights } from "../src/lora/peft.ts";
import { loadModel } from "../src/model/load.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { inkOf, openQalign, pageAdapterOrSkip, type Request } from "./helpers/browser.ts";

/**
 * The demo page (examples/browser/, as `npm run demo:browser` serves it) in headless Chromium,
 * driven as a user would: the built-in tiny model by its Hub name from a local server in the
 * Hub's `resolve/main/` layout (downloaded into the page's OPFS, with progress), generation, a
 * question-pairs file of the user's (one malformed item, reported as Node's reader reports it;
 * a file that is not an array, refused with its message), LoRA steps that lower the loss, the
 * Logit Lens, and the downloads, which Chromium saves into a folder: the PEFT adapter's two files (they parse in Node as a PEFT
 * adapter whose tensors equal the page's LoRA weights) and the report (it renders: its tables,
 * its inline chart, a screenshot that is not blank).
 */
const tmp = mkdtempSync(join(tmpdir(), "qalign-demo-"));
let close: () => Promise<void> = async () => undefined;
let browser: Browser;
let page: Page;
let origin = "";
let requests: Request[] = [];
let tiny = "";

beforeAll(async () => {
  tiny = await ensureTinyModel();
  ({ browser, page, origin, requests, close } = await openQalign(demoFiles("/demo/"), { "/test-org/tiny/resolve/main/": tiny }));
}, 120_000);

afterAll(async () => {
  await close();
  rmSync(tmp, { recursive: true, force: true });
});

/** The user's question pairs: five usable German pairs in the paper's format, and one item without an answer. */
const USER_PAIRS = [
  ...["Wo ist die Bibliothek?|Where is the library?", "Wie spät ist es?|What time is it?", "Wer hat das Buch geschrieben?|Who wrote the book?", "Warum ist der Himmel blau?|Why is the sky blue?", "Wann fährt der Zug ab?|When does the train leave?"].map((l) => {
    const [de, en] = l.split("|");
    return { input: `${de}\nTranslate the input from German to English:\n`, answer: en };
  }),
  { input: "Was kostet das?\nTranslate the input from German to English:\n" },
];

/** `text` as a file the user picks in `selector`'s file input. */
async function pick(demo: Page, selector: string, name: string, text: string): Promise<void> {
  const file = join(tmp, name);
  writeFileSync(file, text);
  await (await demo.$(selector))!.uploadFile(file);
}

/** What Node's question-pair reader says of `text` as the file `name`: the pairs and issue lines, or the error. */
async function nodeReads(name: string, text: string): Promise<{ count: number; issues: string[] } | string> {
  return readQuestionPairs([name], { files: blobFiles(new Map([[name, new Blob([text])]])) }).then(
    (r) => ({ count: r.pairs.length, issues: r.issues.map(formatIssue) }),
    (e: Error) => e.message,
  );
}

describe("the demo page", () => {
  it("loads a Hub name, aligns on the user's pairs, and its adapter and report downloads are right", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const demo = await browser.newPage();
    const errors: string[] = [];
    demo.on("pageerror", (e) => void errors.push(String(e)));
    await demo.setViewport({ width: 1000, height: 1600 });
    await demo.goto(`${origin}/demo/`);
    const text = (id: string) => demo.$eval(`#${id}`, (e) => (e as unknown as { textContent: string }).textContent);
    const until = (re: RegExp) =>
      demo.waitForFunction((r: string) => new RegExp(r).test((globalThis as unknown as { document: { getElementById(x: string): { textContent: string } } }).document.getElementById("status").textContent), { timeout: 120_000 }, re.source);
    const progress = (id: string) => demo.$eval(`#${id}`, (e) => [(e as unknown as { value: number }).value, (e as unknown as { max: number }).max]);

    // 1. The tiny model by its Hub name, from the local Hub.
    await demo.type("#source", "test-org/tiny");
    await demo.$eval("#endpoint", (e, o) => void ((e as unknown as { value: string }).value = o as string), origin);
    const before = requests.length;
    await demo.click("#load");
    await until(/^loaded: |^error/);
    expect(await text("status")).toBe("loaded: llama, 2 layers, hidden_size 64");
    expect(requests.slice(before).some((r) => r.path === "/test-org/tiny/resolve/main/model.safetensors")).toBe(true);
    const [loaded, total] = await progress("loadProgress");
    expect(loaded).toBe(total);

    await demo.click("#generate");
    await until(/^generated|^error/);
    expect((await text("generated")).startsWith("The capital of France is")).toBe(true);

    // 2. A file that is not an array is refused with the reader's message.
    const notArray = JSON.stringify({ input: "x", answer: "y" });
    await demo.click("#useFile");
    await pick(demo, "#pairsFile", "not_an_array.json", notArray);
    await demo.click("#align");
    await until(/^error|^aligned/);
    expect(await text("status")).toBe(`error: ${await nodeReads("not_an_array.json", notArray)}`);

    // 3. The user's pairs: the malformed item is skipped and listed as Node lists it; a slice of 4 trains.
    const mine = JSON.stringify(USER_PAIRS);
    const expected = (await nodeReads("my_pairs.json", mine)) as { count: number; issues: string[] };
    expect(expected).toMatchObject({ count: 5, issues: [expect.stringContaining("answer")] });
    await pick(demo, "#pairsFile", "my_pairs.json", mine);
    await demo.$eval("#steps", (e) => void ((e as unknown as { value: string }).value = "2"));
    await demo.click("#align");
    await until(/^aligned|^error/);
    expect(await text("status")).toBe("aligned: 2 LoRA steps");
    expect(await text("data")).toBe(`my_pairs.json: 5 pairs, training on 4\nskipped 1 malformed item(s):\n${expected.issues.map((i) => `  ${i}`).join("\n")}`);
    const losses = [...(await text("losses")).matchAll(/loss (\d+\.\d+)/g)].map((m) => Number(m[1]));
    expect(losses).toHaveLength(3);
    // lora_B starts at zero, so the first loss is the base model's; AdamW at lr 1e-3 lowers it.
    expect(losses[1]!).toBeLessThan(losses[0]!);
    expect(losses[2]!).toBeLessThan(losses[1]!);
    expect(await progress("trainProgress")).toEqual([2, 2]);

    await demo.click("#lens");
    await until(/^Logit Lens|^error/);
    expect(await demo.$$eval("#lensTable tr", (rows) => rows.length)).toBe(1 + 3); // header, embeddings and 2 layers

    // 4. The downloads.
    await demo.click("#save");
    await until(/^downloads ready|^error/);
    expect(await text("status")).toBe("downloads ready: the adapter's two files and the report");
    // Chromium saves what the links download into `dir` (a real download: the link's name and bytes).
    const dir = join(tmp, "downloads");
    mkdirSync(dir);
    const cdp = await demo.createCDPSession();
    await cdp.send("Browser.setDownloadBehavior", { behavior: "allow", downloadPath: dir, eventsEnabled: true });
    const names = await demo.$$eval("#downloads a", (links) => links.map((a) => (a as unknown as { download: string }).download));
    expect(names.sort()).toEqual(["adapter_config.json", "adapter_model.safetensors", "report.html"]);
    let done = 0;
    cdp.on("Browser.downloadProgress", (e) => void (e.state === "completed" && done++));
    for (const name of names) await demo.click(`#downloads a[download="${name}"]`);
    await vi.waitFor(() => expect(done).toBe(names.length), { timeout: 30_000, interval: 100 });
    expect(readdirSync(dir).sort()).toEqual(names);
    const got = await demo.evaluate(async () => {
      const adapter = (globalThis as unknown as { demo: { adapter: { namedParams(): Map<string, { data(): Promise<Float32Array> }> } } }).demo.adapter;
      const weights: Record<string, number[]> = {};
      for (const [key, p] of adapter.namedParams()) weights[key] = Array.from(await p.data());
      return { weights };
    });
    // The two adapter files side by side are a folder PEFT (and qalign) reads.
    const config = await readAdapterConfig(dir);
    expect(config).toMatchObject({ r: 8, lora_alpha: 16 });
    const model = await loadModel(tiny, { device: cpuDevice() });
    const weights = await readAdapterWeights(dir, model, config); // every key and shape checked against the model
    model.dispose();
    expect([...weights.keys()].sort()).toEqual(Object.keys(got.weights).sort());
    for (const [key, values] of weights) expect(Array.from(values), key).toEqual(got.weights[key]); // F32 written as held: exact
    // lora_B moved off zero in training: the adapter holds the trained weights, not the initial ones.
    expect([...weights].some(([key, v]) => key.includes("lora_B") && v.some((x) => x !== 0))).toBe(true);

    // 5. The report renders: the loss table, the Logit Lens table, the chart inline, the settings.
    const report = await browser.newPage();
    await report.setViewport({ width: 1000, height: 900 });
    await report.setContent(readFileSync(join(dir, "report.html"), "utf8"));
    const layout = await report.evaluate(() => {
      const doc = (globalThis as unknown as { document: { querySelector(s: string): { getBoundingClientRect(): { width: number; height: number }; textContent: string } | null; querySelectorAll(s: string): { length: number } } }).document;
      const box = doc.querySelector("figure svg")?.getBoundingClientRect();
      return { tables: doc.querySelectorAll("table").length, rows: doc.querySelectorAll("table tr").length, chart: box ? [box.width, box.height] : null, marks: doc.querySelectorAll("figure svg path").length, settings: doc.querySelector("pre code")?.textContent ?? "" };
    });
    expect(layout.tables).toBe(2);
    expect(layout.rows).toBe(1 + 3 + 1 + 3); // losses: header and steps 0-2; lens: header and 3 rows
    expect(layout.chart![0]).toBeGreaterThan(100);
    expect(layout.chart![1]).toBeGreaterThan(100);
    expect(layout.marks).toBeGreaterThan(2);
    expect(JSON.parse(layout.settings)).toMatchObject({ model: "test-org/tiny", data: { name: "my_pairs.json", pairs: 4, total: 5, skipped: 1 }, lora: { r: 8, lora_alpha: 16, steps: 2 } });
    const ink = await inkOf(report);
    await report.close();
    expect(ink.share).toBeGreaterThan(0.01); // a blank page has none
    expect(ink.colours).toBeGreaterThan(3);
    const demoInk = await inkOf(demo);
    await demo.close();
    expect(demoInk.share).toBeGreaterThan(0.01);
    expect(errors).toEqual([]);
  });
});
