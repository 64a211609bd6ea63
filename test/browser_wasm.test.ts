import type { Browser, Page } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bundleBrowserEntry, launchChromium, openPage, QALIGN_PAGE, serve } from "./helpers/browser.ts";
import { expectClose } from "./helpers/close.ts";

/**
 * The wasm device in headless Chromium, on two pages from the same bundle of the browser entry:
 * a plain page (not cross-origin isolated: no SharedArrayBuffer, so one thread on a private
 * memory) and a cross-origin-isolated one (COOP same-origin + COEP require-corp: shared memory
 * and Blob-URL workers). On each, matmul and attention forward and backward on wasm equal the
 * cpu device in the same page, at sizes above the device's threshold for using its workers.
 * Tolerances as the conformance suite's (README): 1e-4 for matmul and attention.
 */
const ISOLATED = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" };

let close: () => Promise<void> = async () => undefined;
let browser: Browser | null = null;
const pages: Record<"plain" | "isolated", Page | null> = { plain: null, isolated: null };

beforeAll(async () => {
  const server = await serve({
    "/": { type: "text/html", body: QALIGN_PAGE },
    ...(await bundleBrowserEntry()),
    "/isolated/": { type: "text/html", body: QALIGN_PAGE, headers: ISOLATED },
  });
  close = server.close;
  browser = await launchChromium();
  pages.plain = await openPage(browser, `${server.origin}/`);
  pages.isolated = await openPage(browser, `${server.origin}/isolated/`);
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await close();
});

/** What the page's function sees: qalign as the page loaded it (plain JavaScript, typed loosely). */
type PageGlobals = { qa: any; crossOriginIsolated: boolean };

/** Runs the checks in `page` on a wasm device asked for 2 threads; returns its results and the cpu device's. */
async function runIn(page: Page) {
  return page.evaluate(async () => {
    const { qa, crossOriginIsolated } = globalThis as unknown as PageGlobals;
    const [wasm, cpu] = [await qa.getDevice("wasm", { threads: 2 }), await qa.getDevice("cpu")];
    const a = qa.randn([3, 67, 90], { seed: 1, device: cpu });
    const b = qa.randn([130, 90], { seed: 2, device: cpu });
    const q = qa.randn([2, 4, 40, 16], { seed: 4, device: cpu });
    const k = qa.randn([2, 2, 40, 16], { seed: 5, device: cpu });
    const v = qa.randn([2, 2, 40, 16], { seed: 6, device: cpu });
    const weights = qa.randn([2, 4, 40, 16], { seed: 7, device: cpu });
    const on = async (d: unknown) => {
      const ab = Array.from(await (await a.to(d)).matmul((await b.to(d)).transpose(0, 1)).data()) as number[];
      const [qd, kd, vd] = [(await q.to(d)).requireGrad(), (await k.to(d)).requireGrad(), (await v.to(d)).requireGrad()];
      const out = qa.attention(qd, kd, vd, { causal: true });
      out.mul(await weights.to(d)).sum().backward();
      const grads = await Promise.all([qd, kd, vd].map(async (t) => Array.from(await t.grad.data()) as number[]));
      return { ab, out: Array.from(await out.data()) as number[], grads };
    };
    return { threads: wasm.threads as number, name: wasm.name as string, crossOriginIsolated, wasm: await on(wasm), cpu: await on(cpu) };
  });
}

describe("the wasm device in headless Chromium", () => {
  for (const kind of ["plain", "isolated"] as const) {
    it(`${kind} page: ${kind === "plain" ? "one thread without SharedArrayBuffer" : "worker threads on shared memory"}; matmul and attention equal the cpu device`, async () => {
      const r = await runIn(pages[kind]!);
      expect(r.name).toBe("wasm");
      expect(r.crossOriginIsolated).toBe(kind === "isolated");
      expect(r.threads).toBe(kind === "isolated" ? 2 : 1);
      expectClose(r.wasm.ab, r.cpu.ab, 1e-4, "a @ b^T");
      expectClose(r.wasm.out, r.cpu.out, 1e-4, "attention output");
      for (const [i, name] of ["dq", "dk", "dv"].entries()) expectClose(r.wasm.grads[i]!, r.cpu.grads[i]!, 1e-4, name);
    }, 120_000);
  }
});
