/**
 * The `wasm` device's threads: `threads - 1` workers plus the calling thread, each holding an
 * instance of the same kernel modules over the one shared memory. A dispatch is synchronous
 * (the Backend contract returns storages, not promises): the caller writes the kernel's index
 * and integer arguments into a small control block (a SharedArrayBuffer of Int32), bumps its
 * generation counter and wakes the workers (Atomics.notify), runs its own share as thread 0,
 * then waits until every worker has counted itself done. Each kernel splits its work by thread
 * index in a fixed way, so which thread computes what never changes the result.
 *
 * Workers are started from source text (a Node worker_threads `eval` worker, or a Blob URL
 * worker in a browser); without SharedArrayBuffer (a page that is not cross-origin isolated)
 * the pool has no workers and every kernel runs on the calling thread.
 */

import { importNodeOnly } from "../../io/host.ts";

/** One kernel: the module that exports it and its export name. */
export interface KernelRef {
  module: number;
  name: string;
}

// Control block layout (Int32 slots).
const GEN = 0; // dispatch generation, bumped per dispatch; < 0 (after a bump) means stop
const DONE = 1; // workers finished with the current generation
const KERNEL = 2; // index into the kernel list
const ACTIVE = 3; // threads taking part (the others only count themselves done)
const FAILED = 4; // set by a worker whose kernel threw
const STOP = 5; // 1: workers exit
const ARGC = 6;
const ARGS = 8;
const MAX_ARGS = 24;

/** The worker's whole program: instantiate, report ready, then serve dispatches until stopped. */
const WORKER_SOURCE = `
const port = typeof self === "undefined" ? require("node:worker_threads").parentPort : self;
const onInit = (data) => {
  const { modules, memory, control, kernels, tid } = data;
  const instances = modules.map((m) => new WebAssembly.Instance(m, { env: { memory } }).exports);
  const fns = kernels.map((k) => instances[k.module][k.name]);
  const ctl = new Int32Array(control);
  let seen = Atomics.load(ctl, ${GEN});
  port.postMessage("ready");
  for (;;) {
    Atomics.wait(ctl, ${GEN}, seen);
    seen = Atomics.load(ctl, ${GEN});
    if (Atomics.load(ctl, ${STOP}) === 1) return;
    const active = ctl[${ACTIVE}];
    if (tid < active) {
      const args = Array.from(ctl.subarray(${ARGS}, ${ARGS} + ctl[${ARGC}]));
      try { fns[ctl[${KERNEL}]](...args, tid, active); } catch (e) { Atomics.store(ctl, ${FAILED}, 1); }
    }
    Atomics.add(ctl, ${DONE}, 1);
    Atomics.notify(ctl, ${DONE});
  }
};
if (typeof self === "undefined") port.once("message", onInit); else self.onmessage = (e) => onInit(e.data);
`;

/** A started worker, whichever API it came from. */
interface WorkerHandle {
  post(data: unknown): void;
  ready: Promise<void>;
  terminate(): void;
}

const isNode = typeof process !== "undefined" && typeof process.versions?.node === "string";

async function startWorker(): Promise<WorkerHandle> {
  if (isNode) {
    const { Worker } = await importNodeOnly<typeof import("node:worker_threads")>("node:worker_threads");
    const w = new Worker(WORKER_SOURCE, { eval: true });
    w.unref(); // an idle pool never keeps the process alive
    const ready = new Promise<void>((resolve, reject) => {
      w.once("message", () => resolve());
      w.once("error", reject);
    });
    return { post: (d) => w.postMessage(d), ready, terminate: () => void w.terminate() };
  }
  const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
  const w = new Worker(url);
  const ready = new Promise<void>((resolve, reject) => {
    w.onmessage = () => resolve();
    w.onerror = (e) => reject(new Error(`wasm worker failed to start: ${e.message}`));
  });
  return { post: (d) => w.postMessage(d), ready, terminate: () => w.terminate() };
}

/** The number of logical cores (Node's availableParallelism, the browser's hardwareConcurrency). */
export async function coreCount(): Promise<number> {
  if (isNode) return (await importNodeOnly<typeof import("node:os")>("node:os")).availableParallelism();
  return (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency ?? 1;
}

export class WasmPool {
  private readonly ctl: Int32Array;
  private readonly local: ((...args: number[]) => void)[];
  private readonly workers: WorkerHandle[];
  private readonly kernels: readonly KernelRef[];
  /** A browser's main thread may not block in Atomics.wait; it spins on the counter instead. */
  private readonly canBlock: boolean;

  private constructor(
    readonly threads: number,
    kernels: readonly KernelRef[],
    local: ((...args: number[]) => void)[],
    workers: WorkerHandle[],
    ctl: Int32Array,
  ) {
    this.kernels = kernels;
    this.local = local;
    this.workers = workers;
    this.ctl = ctl;
    this.canBlock = isNode || typeof (globalThis as { window?: unknown }).window === "undefined";
  }

  /**
   * Instantiates `modules` on this thread and on `threads - 1` workers over `memory` (which must
   * be shared when threads > 1), resolving once every worker is ready.
   * @throws RangeError when threads is not a positive integer, or > 1 with a private memory.
   */
  static async create(modules: readonly WebAssembly.Module[], memory: WebAssembly.Memory, kernels: readonly KernelRef[], threads: number): Promise<WasmPool> {
    if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`wasm: threads must be a positive integer, got ${threads}`);
    if (threads > 1 && !(memory.buffer instanceof SharedArrayBuffer)) throw new RangeError("wasm: more than one thread needs a shared memory");
    const instances = modules.map((m) => new WebAssembly.Instance(m, { env: { memory } }).exports);
    const local = kernels.map((k) => instances[k.module]![k.name] as (...args: number[]) => void);
    const ctl = new Int32Array(threads > 1 ? new SharedArrayBuffer(4 * (ARGS + MAX_ARGS)) : new ArrayBuffer(4 * (ARGS + MAX_ARGS)));
    const workers = await Promise.all(Array.from({ length: threads - 1 }, startWorker));
    workers.forEach((w, i) => w.post({ modules, memory, control: ctl.buffer, kernels, tid: i + 1 }));
    await Promise.all(workers.map((w) => w.ready));
    return new WasmPool(threads, kernels, local, workers, ctl);
  }

  /**
   * Runs kernel `index` with `args` (then its thread index and count) on `active` threads
   * (1..threads), returning when all are done.
   * @throws Error naming the kernel when it trapped on any thread.
   */
  run(index: number, args: readonly number[], active = this.threads): void {
    const n = Math.max(1, Math.min(this.threads, active));
    const fn = this.local[index]!;
    if (this.threads === 1) {
      fn(...args, 0, 1);
      return;
    }
    if (args.length > MAX_ARGS) throw new RangeError(`wasm: kernel ${this.kernels[index]!.name} has ${args.length} arguments, at most ${MAX_ARGS}`);
    const ctl = this.ctl;
    ctl[KERNEL] = index;
    ctl[ACTIVE] = n;
    ctl[ARGC] = args.length;
    ctl.set(args, ARGS);
    Atomics.store(ctl, DONE, 0);
    Atomics.add(ctl, GEN, 1);
    Atomics.notify(ctl, GEN);
    let failed = false;
    try {
      fn(...args, 0, n);
    } catch {
      failed = true;
    }
    const others = this.threads - 1;
    for (let done = Atomics.load(ctl, DONE); done < others; done = Atomics.load(ctl, DONE)) {
      if (this.canBlock) Atomics.wait(ctl, DONE, done);
    }
    if (failed || Atomics.exchange(ctl, FAILED, 0) === 1) throw new Error(`wasm: kernel ${this.kernels[index]!.name} trapped (an out-of-bounds access: a bad argument)`);
  }

  /** Stops the workers. */
  destroy(): void {
    if (this.threads > 1) {
      Atomics.store(this.ctl, STOP, 1);
      Atomics.add(this.ctl, GEN, 1);
      Atomics.notify(this.ctl, GEN);
    }
    for (const w of this.workers) w.terminate();
  }
}
