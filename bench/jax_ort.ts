/**
 * The peers beside TensorFlow.js: jax-js (@jax-js/jax: its wasm backend, JIT-generated
 * WebAssembly, and its webgpu backend on the same Dawn adapter as qalign) and ONNX Runtime
 * (onnxruntime-node: its CPU provider, MLAS, and the webgpu execution provider it bundles on
 * Linux x64). All are dev dependencies. A peer that fails to load is kept with its error, so every
 * case reports it as failed instead of dropping it.
 *
 * Notes for reading the numbers: jax-js's wasm backend starts worker threads only where a global
 * `Worker` exists (browsers, Deno), so in Node it runs on one thread; ONNX Runtime is given as
 * many intra-op threads as qalign's wasm device. ONNX Runtime's outputs are copied to host
 * memory per run (its Node API returns host tensors), which its time includes.
 */
import { createRequire } from "node:module";
import { installedVersion } from "../src/io/provenance.ts";
import type { Contender, Timing } from "./harness.ts";
import { relErr, wallTime } from "./harness.ts";
import { linearModel } from "./onnx.ts";
import type { PeerCase } from "./peer.ts";

type Jax = typeof import("@jax-js/jax");
type Ort = typeof import("onnxruntime-node");

/** One peer engine: ready with a way to build cases, or why it is not. */
export interface CpuSidePeer {
  engine: string;
  version: string | null;
  error: string | null;
  /** y [M, N] = x [M, K] @ w [N, K]^T; only when error is null. */
  linear?: (x: Float32Array, w: Float32Array, M: number, N: number, K: number) => Promise<PeerCase>;
}

const require = createRequire(import.meta.url);

/** w [N, K] transposed to [K, N] on the host (setup, untimed): jax-js's natural right operand. */
function transposed(w: Float32Array, N: number, K: number): Float32Array {
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) out[k * N + n] = w[n * K + k]!;
  return out;
}

function jaxPeer(jax: Jax, device: "wasm" | "webgpu", version: string | null): CpuSidePeer {
  const np = jax.numpy;
  return {
    engine: `jax-js ${device}`,
    version,
    error: null,
    linear: async (x, w, M, N, K) => {
      jax.defaultDevice(device);
      const a = np.array(x).reshape([M, K]);
      const b = np.array(transposed(w, N, K)).reshape([K, N]);
      const op = async () => {
        const y = np.matmul(a.ref, b.ref);
        await y.blockUntilReady();
        return y;
      };
      const contender: Contender = {
        engine: `jax-js ${device}`,
        variant: "np.matmul",
        time: (n) => wallTime(async () => {
          for (let i = 0; i < n; i++) (await op()).dispose();
        }),
      };
      return {
        contender,
        result: async () => {
          const y = await op();
          return (await y.data()) as Float32Array;
        },
        dispose: () => {
          a.dispose();
          b.dispose();
        },
      };
    },
  };
}

function ortPeer(ort: Ort, ep: "cpu" | "webgpu", threads: number, version: string | null): CpuSidePeer {
  return {
    engine: `onnxruntime ${ep}`,
    version,
    error: null,
    linear: async (x, w, M, N, K) => {
      const session = await ort.InferenceSession.create(linearModel(M, N, K, w), { executionProviders: [ep], intraOpNumThreads: threads });
      const feeds = { x: new ort.Tensor("float32", x, [M, K]) };
      const run = async () => (await session.run(feeds))["y"]!.data as Float32Array;
      return {
        contender: {
          engine: `onnxruntime ${ep}`,
          variant: "Gemm transB (weight an initializer)",
          time: (n) => wallTime(async () => {
            for (let i = 0; i < n; i++) await run();
          }),
        },
        result: run,
        dispose: () => void session.release(),
      };
    },
  };
}

/**
 * Loads jax-js and ONNX Runtime. `gpu` is qalign's Dawn GPU object (null without webgpu): jax-js
 * reads `navigator.gpu` and `navigator.userAgent` when it is imported, so both are set first.
 * Never throws: failures are returned as peers with an error.
 */
export async function startCpuSidePeers(gpu: GPU | null, threads: number): Promise<CpuSidePeer[]> {
  const peers: CpuSidePeer[] = [];
  const jaxVersion = await installedVersion("@jax-js/jax");
  try {
    const g = globalThis as { navigator?: Record<string, unknown> };
    g.navigator ??= {};
    if (gpu && !g.navigator["gpu"]) Object.defineProperty(g.navigator, "gpu", { value: gpu, configurable: true });
    if (!g.navigator["userAgent"]) Object.defineProperty(g.navigator, "userAgent", { value: `Node.js ${process.version}`, configurable: true });
    const jax = await import("@jax-js/jax");
    const available = await jax.init(...(gpu ? (["wasm", "webgpu"] as const) : (["wasm"] as const)));
    for (const device of ["wasm", "webgpu"] as const) {
      if (available.includes(device)) peers.push(jaxPeer(jax, device, jaxVersion));
      else peers.push({ engine: `jax-js ${device}`, version: jaxVersion, error: gpu || device === "wasm" ? `jax.init() did not bring up ${device}` : "not started: no WebGPU adapter" });
    }
  } catch (e) {
    for (const device of ["wasm", "webgpu"]) peers.push({ engine: `jax-js ${device}`, version: jaxVersion, error: `failed to load: ${(e as Error).message}` });
  }
  const ortVersion = await installedVersion("onnxruntime-node");
  try {
    const ort = require("onnxruntime-node") as Ort;
    const backends = ort.listSupportedBackends().map((b) => b.name);
    for (const ep of ["cpu", "webgpu"] as const) {
      if (ep === "webgpu" && !gpu) peers.push({ engine: `onnxruntime ${ep}`, version: ortVersion, error: "not started: no WebGPU adapter" });
      else if (backends.includes(ep)) peers.push(ortPeer(ort, ep, threads, ortVersion));
      else peers.push({ engine: `onnxruntime ${ep}`, version: ortVersion, error: `this build lists no ${ep} provider (has ${backends.join(", ")})` });
    }
  } catch (e) {
    for (const ep of ["cpu", "webgpu"]) peers.push({ engine: `onnxruntime ${ep}`, version: ortVersion, error: `failed to load: ${(e as Error).message}` });
  }
  return peers;
}

/** A contender standing for a peer that could not take part: its timing carries the reason. */
export function failedContender(engine: string, reason: string): Contender {
  return {
    engine,
    variant: "-",
    time: () => Promise.reject(new Error(reason)),
  };
}

/**
 * The peers' contenders for one linear case, each built on its engine; a peer that failed to load
 * or to build the case is a failed contender. `checks` collects, per engine, a function that
 * compares its result with qalign's after timing (withdrawing a timing that disagrees: max
 * relative difference above 1e-3, far above f32 rounding).
 */
export async function peerLinearContenders(
  peers: readonly CpuSidePeer[],
  x: Float32Array,
  w: Float32Array,
  M: number,
  N: number,
  K: number,
): Promise<{ contenders: Contender[]; check: (timings: Timing[], reference: Float32Array | null) => Promise<void>; dispose: () => void }> {
  const contenders: Contender[] = [];
  const built: { engine: string; pc: PeerCase }[] = [];
  for (const p of peers) {
    if (p.error !== null || !p.linear) {
      contenders.push(failedContender(p.engine, p.error ?? "no linear case"));
      continue;
    }
    try {
      const pc = await p.linear(x, w, M, N, K);
      built.push({ engine: p.engine, pc });
      contenders.push(pc.contender);
    } catch (e) {
      contenders.push(failedContender(p.engine, `could not build the case: ${(e as Error).message}`));
    }
  }
  /** Drops one engine's timing (and only its own: the tfjs ratios of the others stay). */
  const drop = (t: Timing, reason: string) => Object.assign(t, { medianMs: null, minMs: null, maxMs: null, spreadPct: null, throughput: null, vsPeer: null, error: reason });
  return {
    contenders,
    check: async (timings, reference) => {
      if (!reference) return;
      for (const { engine, pc } of built) {
        const t = timings.find((r) => r.engine === engine);
        if (!t || t.medianMs === null) continue;
        let diff: number;
        try {
          diff = relErr(await pc.result(), reference);
        } catch (e) {
          drop(t, `its result could not be read: ${(e as Error).message}`);
          continue;
        }
        t.extra = { ...t.extra, maxRelDiffToQalign: diff };
        if (!(diff < 1e-3)) drop(t, `${engine} did not do the work, its result differs from qalign's (max relative difference ${diff})`);
      }
    },
    dispose: () => built.forEach(({ pc }) => pc.dispose()),
  };
}
