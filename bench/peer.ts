/**
 * The peer: TensorFlow.js's WebGPU backend (@tensorflow/tfjs-backend-webgpu, a dev dependency) on
 * the same Dawn adapter as qalign. In Node, tfjs finds WebGPU through `navigator.gpu`; it is given
 * the `GPU` object qalign's backend was created from, so both request their devices from the same
 * Dawn instance and adapter.
 *
 * Timing as for qalign: N ops recorded back to back, one wait, no readback of results. With the
 * `timestamp-query` feature tfjs's own `tf.time` reports the summed GPU time of its kernels
 * (`kernelMs`); without it, wall clock around the N ops and `onSubmittedWorkDone`.
 */
import { installedVersion } from "../src/io/provenance.ts";
import type { Clock, Contender, Timing } from "./harness.ts";
import { PEER_ENGINE, relErr, withdraw } from "./harness.ts";

type Tf = typeof import("@tensorflow/tfjs-core");

/** The internals of tfjs's WebGPU backend that timing needs (not part of its typed API). */
interface TfWebGpuBackend {
  device: GPUDevice;
  commandEncoder: GPUCommandEncoder | null;
  endComputePassEncoder(): void;
  submitQueue(): void;
}

/**
 * A ready TensorFlow.js WebGPU backend, or why there is none. `deviceErrors` collects what its
 * device reported (tfjs does not check: a failed allocation leaves it timing commands that do
 * nothing), for the cases to check after timing.
 */
export type Peer =
  | { ok: true; tf: Tf; backend: TfWebGpuBackend; version: string; timestamps: boolean; deviceErrors: string[] }
  | { ok: false; error: string; version: string | null };

/**
 * Starts TensorFlow.js's WebGPU backend on `gpu` (qalign's Dawn GPU object). Never throws: a
 * failure is returned, so the benchmark reports it and goes on without the peer.
 */
export async function startPeer(gpu: GPU): Promise<Peer> {
  const v = await installedVersion("@tensorflow/tfjs-backend-webgpu");
  try {
    // tfjs-backend-webgpu registers itself at import time only if navigator.gpu exists.
    const g = globalThis as { navigator?: object };
    g.navigator ??= {};
    Object.defineProperty(g.navigator, "gpu", { value: gpu, configurable: true });
    const tf = await import("@tensorflow/tfjs-core");
    await import("@tensorflow/tfjs-backend-webgpu");
    if (!(await tf.setBackend("webgpu"))) return { ok: false, error: "tf.setBackend('webgpu') returned false", version: v };
    await tf.ready();
    const backend = tf.backend() as unknown as TfWebGpuBackend;
    const deviceErrors: string[] = [];
    backend.device.addEventListener("uncapturederror", (ev) => deviceErrors.push((ev as GPUUncapturedErrorEvent).error.message.split("\n")[0]!));
    return { ok: true, tf, backend, version: v ?? "?", timestamps: backend.device.features.has("timestamp-query"), deviceErrors };
  } catch (e) {
    return { ok: false, error: (e as Error).message, version: v };
  }
}

/** Submits what tfjs has recorded and waits for the queue. */
async function drain(p: Extract<Peer, { ok: true }>): Promise<void> {
  if (p.backend.commandEncoder) {
    p.backend.endComputePassEncoder();
    p.backend.submitQueue();
  }
  await p.backend.device.queue.onSubmittedWorkDone();
}

/** Times `n` calls of `op` (each result disposed) the way the file comment says. */
async function timeOps(p: Extract<Peer, { ok: true }>, n: number, op: () => { dispose(): void }): Promise<{ ms: number; clock: Clock }> {
  await drain(p);
  if (p.timestamps) {
    const info = await p.tf.time(() => {
      for (let i = 0; i < n; i++) op().dispose();
    });
    if (typeof info.kernelMs === "number") return { ms: info.kernelMs, clock: "gpu-timestamps" };
  }
  const t0 = performance.now();
  for (let i = 0; i < n; i++) op().dispose();
  await drain(p);
  return { ms: performance.now() - t0, clock: "wall" };
}

/** Uniform values in [-1, 1) from a seed (xorshift32), as host data for both engines. */
export function hostRandom(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (s >>> 0) / 2 ** 31 - 1;
  }
  return out;
}

/** A tfjs contender and a way to read its result once (to check it agrees with qalign). */
export interface PeerCase {
  contender: Contender;
  result(): Promise<Float32Array>;
  dispose(): void;
}

/**
 * x [M, K] @ w [N, K]^T in tfjs (tf.matMul with transposeB), inputs uploaded once. TensorFlow.js
 * binds each tensor whole, so a w above `maxBindingBytes` (the lm_head of a large vocabulary) is
 * given to it as row blocks that each fit, one tf.matMul per block: what a tfjs user has to
 * write. The blocks' outputs are not concatenated in the timed op (the peer saves that copy).
 */
export function peerMatmul(p: Extract<Peer, { ok: true }>, x: Float32Array, w: Float32Array, M: number, N: number, K: number, maxBindingBytes: number): PeerCase {
  const a = p.tf.tensor2d(x, [M, K]);
  const rowsPerBlock = Math.max(1, Math.floor(maxBindingBytes / (4 * K)));
  const blocks: { dispose(): void }[] = [];
  for (let n0 = 0; n0 < N; n0 += rowsPerBlock) {
    const n1 = Math.min(N, n0 + rowsPerBlock);
    blocks.push(p.tf.tensor2d(w.subarray(n0 * K, n1 * K), [n1 - n0, K]));
  }
  const ops = () => blocks.map((b) => p.tf.matMul(a, b as Parameters<Tf["matMul"]>[1], false, true));
  const op = () => {
    const ys = ops();
    return { dispose: () => ys.forEach((y) => y.dispose()) };
  };
  const variant = blocks.length === 1 ? "tf.matMul" : `tf.matMul x ${blocks.length} row blocks of w`;
  return {
    contender: { engine: PEER_ENGINE, variant, time: (n) => timeOps(p, n, op) },
    result: async () => {
      const ys = ops();
      // Block outputs are [M, rows]; interleave them back into [M, N].
      const out = new Float32Array(M * N);
      let n0 = 0;
      for (const y of ys) {
        const rows = y.shape[1]!;
        const data = (await y.data()) as Float32Array;
        for (let m = 0; m < M; m++) out.set(data.subarray(m * rows, (m + 1) * rows), m * N + n0);
        n0 += rows;
        y.dispose();
      }
      return out;
    },
    dispose: () => {
      a.dispose();
      blocks.forEach((b) => b.dispose());
    },
  };
}

/** Softmax over the last axis of [rows, cols] in tfjs. */
export function peerSoftmax(p: Extract<Peer, { ok: true }>, x: Float32Array, rows: number, cols: number): PeerCase {
  const a = p.tf.tensor2d(x, [rows, cols]);
  const op = () => p.tf.softmax(a);
  return {
    contender: { engine: PEER_ENGINE, variant: "tf.softmax", time: (n) => timeOps(p, n, op) },
    result: async () => {
      const y = op();
      const data = (await y.data()) as Float32Array;
      y.dispose();
      return data;
    },
    dispose: () => a.dispose(),
  };
}

/**
 * After a case: checks that the peer did the work, i.e. its device reported no error since
 * `errorsBefore` and its result agrees with qalign's (max relative difference below 1e-3, far
 * above f32 rounding); otherwise withdraws its timing (see `withdraw`). Returns the difference.
 */
export async function checkPeer(p: Extract<Peer, { ok: true }>, errorsBefore: number, peerCase: PeerCase, reference: Float32Array | null, timings: Timing[]): Promise<number | null> {
  const diff = reference ? relErr(await peerCase.result(), reference) : null;
  const errors = p.deviceErrors.slice(errorsBefore);
  const r = timings.find((t) => t.engine === PEER_ENGINE)!;
  r.extra = { ...r.extra, ...(diff !== null ? { maxRelDiffToQalign: diff } : {}) };
  if (errors.length > 0 || (diff !== null && !(diff < 1e-3))) {
    const why = errors.length > 0 ? `its device reported: ${[...new Set(errors)].join("; ")}` : `its result differs from qalign's (max relative difference ${diff})`;
    withdraw(timings, PEER_ENGINE, `TensorFlow.js did not do the work, so its time is not reported: ${why}`);
  }
  return diff;
}

/** Versions of the packages the benchmark reports. */
export async function packageVersions(): Promise<Record<string, string | null>> {
  const names = ["webgpu", "@tensorflow/tfjs-core", "@tensorflow/tfjs-backend-webgpu", "@jax-js/jax", "onnxruntime-node", "typescript", "tsx"];
  return Object.fromEntries(await Promise.all(names.map(async (n) => [n, await installedVersion(n)] as const)));
}
