import { existsSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import type { TestContext } from "vitest";
import { bundleBrowser } from "../../scripts/browser_bundle.mjs";
import { fileAnswer } from "../../scripts/serve_files.mjs";
import { SWIFTSHADER_ICD } from "./devices.ts";

/**
 * qalign in headless Chromium for tests: the browser entry (src/browser.ts) bundled for the
 * browser, served with a page from a local HTTP server, and Debian's chromium driven by
 * puppeteer-core (no browser download). The page is opened at http://localhost, a secure
 * context, so `navigator.gpu` exists; SwiftShader gives it a WebGPU adapter without a GPU.
 */

/** Debian's chromium package. */
export const CHROMIUM = "/usr/bin/chromium";

/** One file the server answers with: its Content-Type and body. */
export interface Served {
  type: string;
  body: string | Uint8Array;
  /** Extra response headers (e.g. COOP/COEP for a cross-origin-isolated page). */
  headers?: Record<string, string>;
  /** The HTTP status (default 200): e.g. 401 with a JSON body, as the Hub answers for a gated model. */
  status?: number;
}

/** How the server misbehaves, for tests of resumed downloads. */
export interface ServeOptions {
  /**
   * Paths of folder files whose first full-body GET (a range of more than one byte, or none)
   * sends half the bytes it announced and then drops the connection, as a network failure does.
   */
  dropOnce?: readonly string[];
  /** Paths of folder files sent in 16 KiB pieces 5 ms apart, so a client sees them arrive in several chunks. */
  slow?: readonly string[];
}

/**
 * src/browser.ts bundled for a page (scripts/browser_bundle.mjs, as `npm run demo:browser`
 * serves it), as files to serve: `/qalign.js` and the chunks it imports.
 * @throws esbuild's error naming an unresolvable import (any `node:` module reachable from the entry).
 */
export async function bundleBrowserEntry(): Promise<Record<string, Served>> {
  const js = await bundleBrowser();
  return Object.fromEntries(Object.entries(js).map(([path, body]) => [path, { type: "text/javascript", body }]));
}

/** A page that loads the bundled browser entry from /qalign.js and sets `window.qa` to it. */
export const QALIGN_PAGE = '<!doctype html><meta charset="utf-8"><title>qalign</title><script type="module">import * as qa from "/qalign.js"; window.qa = qa;</script>';

/**
 * Serves {@link QALIGN_PAGE} at "/" with the bundle, beside `files` and `folders` (as
 * {@link serve}, with `opts`), and opens it in headless Chromium.
 * @returns the browser, the page (qalign loaded), every request answered, the server's origin, and a close function for both
 */
export async function openQalign(
  files: Readonly<Record<string, Served>> = {},
  folders: Readonly<Record<string, string>> = {},
  opts: ServeOptions = {},
): Promise<{ browser: Browser; page: Page; requests: Request[]; origin: string; close: () => Promise<void> }> {
  const server = await serve({ "/": { type: "text/html", body: QALIGN_PAGE }, ...(await bundleBrowserEntry()), ...files }, folders, opts);
  const browser = await launchChromium().catch(async (e: unknown) => {
    await server.close();
    throw e;
  });
  const close = async () => {
    await browser.close();
    await server.close();
  };
  try {
    return { browser, page: await openPage(browser, `${server.origin}/`), requests: server.requests, origin: server.origin, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/** One request the server answered: method, path, and the Range header when there was one. */
export interface Request {
  method: string;
  path: string;
  range: string | null;
}

/**
 * Serves `files` (path -> file), and under each prefix of `folders` (URL prefix -> local
 * folder) the folder's files, on 127.0.0.1 at a free port; any other path is a 404. Folder files
 * are answered by scripts/serve_files.mjs (single byte ranges, HEAD, an ETag); `opts` makes
 * chosen files fail once.
 * @returns the origin to open (http://localhost:PORT), every request answered, and a close function
 */
export async function serve(
  files: Readonly<Record<string, Served>>,
  folders: Readonly<Record<string, string>> = {},
  opts: ServeOptions = {},
): Promise<{ origin: string; requests: Request[]; close: () => Promise<void> }> {
  const requests: Request[] = [];
  const drop = new Set(opts.dropOnce);
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    requests.push({ method: req.method ?? "GET", path, range: req.headers.range ?? null });
    const file = files[path];
    if (file) return void res.writeHead(file.status ?? 200, { "Content-Type": file.type, "Cache-Control": "no-store", ...file.headers }).end(file.body);
    const prefix = Object.keys(folders).find((p) => path.startsWith(p) && !path.slice(p.length).includes(".."));
    const local = prefix === undefined ? null : join(folders[prefix]!, path.slice(prefix.length));
    // The Hub's answer for a missing file, which @huggingface/hub reads as "no such file".
    const answer = local === null ? null : fileAnswer(local, req.headers.range);
    if (answer === null) return void res.writeHead(404, { "X-Error-Code": "EntryNotFound" }).end();
    const { status, headers, body } = answer;
    res.writeHead(status, headers);
    if (status === 416) return void res.end();
    if (req.method === "GET" && body.length > 1 && drop.delete(path)) {
      // Half the announced bytes, then (once the client has had time to read them) the connection
      // goes: the client sees a truncated body.
      res.write(body.subarray(0, Math.floor(body.length / 2)), () => setTimeout(() => res.destroy(), 200));
      return;
    }
    if (req.method === "GET" && opts.slow?.includes(path)) {
      const PIECE = 1 << 14;
      const send = (at: number): void => {
        if (at >= body.length || res.destroyed) return void res.end();
        res.write(body.subarray(at, at + PIECE), () => setTimeout(() => send(at + PIECE), 5));
      };
      return send(0);
    }
    res.end(req.method === "HEAD" ? undefined : body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { origin: `http://localhost:${port}`, requests, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/**
 * Headless Chromium with WebGPU enabled (`--enable-unsafe-webgpu`; Vulkan through SwiftShader's
 * ICD when VK_ICD_FILENAMES is unset).
 * @throws Error naming the package to install when Debian's chromium is absent.
 */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: apt-get install chromium`);
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true, // the new headless mode (--headless=new)
    args: ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan"],
    env: { ...process.env, VK_ICD_FILENAMES: process.env["VK_ICD_FILENAMES"] ?? SWIFTSHADER_ICD },
  });
}

/**
 * Opens `url` and waits until the page has set `window.qa` (its module script ran), passing
 * the page's uncaught errors and console errors on as a test failure's reason.
 * @throws Error with the page's errors when it does not get there within 60 s.
 */
export async function openPage(browser: Browser, url: string): Promise<Page> {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => void (m.type() === "error" && errors.push(m.text())));
  await page.goto(url);
  try {
    await page.waitForFunction("window.qa !== undefined", { timeout: 60_000 });
  } catch (e) {
    throw new Error(`${url} did not load qalign: ${errors.join("; ") || (e as Error).message}`);
  }
  return page;
}

/**
 * Whether the page has a WebGPU adapter; without one the test is skipped (printing why), or
 * fails when QALIGN_REQUIRE_WEBGPU=1, as for Node's adapter (helpers/devices.ts).
 */
export async function pageAdapterOrSkip(page: Page, ctx: TestContext): Promise<void> {
  const has = await page.evaluate(async () => {
    const gpu = (globalThis as unknown as { navigator: { gpu?: { requestAdapter(): Promise<unknown> } } }).navigator.gpu;
    return gpu !== undefined && (await gpu.requestAdapter()) !== null;
  });
  if (has) return;
  const why = "the page has no WebGPU adapter (chromium with --enable-unsafe-webgpu and SwiftShader's Vulkan ICD)";
  if (process.env["QALIGN_REQUIRE_WEBGPU"] === "1") throw new Error(`QALIGN_REQUIRE_WEBGPU=1 but ${why}`);
  process.stderr.write(`skipping "${ctx.task.name}": ${why}\n`);
  ctx.skip(why);
}

/**
 * In the page: `steps` AdamW steps (lr 1e-2) of the question-translation loss on two fixed
 * examples (a prompt, then target tokens; ids below the fixtures' vocab_size 320), on `adapter`
 * of `model`. Self-contained, since it runs in the page: pass its `toString()` and evaluate it there.
 * @returns the mean target loss before the first step and after each
 */
export async function pageLoraSteps(qa: any, model: any, adapter: any, device: unknown, steps: number): Promise<number[]> {
  const examples = [
    { ids: [1, 17, 42, 99, 5, 230, 64, 8], promptLen: 3 },
    { ids: [1, 250, 3, 77, 12, 40], promptLen: 2 },
  ];
  const losses: number[] = [(await qa.meanTargetLoss(model, examples, 2)).loss];
  const opt = new qa.AdamW(adapter.params, { lr: 1e-2 });
  for (let step = 0; step < steps; step++) {
    qa.tidy(() => {
      const batch = qa.collate(examples, device);
      qa.targetNllSum(model, batch).div(batch.targetCount).backward();
    });
    opt.step();
    qa.zeroGrad(adapter.params);
    losses.push((await qa.meanTargetLoss(model, examples, 2)).loss);
  }
  opt.dispose();
  return losses;
}

/**
 * A screenshot of `shot`, decoded in that page (drawn on a canvas): the share of pixels that are
 * not (near) white, and how many distinct colours (4 bits a channel) it has. A blank page has
 * no ink and one colour.
 */
export async function inkOf(shot: Page): Promise<{ share: number; colours: number }> {
  const png = (await shot.screenshot({ encoding: "base64" })) as string;
  return shot.evaluate(async (data: string) => {
    const g = globalThis as unknown as { Image: new () => { src: string; decode(): Promise<void>; width: number; height: number }; document: { createElement(t: "canvas"): { width: number; height: number; getContext(c: "2d"): { drawImage(i: unknown, x: number, y: number): void; getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray } } } } };
    const img = new g.Image();
    img.src = `data:image/png;base64,${data}`;
    await img.decode();
    const canvas = g.document.createElement("canvas");
    [canvas.width, canvas.height] = [img.width, img.height];
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, img.width, img.height).data;
    let inked = 0;
    const colours = new Set<number>();
    for (let i = 0; i < px.length; i += 4) {
      if (px[i]! < 200 || px[i + 1]! < 200 || px[i + 2]! < 200) inked++;
      colours.add(((px[i]! >> 4) << 8) | ((px[i + 1]! >> 4) << 4) | (px[i + 2]! >> 4));
    }
    return { share: inked / (px.length / 4), colours: colours.size };
  }, png);
}
