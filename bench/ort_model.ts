/**
 * ONNX Runtime CPU end to end, on the same weights as qalign: the checkpoint is exported to ONNX by
 * scripts/export_onnx.py (Debian's PyTorch at /usr/bin/python3) into qalign's cache directory
 * (`<cacheDir>/bench-onnx/<key>.onnx`, never committed; reused while the key, which names the
 * checkpoint's recipe, is the same), then run with a KV cache: prefill feeds the prompt with empty
 * pasts, each decode step one token with the previous presents. Logits are read each step, the
 * next token is the argmax, as qalign's decode case does.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { promisify } from "node:util";
import { cacheDir } from "../src/io/cache.ts";
import type { LlamaConfig } from "../src/model/config.ts";
import type { Contender } from "./harness.ts";
import { wallTime } from "./harness.ts";
import { failedContender } from "./jax_ort.ts";

type Ort = typeof import("onnxruntime-node");
type Session = Awaited<ReturnType<Ort["InferenceSession"]["create"]>>;
type Value = Awaited<ReturnType<Session["run"]>>[string];
type Feeds = Record<string, Value>;

export const ORT_CPU = "onnxruntime cpu";
const PYTHON = "/usr/bin/python3";

/** Prefill and decode contenders for ONNX Runtime CPU on one model. */
export interface OrtEndToEnd {
  prefill(prompt: readonly number[]): Contender;
  /** `decode` tokens after `prompt`; times the steps after the prefill, as qalign's case. */
  decode(prompt: readonly number[], decode: number): Contender;
  dispose(): void;
}

/**
 * Exports (or reuses) `<cacheDir>/bench-onnx/<key>.onnx` for the checkpoint in `dir` and opens it
 * on ONNX Runtime's CPU provider with `threads` intra-op threads. Never throws: a failure gives
 * contenders that report it.
 */
export async function ortEndToEnd(dir: string, key: string, config: LlamaConfig, threads: number, log: (m: string) => void): Promise<OrtEndToEnd> {
  let session: Session;
  let ort: Ort;
  try {
    const out = join(cacheDir(), "bench-onnx", `${key}.onnx`);
    if (!existsSync(out)) {
      log(`exporting ${key} to ONNX with ${PYTHON} scripts/export_onnx.py`);
      await mkdir(join(cacheDir(), "bench-onnx"), { recursive: true });
      await promisify(execFile)(PYTHON, [join(import.meta.dirname, "..", "scripts", "export_onnx.py"), dir, out], { maxBuffer: 1 << 26 });
    }
    ort = createRequire(import.meta.url)("onnxruntime-node") as Ort;
    session = await ort.InferenceSession.create(out, { executionProviders: ["cpu"], intraOpNumThreads: threads });
  } catch (e) {
    const why = `ONNX export or session failed: ${(e as Error).message.split("\n")[0]}`;
    return { prefill: () => failedContender(ORT_CPU, why), decode: () => failedContender(ORT_CPU, why), dispose: () => {} };
  }
  const { num_key_value_heads: Hkv, head_dim: Dh } = config;
  const pastNames = session.inputNames.slice(1);
  const ids = (xs: readonly number[]) => new ort.Tensor("int64", BigInt64Array.from(xs.map(BigInt)), [1, xs.length]);
  /** One forward: returns the argmax of the logits and the presents for the next step. */
  const step = async (tokens: readonly number[], past: Feeds | null) => {
    const feeds: Feeds = { input_ids: ids(tokens) };
    pastNames.forEach((n, i) => (feeds[n] = past ? past[session.outputNames[i + 1]!]! : new ort.Tensor("float32", new Float32Array(0), [1, Hkv, 0, Dh])));
    const r = await session.run(feeds);
    const logits = r["logits"]!.data as Float32Array;
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    return { next: best, presents: r as Feeds };
  };
  return {
    prefill: (prompt) => ({ engine: ORT_CPU, variant: "forward prefill (ONNX export)", time: (n) => wallTime(async () => {
      for (let i = 0; i < n; i++) await step(prompt, null);
    }) }),
    decode: (prompt, decode) => ({
      engine: ORT_CPU,
      variant: "forward decode (KV cache, ONNX export)",
      time: async (n) => {
        let ms = 0;
        for (let i = 0; i < n; i++) {
          let { next, presents } = await step(prompt, null);
          const t0 = performance.now();
          for (let s = 0; s < decode; s++) ({ next, presents } = await step([next], presents));
          ms += performance.now() - t0;
        }
        return { ms, clock: "wall" };
      },
    }),
    dispose: () => void session.release(),
  };
}
