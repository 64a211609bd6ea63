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
 *
 * Failures: a kernel that traps (on any thread) fails its dispatch with an Error naming the
 * kernel and the thread, and the pool stays whole. A worker whose thread ends (terminated, out
 * of memory) cannot say so itself, and the caller, blocked in Atomics.wait, cannot receive its
 * 'exit' event; so in Node an idle watcher thread holds a channel to each worker and, when one
 * closes, marks the worker dead in the control block and wakes the caller. The dispatch then
 * fails naming the kernel and the thread, and the pool continues on the threads before the dead
 * one. (A browser has no such signal: a worker killed mid-dispatch there still hangs it.)
 */

import { importNodeOnly, isNodeHost } from "../../io/host.ts";

/** Products below this many multiply-adds run on the calling thread only (waking workers costs more). */
export const PARALLEL_MIN_MACS = 1 << 16;

/** Elementwise and row kernels below this many elements run on the calling thread only. */
export const PARALLEL_MIN_ELEMENTS = 1 << 15;

/** The bits of `x` rounded to f32, as an i32 (how kernels take float arguments). */
export const f32Bits = (x: number): number => new Int32Array(new Float32Array([x]).buffer)[0]!;

/** One kernel: the module that exports it and its export name. */
export interface KernelRef {
  module: number;
  name: string;
}

// Control block layout (Int32 slots); then per worker tid (1..threads-1) a done slot and an alive slot.
const GEN = 0; // dispatch generation, bumped per dispatch
const EVENTS = 1; // bumped (and notified) whenever a worker finishes or dies: what the caller waits on
const KERNEL = 2; // index into the kernel list
const ACTIVE = 3; // threads taking part (the others only count themselves done)
const FAILED = 4; // tid + 1 of a worker whose kernel threw (trapped)
const STOP = 5; // 1: workers exit
const ARGC = 6;
const ARGS = 8;
const MAX_ARGS = 24;
const PER_WORKER = ARGS + MAX_ARGS;
/** Slot holding the last generation worker `tid` finished. */
const doneSlot = (tid: number) => PER_WORKER + 2 * tid;
/** Slot that is 1 while worker `tid` lives, 0 once its thread is gone. */
const aliveSlot = (tid: number) => PER_WORKER + 2 * tid + 1;
const controlInts = (threads: number) => PER_WORKER + 2 * threads;

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
      try { fns[ctl[${KERNEL}]](...args, tid, active); } catch (e) { Atomics.store(ctl, ${FAILED}, tid + 1); }
    }
    Atomics.store(ctl, ${PER_WORKER} + 2 * tid, seen);
    Atomics.add(ctl, ${EVENTS}, 1);
    Atomics.notify(ctl, ${EVENTS});
  }
};
if (typeof self === "undefined") port.once("message", onInit); else self.onmessage = (e) => onInit(e.data);
`;

/**
 * The watcher's program (Node): it holds one end of a MessageChannel per worker, the worker
 * the other. When a worker's thread ends for any reason (terminated, out of memory, an
 * uncaught error), its end closes and the watcher, idle on its own event loop, marks the
 * worker dead and wakes the caller, which is blocked in Atomics.wait and could not see the
 * worker's 'exit' event until the dispatch returned.
 */
const WATCHER_SOURCE = `
const { workerData } = require("node:worker_threads");
const ctl = new Int32Array(workerData.control);
workerData.ports.forEach((p, i) => {
  const tid = i + 1;
  p.on("message", () => {});
  p.on("close", () => {
    Atomics.store(ctl, ${PER_WORKER} + 2 * tid + 1, 0);
    Atomics.add(ctl, ${EVENTS}, 1);
    Atomics.notify(ctl, ${EVENTS});
  });
});
`;

/** A started worker, whichever API it came from. */
interface WorkerHandle {
  post(data: unknown): void;
  ready: Promise<void>;
  terminate(): void;
  /** Why the thread ended (its error, or its exit code), once the host told us. */
  fate: string | null;
}

const isNode = isNodeHost();

/** A started worker; in Node with one end of a channel (`watchPort`) that closes when its thread ends. */
async function startWorker(watchPort: unknown): Promise<WorkerHandle> {
  if (isNode) {
    const { Worker } = await importNodeOnly<typeof import("node:worker_threads")>("node:worker_threads");
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { watchPort }, transferList: [watchPort as import("node:worker_threads").MessagePort] });
    w.unref(); // an idle pool never keeps the process alive
    const handle: WorkerHandle = { post: (d) => w.postMessage(d), ready: Promise.resolve(), terminate: () => void w.terminate(), fate: null };
    handle.ready = new Promise<void>((resolve, reject) => {
      w.once("message", () => resolve());
      w.once("error", reject);
    });
    // Kept for the whole life of the worker: an 'error' event nobody listens to would end the process.
    w.on("error", (e: Error) => (handle.fate = `${e.name}: ${e.message}`));
    w.on("exit", (code: number) => (handle.fate ??= `exit code ${code}`));
    return handle;
  }
  const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
  const w = new Worker(url);
  const handle: WorkerHandle = { post: (d) => w.postMessage(d), ready: Promise.resolve(), terminate: () => w.terminate(), fate: null };
  handle.ready = new Promise<void>((resolve, reject) => {
    w.onmessage = () => resolve();
    w.onerror = (e) => {
      handle.fate = e.message;
      reject(new Error(`wasm worker failed to start: ${e.message}`));
    };
  });
  return handle;
}

/** Node: starts the watcher over one channel per worker; returns the workers' ends and the watcher's stop. */
async function startWatcher(control: SharedArrayBuffer, workers: number): Promise<{ ends: unknown[]; stop: () => void }> {
  if (!isNode || workers === 0) return { ends: new Array<unknown>(workers).fill(null), stop: () => {} };
  const { Worker, MessageChannel } = await importNodeOnly<typeof import("node:worker_threads")>("node:worker_threads");
  const channels = Array.from({ length: workers }, () => new MessageChannel());
  const ports = channels.map((c) => c.port2);
  const watcher = new Worker(WATCHER_SOURCE, { eval: true, workerData: { control, ports }, transferList: ports });
  watcher.unref();
  return { ends: channels.map((c) => c.port1), stop: () => void watcher.terminate() };
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
  private readonly stopWatcher: () => void;
  /** A browser's main thread may not block in Atomics.wait; it spins on the counter instead. */
  private readonly canBlock: boolean;
  /**
   * Threads a dispatch may use: `threads`, until a worker dies; then 1 + the live workers before
   * the first dead one (a kernel splits work over tids 0..active-1, so only a prefix can serve).
   */
  private usable: number;

  private constructor(
    readonly threads: number,
    kernels: readonly KernelRef[],
    local: ((...args: number[]) => void)[],
    workers: WorkerHandle[],
    ctl: Int32Array,
    stopWatcher: () => void,
  ) {
    this.kernels = kernels;
    this.local = local;
    this.workers = workers;
    this.ctl = ctl;
    this.stopWatcher = stopWatcher;
    this.usable = threads;
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
    const bytes = 4 * controlInts(threads);
    const ctl = new Int32Array(threads > 1 ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
    for (let tid = 1; tid < threads; tid++) ctl[aliveSlot(tid)] = 1;
    const watcher = await startWatcher(ctl.buffer as SharedArrayBuffer, threads - 1);
    const workers = await Promise.all(watcher.ends.map(startWorker));
    workers.forEach((w, i) => w.post({ modules, memory, control: ctl.buffer, kernels, tid: i + 1 }));
    await Promise.all(workers.map((w) => w.ready));
    return new WasmPool(threads, kernels, local, workers, ctl, watcher.stop);
  }

  /** Threads dispatches run on now: `threads`, fewer after a worker died. */
  get liveThreads(): number {
    return this.usable;
  }

  /**
   * Runs kernel `index` with `args` (then its thread index and count) on `active` threads
   * (1..liveThreads), returning when all are done. A worker whose thread ended (terminated by
   * the host, out of memory) fails the first dispatch that needed it; later dispatches run on
   * the workers before the first dead one (the same results, fewer threads).
   * @throws Error naming the kernel when it trapped on any thread, or when a worker died during
   *   it (its share of the output is missing); RangeError for more than MAX_ARGS arguments.
   */
  run(index: number, args: readonly number[], active = this.threads): void {
    const name = this.kernels[index]!.name;
    const n = Math.max(1, Math.min(this.usable, active));
    const fn = this.local[index]!;
    if (this.threads === 1) {
      this.runLocal(fn, name, args, 0, 1);
      return;
    }
    if (args.length > MAX_ARGS) throw new RangeError(`wasm: kernel ${name} has ${args.length} arguments, at most ${MAX_ARGS}`);
    const ctl = this.ctl;
    ctl[KERNEL] = index;
    ctl[ACTIVE] = n;
    ctl[ARGC] = args.length;
    ctl.set(args, ARGS);
    Atomics.store(ctl, FAILED, 0);
    const gen = Atomics.add(ctl, GEN, 1) + 1;
    Atomics.notify(ctl, GEN);
    let trap: unknown = null;
    try {
      fn(...args, 0, n);
    } catch (e) {
      trap = e;
    }
    const dead = this.waitWorkers(gen);
    const failed = Atomics.load(ctl, FAILED);
    if (dead.length > 0) this.dropDeadWorkers();
    const died = dead.filter((tid) => tid < n);
    if (died.length > 0) {
      const fates = died.map((tid) => `${tid}${this.workers[tid - 1]!.fate ? ` (${this.workers[tid - 1]!.fate})` : ""}`).join(", ");
      throw new Error(
        `wasm: kernel ${name} failed: worker thread ${fates} ended before finishing its share of the dispatch, so that share of the output is missing; the device continues on ${this.usable} thread${this.usable > 1 ? "s" : ""}`,
      );
    }
    if (trap !== null || failed !== 0) {
      const where = trap !== null ? `the calling thread (${String(trap)})` : `worker thread ${failed - 1}`;
      throw new Error(`wasm: kernel ${name} trapped on ${where}: an out-of-bounds access or a bad argument; the device stays usable`);
    }
  }

  /** A one-thread dispatch on the calling thread, a trap rethrown with the kernel's name. */
  private runLocal(fn: (...args: number[]) => void, name: string, args: readonly number[], tid: number, n: number): void {
    try {
      fn(...args, tid, n);
    } catch (e) {
      throw new Error(`wasm: kernel ${name} trapped on the calling thread (${String(e)}): an out-of-bounds access or a bad argument; the device stays usable`);
    }
  }

  /** Lowers `usable` to 1 + the live workers before the first dead one. */
  private dropDeadWorkers(): void {
    for (let tid = 1; tid < this.usable; tid++) {
      if (Atomics.load(this.ctl, aliveSlot(tid)) === 0) this.usable = tid;
    }
  }

  /**
   * Waits until every live worker has finished generation `gen`; returns the tids of the
   * workers found dead instead (never counted done for `gen`), in order.
   */
  private waitWorkers(gen: number): number[] {
    const ctl = this.ctl;
    for (;;) {
      const events = Atomics.load(ctl, EVENTS);
      const died: number[] = [];
      let pending = false;
      for (let tid = 1; tid < this.threads; tid++) {
        if (Atomics.load(ctl, doneSlot(tid)) === gen) continue;
        if (Atomics.load(ctl, aliveSlot(tid)) === 0) died.push(tid);
        else pending = true;
      }
      if (!pending) return died;
      if (this.canBlock) Atomics.wait(ctl, EVENTS, events);
    }
  }

  /**
   * Terminates worker `tid` (1..threads-1) as a host would kill its thread; the pool notices at
   * its next dispatch. For tests of that path.
   */
  terminateWorker(tid: number): void {
    this.workers[tid - 1]!.terminate();
  }

  /** Stops the workers and the watcher. */
  destroy(): void {
    if (this.threads > 1) {
      Atomics.store(this.ctl, STOP, 1);
      Atomics.add(this.ctl, GEN, 1);
      Atomics.notify(this.ctl, GEN);
    }
    for (const w of this.workers) w.terminate();
    this.stopWatcher();
  }
}
