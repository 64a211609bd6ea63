import type { PooledBuffer } from "./pool.ts";

/**
 * How a WGSL kernel is described to the WebGPU backend: a cache key, its bindings, its uniform
 * parameters, and the body. Every kernel file (src/kernels/*.wgsl.ts) builds `Kernel`s with
 * `kernel()` and dispatches them through a `KernelHost` (the backend), so the bind-group
 * convention, the uniform packing and the 2-D grid arithmetic live here once:
 *
 *   @group(0) @binding(0) var<uniform> P: Params;        the `params` fields, in order
 *   @group(0) @binding(1..n) var<storage, ...> name: ...; the `buffers`, in order
 *
 * Sizes travel in `P`, so one compiled pipeline serves every shape; the key names only what
 * changes the WGSL text (op, dtypes, workgroup size).
 */

/** A uniform field: a 4-byte scalar, or `count` 16-byte-aligned vectors (`array<vec4<i32 or u32>, count>`). */
export type Field =
  | { name: string; type: "u32" | "i32" | "f32" }
  | { name: string; type: "vec4i"; count: number }
  | { name: string; type: "vec4u"; count: number };

/**
 * A storage buffer binding; `type` is the WGSL element type. `vec4<f32>` reads an f32 storage 4
 * elements at a time (16-byte loads); the kernel then needs its offsets and row lengths in
 * multiples of 4.
 */
export interface BufferDecl {
  name: string;
  type: "f32" | "i32" | "u32" | "vec4<f32>" | "vec4<u32>";
  access: "read" | "read_write";
}

/** A compiled-once WGSL program. */
export interface Kernel {
  /** Cache key: equal keys must mean equal WGSL. */
  readonly key: string;
  readonly params: readonly Field[];
  readonly buffers: readonly BufferDecl[];
  /** Builds the full WGSL (header + body); called once per key, on a pipeline-cache miss. */
  readonly source: () => string;
  /** Byte offset of each param field in the uniform block (computed once). */
  readonly offsets: ReadonlyMap<string, number>;
  /** Uniform block size in bytes, a multiple of 16. */
  readonly paramBytes: number;
}

/** Values for a kernel's params: numbers for scalars, number arrays (padded with 0) for vec4 arrays. */
export type ParamValues = Record<string, number | readonly number[]>;

/** One GPUBuffer of a storage: elements [base, base + len) of the storage live at its start. */
export interface Chunk {
  readonly buf: PooledBuffer;
  readonly base: number;
  readonly len: number;
}

/**
 * What kernels see of a storage: its dtype, size, and chunks. A storage within the per-binding
 * limit has one chunk; a larger one has several (see WebGpuStorage), which only the kernels that
 * say so accept.
 */
export interface GpuData {
  readonly dtype: "f32" | "i32";
  readonly numel: number;
  readonly chunks: readonly Chunk[];
}

/** The single buffer of a storage that is not chunked (the backend checks that before encoding). */
export function single(d: GpuData): PooledBuffer {
  return d.chunks[0]!.buf;
}

/**
 * What kernel files need from the backend. The backend implements it; kernel files depend on
 * the interface only. Everything recorded runs in recording order.
 */
export interface KernelHost {
  /** Records one dispatch; `grid` is a workgroup count (laid out as a 2-D grid) or [x, y, z]. */
  dispatch(k: Kernel, params: ParamValues, buffers: readonly PooledBuffer[], grid: number | readonly [number, number, number]): void;
  /** Records a buffer-to-buffer copy of `bytes` (all multiples of 4). */
  copy(src: PooledBuffer, srcByte: number, dst: PooledBuffer, dstByte: number, bytes: number): void;
  /** A scratch buffer of at least `bytes` (contents undefined); give it back with `releaseTemp`. */
  temp(bytes: number): PooledBuffer;
  /** Returns a scratch buffer; commands recorded before still see it, later ones may reuse it. */
  releaseTemp(b: PooledBuffer): void;
  /** Largest workgroup count in one grid dimension (maxComputeWorkgroupsPerDimension). */
  readonly maxGridDim: number;
  /**
   * Invocations that cooperate on one row in the row kernels (reduce, softmax, cross-entropy,
   * rmsnorm; see reduce.wgsl.ts) and on one block of output columns in the matrix-vector kernel
   * (gemv.wgsl.ts), a power of two: 256 on a GPU; 1 on a CPU emulation such as SwiftShader, which
   * runs invocations 4 at a time in SIMD lanes and pays a thread switch per barrier, so there an
   * invocation owns a whole row, with no reduction (measured: 256 invocations per row ran 10-30x
   * slower there than 4, and 4 up to 2x slower than 1).
   */
  readonly rowWorkgroup: number;
  /**
   * The matmul variant to use where the operands' layout allows it (src/kernels/matmul.wgsl.ts);
   * elsewhere matmul falls back to "tiled".
   */
  readonly matmulVariant: MatmulVariant;
  /**
   * The fused attention forward (src/kernels/attention.wgsl.ts): "rows" (a workgroup per query
   * row) or "quad" (a quad of invocations per block of query rows; needs `subgroups`).
   */
  readonly attentionVariant: AttentionVariant;
}

/** Fused attention forward variants (see attention.wgsl.ts). */
export type AttentionVariant = "rows" | "quad";

/**
 * Matmul kernel variants, from the readable reference to the fastest (see matmul.wgsl.ts):
 * "naive" one output per invocation; "tiled" a 4x4 register tile per invocation, any layout;
 * "vec4" 16-byte loads along the contiguous axis; "quad" vec4 plus loads shared by the four
 * invocations of a quad (needs the `subgroups` feature).
 */
export type MatmulVariant = "naive" | "tiled" | "vec4" | "quad";

function fieldWords(f: Field): number {
  return f.type === "vec4i" || f.type === "vec4u" ? 4 * f.count : 1;
}

function fieldWgsl(f: Field): string {
  if (f.type === "vec4i") return `${f.name}: array<vec4<i32>, ${f.count}>`;
  if (f.type === "vec4u") return `${f.name}: array<vec4<u32>, ${f.count}>`;
  return `${f.name}: ${f.type}`;
}

/** What a kernel file declares; `kernel()` turns it into a `Kernel`. */
export interface KernelDef {
  params: readonly Field[];
  buffers: readonly BufferDecl[];
  /** WGSL after the generated header; must declare the `@compute` entry point `main`. */
  body: () => string;
  /** WGSL extensions the body uses (`enable subgroups;`); the device must have the feature. */
  enables?: readonly "subgroups"[];
}

const kernels = new Map<string, Kernel>();

/**
 * The kernel for `key`, built by `define` on first use and memoized, so a dispatch costs a map
 * lookup. The generated header declares `struct Params`, `P`, the buffers, and `wg_linear` (the
 * linear workgroup index of a 2-D grid).
 */
export function kernel(key: string, define: () => KernelDef): Kernel {
  const hit = kernels.get(key);
  if (hit) return hit;
  const def = define();
  // Uniform layout (WGSL rules): scalars 4-aligned, arrays of vec4 16-aligned, struct size a multiple of 16.
  const offsets = new Map<string, number>();
  let at = 0;
  for (const f of def.params) {
    if (f.type === "vec4i" || f.type === "vec4u") at = Math.ceil(at / 16) * 16;
    offsets.set(f.name, at);
    at += 4 * fieldWords(f);
  }
  const paramBytes = Math.max(16, Math.ceil(at / 16) * 16);
  const source = (): string => {
    const fields = def.params.length > 0 ? def.params.map(fieldWgsl) : ["unused: u32"];
    const bufs = def.buffers.map(
      (b, i) => `@group(0) @binding(${i + 1}) var<storage, ${b.access}> ${b.name}: array<${b.type}>;`,
    );
    const enables = (def.enables ?? []).map((e) => `enable ${e};`);
    return [...enables, `struct Params { ${fields.join(", ")} }`, `@group(0) @binding(0) var<uniform> P: Params;`, ...bufs, WG_LINEAR, def.body()].join("\n");
  };
  const k: Kernel = { key, params: def.params, buffers: def.buffers, source, offsets, paramBytes };
  kernels.set(key, k);
  return k;
}

/** Linear index of a workgroup in a 2-D grid (x fastest), for grids wider than 65535. */
const WG_LINEAR = `fn wg_linear(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }`;

/**
 * Writes `values` as the kernel's uniform block into `view` at byte `at` (little-endian, as
 * WGSL reads it). A missing field is an error: it would silently read as 0.
 */
export function packParams(k: Kernel, values: ParamValues, view: DataView, at: number): void {
  for (const f of k.params) {
    const v = values[f.name];
    if (v === undefined) throw new Error(`${k.key}: missing param ${f.name}`);
    const o = at + k.offsets.get(f.name)!;
    if (f.type === "vec4i" || f.type === "vec4u") {
      const arr = v as readonly number[];
      if (arr.length > 4 * f.count) throw new Error(`${k.key}: param ${f.name} has ${arr.length} > ${4 * f.count} entries`);
      for (let j = 0; j < 4 * f.count; j++) view.setInt32(o + 4 * j, arr[j] ?? 0, true);
    } else if (f.type === "f32") view.setFloat32(o, v as number, true);
    else if (f.type === "i32") view.setInt32(o, v as number, true);
    else view.setUint32(o, v as number, true);
  }
}

/** [0, 1, ..., n - 1], for unrolling WGSL per row, column, key or lane. */
export const ints = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** The components of a WGSL vec4, in order. */
export const VEC4_LANES = ["x", "y", "z", "w"] as const;

/** Number of workgroups to cover `n` items with `per` items each. */
export function groups(n: number, per: number): number {
  return Math.ceil(n / per);
}
