/**
 * The benchmark harness: contenders timed in one run, interleaved, with the statistics and the
 * table/JSON shapes that `bench/run.ts` prints and writes.
 *
 * Protocol (every case): each contender runs once untimed (pipeline compilation, pool warm-up),
 * and once more when that was quick, to size the samples; then `repeats` rounds visit the
 * contenders in turn, so load
 * from other processes hits all of them alike and their ratios stay meaningful. A sample records
 * `iterations` back-to-back runs and one wait, without reading results back; iterations are chosen
 * so that a sample lasts about `minSampleMs`. The reported time is per iteration.
 */
import type { WebGpuBackend } from "../src/kernels/webgpu/backend.ts";

/** How a sample was timed: GPU timestamp queries, or wall clock around submit-and-wait. */
export type Clock = "gpu-timestamps" | "wall";

/** Work done by one iteration, for throughput. */
export interface Work {
  /** Floating-point operations (a multiply-add is 2). */
  flops?: number;
  /** Bytes a kernel must read and write at least. */
  bytes?: number;
  /** Tokens processed. */
  tokens?: number;
}

/** One thing to time: an engine (qalign webgpu, TensorFlow.js webgpu, qalign cpu) and a variant. */
export interface Contender {
  engine: string;
  variant: string;
  /** Runs `n` iterations and waits for them; returns their total time in ms and how it was measured. */
  time(n: number): Promise<{ ms: number; clock: Clock }>;
  /** Extra facts reported with the result (e.g. peak device bytes). */
  extra?: () => Record<string, unknown>;
}

/** A contender's timings: per-iteration milliseconds over the samples. */
export interface Timing {
  engine: string;
  variant: string;
  clock: Clock | null;
  iterations: number;
  samples: number;
  medianMs: number | null;
  minMs: number | null;
  maxMs: number | null;
  /** (max - min) / median, percent. */
  spreadPct: number | null;
  /** Throughput at the median: GFLOP/s, GB/s or tokens/s (see `unit`). */
  throughput: number | null;
  unit: "GFLOP/s" | "GB/s" | "tokens/s" | null;
  /** This contender's throughput over the peer's in the same case (speed-up), when the case has a peer. */
  vsPeer: number | null;
  error?: string;
  extra?: Record<string, unknown>;
}

/** One benchmark case: what was run and every contender's timing. */
export interface CaseResult {
  group: string;
  name: string;
  params: Record<string, unknown>;
  work: Work;
  results: Timing[];
  note?: string;
}

export interface MeasureOptions {
  repeats: number;
  /** A sample should last at least this long (more iterations per sample when one is quicker). */
  minSampleMs: number;
  /** Upper bound on iterations per sample. */
  maxIterations: number;
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** Throughput of `work` done in `ms`: GFLOP/s when it has flops, else GB/s, else tokens/s. */
export function throughput(work: Work, ms: number): { value: number; unit: Timing["unit"] } {
  if (work.flops !== undefined) return { value: work.flops / ms / 1e6, unit: "GFLOP/s" };
  if (work.bytes !== undefined) return { value: work.bytes / ms / 1e6, unit: "GB/s" };
  return { value: (work.tokens ?? 0) / (ms / 1000), unit: "tokens/s" };
}

/** Warm-ups shorter than this (ms) are followed by a second untimed run that sizes the samples. */
const PROBE_BELOW_MS = 5000;

/** The engine every case compares against, when it takes part. */
export const PEER_ENGINE = "tfjs webgpu";

/**
 * Times the contenders interleaved (see the file comment). A contender that throws is reported with
 * its error and dropped from later rounds; the others go on.
 */
export async function measure(contenders: readonly Contender[], work: Work, opts: MeasureOptions): Promise<Timing[]> {
  const state = contenders.map((c) => ({ c, iterations: 1, clock: null as Clock | null, samples: [] as number[], error: undefined as string | undefined }));
  for (const s of state) {
    try {
      const t0 = performance.now();
      await s.c.time(1);
      let wall = performance.now() - t0;
      // The warm-up includes compiling pipelines; when it was short enough, a second run sizes the samples.
      if (wall < PROBE_BELOW_MS) {
        const t1 = performance.now();
        await s.c.time(1);
        wall = performance.now() - t1;
      }
      s.iterations = Math.max(1, Math.min(opts.maxIterations, Math.ceil(opts.minSampleMs / Math.max(wall, 1e-3))));
    } catch (e) {
      s.error = (e as Error).message;
    }
  }
  for (let r = 0; r < opts.repeats; r++) {
    for (const s of state) {
      if (s.error) continue;
      try {
        const { ms, clock } = await s.c.time(s.iterations);
        s.samples.push(ms / s.iterations);
        s.clock = clock;
      } catch (e) {
        s.error = (e as Error).message;
      }
    }
  }
  const timings = state.map(({ c, iterations, clock, samples, error }): Timing => {
    const med = samples.length > 0 ? median(samples) : null;
    const tp = med !== null ? throughput(work, med) : null;
    return {
      engine: c.engine,
      variant: c.variant,
      clock,
      iterations,
      samples: samples.length,
      medianMs: med,
      minMs: samples.length > 0 ? Math.min(...samples) : null,
      maxMs: samples.length > 0 ? Math.max(...samples) : null,
      spreadPct: med ? ((Math.max(...samples) - Math.min(...samples)) / med) * 100 : null,
      throughput: tp?.value ?? null,
      unit: tp?.unit ?? null,
      vsPeer: null,
      ...(error ? { error } : {}),
      ...(c.extra ? { extra: c.extra() } : {}),
    };
  });
  const peer = timings.find((t) => t.engine === PEER_ENGINE && t.medianMs !== null);
  if (peer) for (const t of timings) if (t.medianMs !== null && t !== peer) t.vsPeer = peer.medianMs! / t.medianMs;
  return timings;
}

/**
 * Withdraws `engine`'s timing from `timings` because its run did not do the work (`reason`):
 * its times and throughput become null with the reason as its error, and no contender keeps a
 * ratio to it.
 */
export function withdraw(timings: Timing[], engine: string, reason: string): void {
  for (const t of timings) {
    if (t.engine === engine) Object.assign(t, { medianMs: null, minMs: null, maxMs: null, spreadPct: null, throughput: null, error: reason });
    t.vsPeer = null;
  }
}

/**
 * Runs one case; a failure becomes a case that carries the error (printed and written like the
 * others) instead of ending the run.
 */
export async function attempt(group: string, name: string, f: () => Promise<CaseResult>): Promise<CaseResult> {
  try {
    return await f();
  } catch (e) {
    process.stderr.write(`bench: ${group} ${name} failed: ${(e as Error).message}\n`);
    return { group, name, params: {}, work: {}, results: [], note: `failed: ${(e as Error).message}` };
  }
}

/** Wall-clock timing of async work (the cpu device, end-to-end cases). */
export async function wallTime(run: () => Promise<void> | void): Promise<{ ms: number; clock: Clock }> {
  const t0 = performance.now();
  await run();
  return { ms: performance.now() - t0, clock: "wall" };
}

// ---- printing ----

const fmtNum = (x: number | null, digits = 3): string => {
  if (x === null || !Number.isFinite(x)) return "-";
  if (x === 0) return "0";
  const mag = Math.floor(Math.log10(Math.abs(x)));
  return x.toFixed(Math.max(0, Math.min(6, digits - 1 - mag)));
};

/** Milliseconds with 3 significant digits. */
export const fmtMs = (ms: number | null) => fmtNum(ms);

/** A Markdown table of the cases (one row per contender). */
export function table(cases: readonly CaseResult[]): string {
  const rows: string[][] = [["case", "engine", "variant", "median ms", "spread", "throughput", "vs peer"]];
  for (const c of cases) {
    if (c.results.length === 0) rows.push([c.name, "-", "-", c.note ?? "no result", "-", "-", ""]);
    for (const t of c.results) {
      rows.push([
        c.name,
        t.engine,
        t.variant,
        t.error ? `error: ${t.error.slice(0, 60)}` : fmtMs(t.medianMs),
        t.spreadPct === null ? "-" : `${t.spreadPct.toFixed(0)}%`,
        t.throughput === null ? "-" : `${fmtNum(t.throughput)} ${t.unit}`,
        t.vsPeer === null ? "" : `${t.vsPeer.toFixed(2)}x`,
      ]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((x, i) => x.padEnd(widths[i]!)).join(" | ")} |`;
  return [line(rows[0]!), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.slice(1).map(line)].join("\n");
}

/** Times `n` iterations of `record` on the webgpu backend: GPU timestamps when it has them. */
export async function gpuTimer(gpu: WebGpuBackend, n: number, record: () => void): Promise<{ ms: number; clock: "gpu-timestamps" | "wall" }> {
  await gpu.sync();
  const t0 = performance.now();
  const ms = await gpu.gpuTime(() => {
    for (let i = 0; i < n; i++) record();
  });
  return ms === null ? { ms: performance.now() - t0, clock: "wall" } : { ms, clock: "gpu-timestamps" };
}

/** Largest |a - b| over max |b|: how far a result is from the one it is checked against. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / (scale || 1);
}
