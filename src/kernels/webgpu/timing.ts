import type { CommandQueue } from "./queue.ts";
import type { ErrorScopes } from "./scopes.ts";

/**
 * GPU-side timing with the adapter's `timestamp-query` feature: while a `PassTimer` is attached
 * to the queue, every compute pass it opens writes a timestamp at its start and its end into one
 * query set; the time of the recorded work is the sum of the pass durations.
 */

/** Timestamp queries of one measurement: two per compute pass, 4096 in all (2048 passes). */
const QUERIES = 4096;

/** The query set of one measurement and how much of it the passes used. */
export class PassTimer {
  /** Queries written so far. */
  used = 0;
  /** Set when a pass found no room left: the measurement is then incomplete. */
  overflow = false;

  constructor(readonly set: GPUQuerySet) {}

  /** The timestamp writes for the next compute pass, or undefined when the set is full. */
  next(): GPUComputePassTimestampWrites | undefined {
    if (this.used + 2 > this.set.count) {
      this.overflow = true;
      return undefined;
    }
    const writes = { querySet: this.set, beginningOfPassWriteIndex: this.used, endOfPassWriteIndex: this.used + 1 };
    this.used += 2;
    return writes;
  }
}

/**
 * GPU time of the work that `record` encodes, in ms: the sum of the durations of the compute
 * passes recorded meanwhile (copies and clears between passes are not counted). Pending work is
 * submitted first. Returns null without the `timestamp-query` feature, or when `record` opens
 * more than 2048 passes (one per batch of dispatches or per copy); the work is then still done.
 * @throws the first error Dawn reported meanwhile
 */
export async function gpuTime(device: GPUDevice, queue: CommandQueue, scopes: ErrorScopes, record: () => void): Promise<number | null> {
  if (!device.features.has("timestamp-query")) {
    record();
    await queue.sync();
    return null;
  }
  queue.flush();
  const set = device.createQuerySet({ label: "qalign timing", type: "timestamp", count: QUERIES });
  const resolved = device.createBuffer({ label: "qalign timing", size: QUERIES * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const staging = device.createBuffer({ label: "qalign timing readback", size: QUERIES * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const timer = new PassTimer(set);
  queue.timer = timer;
  try {
    record();
    queue.flush();
  } finally {
    queue.timer = null;
  }
  const { used, overflow } = timer;
  let ns = 0n;
  if (used > 0) {
    // A query set keeps its values across submits: resolve them all once, after the work.
    const enc = device.createCommandEncoder({ label: "qalign timing" });
    enc.resolveQuerySet(set, 0, used, resolved, 0);
    enc.copyBufferToBuffer(resolved, 0, staging, 0, used * 8);
    device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ, 0, used * 8);
    // Pairs of (start, end) nanoseconds, one per pass.
    const t = new BigUint64Array(staging.getMappedRange(0, used * 8));
    for (let i = 0; i < used; i += 2) ns += t[i + 1]! - t[i]!;
    staging.unmap();
  }
  set.destroy();
  resolved.destroy();
  staging.destroy();
  await scopes.settle();
  return overflow ? null : Number(ns) / 1e6;
}
