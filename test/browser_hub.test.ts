import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openQalign, pageAdapterOrSkip, type Request } from "./helpers/browser.ts";
import { fixtureDir, loadExpected, maxAbs, maxDiffAtTokens } from "./helpers/fixtures.ts";

/**
 * loadModel("org/name") in headless Chromium: a local server on 127.0.0.1 serves the fixture
 * checkpoints in the Hub's `resolve/main/` layout (a missing file is a 404 with X-Error-Code
 * EntryNotFound, as the Hub answers), the page downloads them into its Origin Private File
 * System (model/hub.ts: hub_fetch.ts's requests, hub_files.ts's cache on io/opfs_files.ts) and
 * loads them from there.
 * Each test uses a repository name of its own, so each starts with nothing cached.
 */
const resolveMain = (repo: string) => `/test-org/${repo}/resolve/main/`;
const DROPPED = `${resolveMain("llama-dropped")}model.safetensors`;
const WEIGHTS = readFileSync(join(fixtureDir("llama-untied"), "model.safetensors"));

let close: () => Promise<void> = async () => undefined;
let browser: Browser;
let page: Page;
let requests: Request[] = [];
let origin = "";

beforeAll(async () => {
  ({ browser, page, requests, origin, close } = await openQalign(
    { [`${resolveMain("gated")}config.json`]: { status: 401, type: "application/json", body: JSON.stringify({ error: "Access to model test-org/gated is restricted." }) } },
    Object.fromEntries(["llama-untied", "llama-dropped", "llama-seeded", "llama-aborted", "llama-uncached"].map((repo) => [resolveMain(repo), fixtureDir("llama-untied")])),
    { dropOnce: [DROPPED], slow: [`${resolveMain("llama-aborted")}model.safetensors`] },
  ));
}, 120_000);

afterAll(() => close());

/** What the page's functions see: qalign as window.qa (loosely typed: the page runs plain JavaScript). */
type PageGlobals = { qa: any };

/**
 * In the page: loads Hub id `repo` from the local Hub on webgpu and returns the logits of the
 * golden inputs, the files whose download progress was reported, and what the OPFS cache holds.
 */
async function loadInPage(repo: string, endpoint: string, inputIds: number[][], attentionMask: number[][]) {
  return page.evaluate(
    async (repo: string, endpoint: string, inputIds: number[][], attentionMask: number[][]) => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const device = await qa.getDevice("webgpu");
      const reported: string[] = [];
      const model = await qa.loadModel(repo, { device, endpoint, onDownload: (file: string) => void (reported.includes(file) || reported.push(file)) });
      const ids = qa.tensor(Int32Array.from(inputIds.flat()), { device, shape: [inputIds.length, inputIds[0]!.length] });
      const logits = Array.from(await qa.noGrad(() => model.forward(ids, { attentionMask })).logits.data()) as number[];
      model.dispose();
      const cached: string[] = await qa.opfsFiles().list(`${qa.OPFS_HUB_CACHE}/${repo.replace("/", "--")}/main`);
      return { logits, reported, cached };
    },
    repo,
    endpoint,
    inputIds,
    attentionMask,
  );
}

/** The GETs of `path` since request `from` that fetched bytes (not @huggingface/hub's one-byte probe), by their Range header. */
const rangesOf = (path: string, from: number) => requests.slice(from).filter((r) => r.method === "GET" && r.path === path && r.range !== "bytes=0-0").map((r) => r.range);

describe('loadModel("org/name") in the browser', () => {
  it("downloads into the OPFS, its logits equal the PyTorch golden file, and a second load makes no request", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const exp = await loadExpected("llama-untied");
    const before = requests.length;
    const first = await loadInPage("test-org/llama-untied", origin, exp.inputIds, exp.attentionMask);
    // As the other golden tests on webgpu: f32 through two small layers, 1e-4 of the logit scale.
    expect(maxDiffAtTokens(first.logits, exp.logits, exp.attentionMask, exp.V)).toBeLessThanOrEqual(1e-4 * maxAbs(exp.logits));
    expect(first.reported.sort()).toEqual(["config.json", "model.safetensors"]);
    expect(first.cached).toContain("model.safetensors");
    expect(first.cached).toContain(".qalign-download.json");
    expect(rangesOf(`${resolveMain("llama-untied")}model.safetensors`, before)).toEqual([null]); // one whole-file GET
    const after = requests.length;
    const again = await loadInPage("test-org/llama-untied", origin, exp.inputIds, exp.attentionMask);
    expect(requests.slice(after)).toEqual([]);
    expect(again.logits).toEqual(first.logits); // the same bytes on the same device
  });

  it("a connection dropped mid-file resumes from the bytes that arrived, and the model loads identically", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const exp = await loadExpected("llama-untied");
    const before = requests.length;
    const r = await loadInPage("test-org/llama-dropped", origin, exp.inputIds, exp.attentionMask);
    const gets = rangesOf(DROPPED, before);
    // The whole file was asked for and cut after at most half; then only the rest.
    expect(gets).toHaveLength(2);
    expect(gets[0]).toBeNull();
    const from = Number(/^bytes=(\d+)-/.exec(gets[1]!)?.[1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(WEIGHTS.byteLength / 2);
    expect(gets[1]).toBe(`bytes=${from}-`); // the rest of the file, however long
    expect(maxDiffAtTokens(r.logits, exp.logits, exp.attentionMask, exp.V)).toBeLessThanOrEqual(1e-4 * maxAbs(exp.logits));
    const cachedBytes = await page.evaluate(async () => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const f = await qa.opfsFiles().open(`${qa.OPFS_HUB_CACHE}/test-org--llama-dropped/main/model.safetensors`);
      return Array.from(await f.read(0, f.size)) as number[];
    });
    expect(Buffer.from(cachedBytes).equals(WEIGHTS)).toBe(true);
    expect(r.cached.filter((f) => f.includes(".part"))).toEqual([]); // the partial file and its record are gone
  });

  it("a partial file seeded in the OPFS with the Hub's ETag is completed by one range request for the rest", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const exp = await loadExpected("llama-untied");
    const half = Math.floor(WEIGHTS.byteLength / 2);
    await page.evaluate(
      async (url: string, head: number[]) => {
        const qa = (globalThis as unknown as PageGlobals).qa;
        // What an earlier, interrupted download leaves: half the bytes, and the ETag and size they belong to.
        const res = await fetch(url, { method: "HEAD" });
        const dir = `${qa.OPFS_HUB_CACHE}/test-org--llama-seeded/main`;
        const opfs = qa.opfsFiles();
        await opfs.writeAtomic(`${dir}/model.safetensors.part`, [Uint8Array.from(head)]);
        await opfs.writeAtomic(`${dir}/model.safetensors.part.json`, [JSON.stringify({ etag: res.headers.get("ETag"), size: Number(res.headers.get("Content-Length")) })]);
      },
      `${resolveMain("llama-seeded")}model.safetensors`,
      Array.from(WEIGHTS.subarray(0, half)),
    );
    const before = requests.length;
    const r = await loadInPage("test-org/llama-seeded", origin, exp.inputIds, exp.attentionMask);
    expect(rangesOf(`${resolveMain("llama-seeded")}model.safetensors`, before)).toEqual([`bytes=${half}-`]);
    expect(maxDiffAtTokens(r.logits, exp.logits, exp.attentionMask, exp.V)).toBeLessThanOrEqual(1e-4 * maxAbs(exp.logits));
  });

  it("an abort keeps the bytes that arrived in the OPFS, and the next load asks only for the rest", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const exp = await loadExpected("llama-untied");
    const aborted = await page.evaluate(async (endpoint: string) => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const stop = new AbortController();
      // Stop once some weight bytes have arrived.
      const onDownload = (file: string, bytes: number) => void (file === "model.safetensors" && bytes > 0 && stop.abort());
      const error = await qa.loadModel("test-org/llama-aborted", { endpoint, signal: stop.signal, onDownload, device: await qa.getDevice("cpu") }).then(
        () => "loaded",
        (e: Error) => e.name,
      );
      const part = await qa.opfsFiles().open(`${qa.OPFS_HUB_CACHE}/test-org--llama-aborted/main/model.safetensors.part`);
      return { error, have: part.size as number };
    }, origin);
    expect(aborted.error).toBe("AbortError");
    expect(aborted.have).toBeGreaterThan(0);
    expect(aborted.have).toBeLessThan(WEIGHTS.byteLength);
    const before = requests.length;
    const r = await loadInPage("test-org/llama-aborted", origin, exp.inputIds, exp.attentionMask);
    expect(rangesOf(`${resolveMain("llama-aborted")}model.safetensors`, before)).toEqual([`bytes=${aborted.have}-`]);
    expect(maxDiffAtTokens(r.logits, exp.logits, exp.attentionMask, exp.V)).toBeLessThanOrEqual(1e-4 * maxAbs(exp.logits));
  });

  it("a page without an OPFS reads a Hub id from the Hub's resolve/ URLs by byte ranges, uncached", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const exp = await loadExpected("llama-untied");
    const bare = await browser.newPage();
    // As a host without the File System Standard: navigator.storage.getDirectory is missing.
    await bare.evaluateOnNewDocument(() => {
      const g = globalThis as unknown as { StorageManager: { prototype: object } };
      Object.defineProperty(g.StorageManager.prototype, "getDirectory", { value: undefined });
    });
    await bare.goto(`${origin}/`);
    await bare.waitForFunction("window.qa !== undefined", { timeout: 60_000 });
    const before = requests.length;
    const logits = await bare.evaluate(
      async (endpoint: string, inputIds: number[][], attentionMask: number[][]) => {
        const qa = (globalThis as unknown as PageGlobals).qa;
        const device = await qa.getDevice("cpu");
        const model = await qa.loadModel("test-org/llama-uncached", { device, endpoint });
        const ids = qa.tensor(Int32Array.from(inputIds.flat()), { device, shape: [inputIds.length, inputIds[0]!.length] });
        return Array.from(await qa.noGrad(() => model.forward(ids, { attentionMask })).logits.data()) as number[];
      },
      origin,
      exp.inputIds,
      exp.attentionMask,
    );
    await bare.close();
    // f32 on cpu, as test/model_golden.test.ts: 1e-4 of the logit scale.
    expect(maxDiffAtTokens(logits, exp.logits, exp.attentionMask, exp.V)).toBeLessThanOrEqual(1e-4 * maxAbs(exp.logits));
    const weightGets = requests.slice(before).filter((r) => r.method === "GET" && r.path === `${resolveMain("llama-uncached")}model.safetensors`);
    expect(weightGets.length).toBeGreaterThan(0);
    expect(weightGets.filter((r) => r.range === null)).toEqual([]); // every read a byte range: nothing downloaded whole
  });

  it("a gated repository fails before any compute, naming the repository, the file and the HTTP status", async () => {
    const message = await page.evaluate(async (endpoint: string) => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      return qa.loadModel("test-org/gated", { endpoint, device: await qa.getDevice("cpu") }).then(
        () => "loaded",
        (e: Error) => `${e.name}: ${e.message}`,
      );
    }, origin);
    expect(message).toBe(`CheckpointError: ${origin}/test-org/gated: config.json: HTTP 401: the repository is private or gated, or does not exist: set HF_TOKEN (accessToken) to a token that may read it`);
  });
});
