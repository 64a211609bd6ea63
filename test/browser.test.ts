import { join } from "node:path";
import type { Browser, Page } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inkOf, openQalign, pageAdapterOrSkip, pageLoraSteps, type Request } from "./helpers/browser.ts";
import { ROOT } from "./helpers/cli.ts";
import { expectClose } from "./helpers/close.ts";
import { reportHtml } from "../src/io/html.ts";
import { renderSvg } from "../src/io/plot.ts";
import { loadExpected, maxAbs, maxDiffAtTokens } from "./helpers/fixtures.ts";
import { exampleClosedForm, readmePrinted } from "./helpers/readme.ts";

/**
 * The host-neutral core in headless Chromium: the browser entry bundled with platform
 * "browser" (so no Node module is reachable from it), loaded by a page served from
 * http://localhost, its webgpu device on the page's navigator.gpu, checked against the cpu
 * device in the same page and against closed forms, within the README's tolerances.
 *
 * The functions given to page.evaluate run in the page: they see only `window.qa` and their
 * arguments, and return plain numbers.
 */
let close: () => Promise<void> = async () => undefined;
let browser: Browser | null = null;
let page: Page;
let requests: Request[] = [];

beforeAll(async () => {
  ({ browser, page, requests, close } = await openQalign(
    { "/report.html": { type: "text/html", body: await sampleReport() } },
    // The committed fixture checkpoints.
    { "/models/": join(ROOT, "test", "fixtures", "models") },
  ));
}, 120_000);

afterAll(() => close());

/** A report as align writes it (io/html.ts): Markdown with a table, and a chart inline. */
async function sampleReport(): Promise<string> {
  const values = [
    { lang: "en", model: "base", acc: 61 },
    { lang: "en", model: "aligned", acc: 64 },
    { lang: "sw", model: "base", acc: 38 },
    { lang: "sw", model: "aligned", acc: 47 },
  ];
  const svg = await renderSvg({
    title: "accuracy per language",
    data: { values },
    mark: "bar",
    encoding: { x: { field: "lang", type: "nominal", title: "language" }, xOffset: { field: "model" }, y: { field: "acc", type: "quantitative", title: "accuracy (%)" }, color: { field: "model", type: "nominal", title: "model" } },
  });
  const markdown = "# Question alignment: SNLI\n\n| language | base | aligned |\n|---|---|---|\n| en | 61.0 | 64.0 |\n| sw | 38.0 | 47.0 |\n\n![accuracy per language](accuracy.svg)\n";
  return reportHtml("Question alignment: SNLI", markdown, { "accuracy.svg": svg });
}

/**
 * What the page's functions see of the page's globals: qalign (window.qa, typed loosely: the
 * page's code is plain JavaScript) and whether the page is a secure context.
 */
type PageGlobals = { qa: any; isSecureContext: boolean };


describe("qalign in headless Chromium", () => {
  it("runs in a secure context, where WebGPU is offered", async () => {
    expect(await page.evaluate(() => (globalThis as unknown as PageGlobals).isSecureContext)).toBe(true);
    expect(await page.evaluate(() => typeof (globalThis as unknown as PageGlobals).qa.tensor)).toBe("function");
  });

  it("the README's autograd example on the page's webgpu device equals the closed form and the cpu device", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const r = await page.evaluate(async () => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const run = async (device: unknown) => {
        const w = qa.randn([3, 2], { seed: 0, device }).requireGrad();
        const x = qa.tensor([[1, 2, 3]], { device });
        const loss = qa.tidy(() => {
          const l = x.matmul(w).silu().sum();
          l.backward();
          return l;
        });
        return { loss: (await loss.item()) as number, w: Array.from(await w.data()) as number[], grad: Array.from(await w.grad.data()) as number[] };
      };
      const gpu = await qa.getDevice("webgpu");
      const page = globalThis as unknown as { navigator: { gpu: unknown } };
      return { webgpu: await run(gpu), cpu: await run(await qa.getDevice("cpu")), name: gpu.name as string, onPageGpu: gpu.gpu === page.navigator.gpu };
    });
    expect(r.name).toBe("webgpu");
    expect(r.onPageGpu).toBe(true); // the page's navigator.gpu, not a shim
    expect(r.webgpu.w).toEqual(r.cpu.w); // the seeded generator runs on the host
    const exact = exampleClosedForm(r.cpu.w);
    // f32 on both devices against float64: a few ulps of a sum of two silu terms (README: 1e-5).
    expectClose([r.webgpu.loss, ...r.webgpu.grad], [exact.loss, ...exact.grad], 1e-5, "webgpu vs closed form");
    expectClose([r.webgpu.loss, ...r.webgpu.grad], [r.cpu.loss, ...r.cpu.grad], 1e-5, "webgpu vs cpu");
    expect(r.webgpu.loss.toFixed(4)).toBe(readmePrinted().loss);
  });

  it("matmul (plain and with a transposed operand) on a GPUDevice the page opened equals the cpu device", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    // Odd sizes, so the tiles of every variant have ragged edges.
    const r = await page.evaluate(async () => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      // The page's own device, with WebGPU's default limits, handed to qalign.
      const page = globalThis as unknown as { navigator: { gpu: { requestAdapter(): Promise<{ requestDevice(): Promise<unknown> }> } } };
      const gpuDevice = await (await page.navigator.gpu.requestAdapter()).requestDevice();
      const [gpu, cpu] = [await qa.getDevice("webgpu", { gpuDevice }), await qa.getDevice("cpu")];
      if (gpu.device !== gpuDevice) throw new Error("qalign did not use the GPUDevice it was given");
      const a = qa.randn([2, 33, 47], { seed: 1, device: cpu });
      const b = qa.randn([47, 29], { seed: 2, device: cpu });
      const bt = qa.randn([29, 47], { seed: 3, device: cpu });
      const on = async (d: unknown) => {
        const [ad, bd, btd] = [await a.to(d), await b.to(d), await bt.to(d)];
        return { ab: Array.from(await ad.matmul(bd).data()) as number[], abt: Array.from(await ad.matmul(btd.transpose(0, 1)).data()) as number[] };
      };
      return { webgpu: await on(gpu), cpu: await on(cpu) };
    });
    // README: matmul 1e-4 (f32 sums of K = 47 products in different orders: ~sqrt(K) ulps).
    expectClose(r.webgpu.ab, r.cpu.ab, 1e-4, "a @ b");
    expectClose(r.webgpu.abt, r.cpu.abt, 1e-4, "a @ bt^T");
  });

  it("causal grouped-query attention, forward and backward, on the page's webgpu device equals the cpu device", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const r = await page.evaluate(async () => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const [gpu, cpu] = [await qa.getDevice("webgpu"), await qa.getDevice("cpu")];
      // q [B=2, H=4, T=9, Dh=16]; k, v [B, Hkv=2, T, Dh]: two query heads per kv head.
      const q = qa.randn([2, 4, 9, 16], { seed: 4, device: cpu });
      const k = qa.randn([2, 2, 9, 16], { seed: 5, device: cpu });
      const v = qa.randn([2, 2, 9, 16], { seed: 6, device: cpu });
      const weights = qa.randn([2, 4, 9, 16], { seed: 7, device: cpu });
      const on = async (d: unknown) => {
        const [qd, kd, vd] = [(await q.to(d)).requireGrad(), (await k.to(d)).requireGrad(), (await v.to(d)).requireGrad()];
        const out = qa.attention(qd, kd, vd, { causal: true });
        // A loss that weighs every output element differently, so each gradient entry matters.
        out.mul(await weights.to(d)).sum().backward();
        const grads = await Promise.all([qd, kd, vd].map(async (t) => Array.from(await t.grad.data()) as number[]));
        return { out: Array.from(await out.data()) as number[], grads };
      };
      return { webgpu: await on(gpu), cpu: await on(cpu) };
    });
    // README: attention 1e-4 (online softmax in f32, summed in another order than cpu's).
    expectClose(r.webgpu.out, r.cpu.out, 1e-4, "attention output");
    for (const [i, name] of ["dq", "dk", "dv"].entries()) expectClose(r.webgpu.grads[i]!, r.cpu.grads[i]!, 1e-4, name);
  });

  for (const name of ["llama-untied", "qwen2-sharded"]) {
    it(`${name}: the checkpoint served over HTTP loads by byte ranges on webgpu, and its logits equal the PyTorch golden file`, async (ctx) => {
      await pageAdapterOrSkip(page, ctx);
      const exp = await loadExpected(name);
      const before = requests.length;
      const logits = await page.evaluate(
        async (dir: string, inputIds: number[][], attentionMask: number[][]) => {
          const qa = (globalThis as unknown as PageGlobals).qa;
          const device = await qa.getDevice("webgpu");
          const model = await qa.loadModel(dir, { device }); // the page's URL files: fetch with Range
          const ids = qa.tensor(Int32Array.from(inputIds.flat()), { device, shape: [inputIds.length, inputIds[0]!.length] });
          const out = qa.noGrad(() => model.forward(ids, { attentionMask }));
          const values = Array.from(await out.logits.data()) as number[];
          model.dispose();
          return values;
        },
        `/models/${name}`,
        exp.inputIds,
        exp.attentionMask,
      );
      // As test/model_golden.test.ts: f32 through two small layers, 1e-4 of the logit scale.
      expect(maxDiffAtTokens(logits, exp.logits, exp.attentionMask, exp.V)).toBeLessThanOrEqual(1e-4 * maxAbs(exp.logits));
      // Weights came by ranges: every GET of a .safetensors file asked for a byte range.
      const weightGets = requests.slice(before).filter((r) => r.method === "GET" && r.path.endsWith(".safetensors"));
      expect(weightGets.length).toBeGreaterThan(0);
      expect(weightGets.filter((r) => r.range === null)).toEqual([]);
    });
  }

  it("a checkpoint from files the user picked (Blobs) gives the same logits as from URLs", async () => {
    const r = await page.evaluate(async () => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const device = await qa.getDevice("cpu");
      const picked = new Map<string, Blob>();
      for (const f of ["config.json", "model.safetensors"]) picked.set(`llama-untied/${f}`, await (await fetch(`/models/llama-untied/${f}`)).blob());
      const ids = qa.tensor(Int32Array.from([1, 5, 9, 13]), { device, shape: [1, 4] });
      const run = async (dir: string, files?: unknown) => {
        const model = await qa.loadModel(dir, { device, files });
        const values = Array.from(await qa.noGrad(() => model.forward(ids)).logits.data()) as number[];
        model.dispose();
        return values;
      };
      return { blob: await run("llama-untied", qa.blobFiles(picked)), url: await run("/models/llama-untied") };
    });
    expect(r.blob.length).toBeGreaterThan(0);
    expect(r.blob).toEqual(r.url); // the same bytes, the same device: the same numbers
  });

  it("LoRA steps on the page's webgpu device lower the question-translation loss", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const r = await page.evaluate(async (loraSteps: string) => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const device = await qa.getDevice("webgpu");
      const model = await qa.loadModel("/models/llama-untied", { device });
      const adapter = qa.applyLora(model, { r: 4, lora_alpha: 8, seed: 0 });
      const losses: number[] = await (0, eval)(`(${loraSteps})`)(qa, model, adapter, device, 3);
      model.dispose();
      return losses;
    }, pageLoraSteps.toString());
    expect(r.every(Number.isFinite)).toBe(true);
    // lora_B starts at zero, so the first loss is the base model's; AdamW's first steps move
    // every parameter by about lr against its gradient, which lowers a smooth loss at lr 1e-2.
    for (let i = 1; i < r.length; i++) expect(r[i]!, `loss after step ${i}: ${r.join(", ")}`).toBeLessThan(r[i - 1]!);
  });

  it("report.html renders in the browser: its table, its inline chart, and a screenshot that is not blank", async () => {
    const report = await browser!.newPage();
    await report.setViewport({ width: 1000, height: 900 });
    await report.goto(`${new URL(page.url()).origin}/report.html`);
    const layout = await report.evaluate(() => {
      const doc = (globalThis as unknown as { document: { querySelector(s: string): { getBoundingClientRect(): { width: number; height: number } } | null; querySelectorAll(s: string): { length: number } } }).document;
      const box = doc.querySelector("figure svg")?.getBoundingClientRect();
      return { rows: doc.querySelectorAll("table tr").length, chart: box ? [box.width, box.height] : null, marks: doc.querySelectorAll("figure svg path").length };
    });
    expect(layout.rows).toBe(3); // header + en + sw
    expect(layout.chart![0]).toBeGreaterThan(100);
    expect(layout.chart![1]).toBeGreaterThan(100);
    expect(layout.marks).toBeGreaterThan(4); // bars and axes drew
    const ink = await inkOf(report);
    await report.close();
    expect(ink.share).toBeGreaterThan(0.01); // a blank page has none
    expect(ink.colours).toBeGreaterThan(3);
  });
});
