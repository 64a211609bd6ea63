/**
 * A reader and writer for the safetensors format (https://github.com/huggingface/safetensors),
 * single files and sharded checkpoints (`model.safetensors.index.json`).
 *
 * Layout of a file: `u64 N` (little-endian) | `N` bytes of JSON header | data section. The header
 * maps each tensor name to `{dtype, shape, data_offsets: [begin, end]}` with offsets relative to
 * the start of the data section, plus an optional `__metadata__` map of strings.
 *
 * Every structural problem is reported by {@link CheckpointError} when the file is opened, before
 * any tensor is read. Tensors are read one at a time by their byte range, so a checkpoint larger
 * than memory can still be opened and streamed.
 */
import { hostFiles, isFolder, type ByteReader, type Files } from "../io/files.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "../tensor/half.ts";
import { parseJson } from "../io/json.ts";

// Typed arrays use the host's byte order and safetensors is little-endian: the first byte of a
// 16-bit 1 is 1 on a little-endian host.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error("safetensors: big-endian hosts are not supported");

/**
 * A malformed or incomplete checkpoint: the message names the file and, where one is involved,
 * the tensor or config field, e.g. `model.safetensors: tensor "lm_head.weight": data_offsets ...`.
 */
export class CheckpointError extends Error {
  override name = "CheckpointError";
  constructor(
    readonly file: string,
    message: string,
    readonly tensor?: string,
  ) {
    super(`${file}: ${tensor === undefined ? "" : `tensor "${tensor}": `}${message}`);
  }
}

/** Bytes per element of every dtype in the safetensors spec (sizes are needed to validate). */
export const DTYPE_SIZE = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  I64: 8, U64: 8, F64: 8,
} as const;

/** A dtype name from the safetensors spec. Only F32/F16/BF16/F64 and I32/I64 can be read. */
export type SafetensorsDType = keyof typeof DTYPE_SIZE;

/** Where one tensor lives. `byteRange` is `[begin, end)` in absolute file offsets (bytes). */
export interface TensorInfo {
  dtype: SafetensorsDType;
  shape: number[];
  file: string;
  byteRange: [number, number];
}

/** A set of named tensors on disk: one safetensors file or a sharded checkpoint. */
export interface Checkpoint {
  /** Tensor names in header (or index) order. */
  names(): string[];
  /** Whether the checkpoint holds `name`. */
  has(name: string): boolean;
  /** @throws CheckpointError when `name` is not in the checkpoint. */
  info(name: string): TensorInfo;
  /**
   * Reads a float tensor (F32, F16, BF16 or F64) as row-major float32, converting on load.
   * @throws CheckpointError for a missing tensor, an integer or unsupported dtype, or a short read.
   */
  readF32(name: string): Promise<Float32Array>;
  /**
   * Reads an I32 or I64 tensor as int32 (I64 values must fit in int32).
   * @throws CheckpointError for a missing tensor, a non-integer dtype, or an out-of-range value.
   */
  readI32(name: string): Promise<Int32Array>;
  /**
   * The stored bytes of a tensor in any dtype, little-endian as on disk: U8 data of quantized
   * weights, and the 16-bit patterns of F16/BF16 weights kept in 16 bits.
   * @throws CheckpointError for a missing tensor or a short read.
   */
  readRaw(name: string): Promise<Uint8Array>;
  /**
   * Bytes [begin, end) of a tensor's stored data (offsets relative to its first byte), to read
   * a large tensor by chunk.
   * @throws CheckpointError for a missing tensor, a range outside the tensor, or a short read.
   */
  readRawRange(name: string, begin: number, end: number): Promise<Uint8Array>;
  /** Closes the file handles; reads after `close()` fail. */
  close(): Promise<void>;
}

/** The safetensors reference implementation refuses headers above 100 MB. */
const MAX_HEADER_BYTES = 100_000_000;

// ---------------------------------------------------------------------------------------------
// Reading

function describe(v: unknown): string {
  return `${JSON.stringify(v) ?? String(v)} (${Array.isArray(v) ? "array" : v === null ? "null" : typeof v})`;
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** Checks one header entry against the data section of `dataBytes` bytes. */
function parseEntry(file: string, name: string, v: unknown, dataStart: number, dataBytes: number): TensorInfo {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new CheckpointError(file, `header entry must be an object, got ${describe(v)}`, name);
  }
  for (const field of ["dtype", "shape", "data_offsets"]) {
    if (!Object.hasOwn(v, field)) throw new CheckpointError(file, `field "${field}" is missing (every header entry needs dtype, shape and data_offsets)`, name);
  }
  const { dtype, shape, data_offsets: offsets } = v as Record<string, unknown>;
  if (typeof dtype !== "string" || !Object.hasOwn(DTYPE_SIZE, dtype)) {
    throw new CheckpointError(
      file,
      `unknown dtype ${describe(dtype)}; the safetensors dtypes are ${Object.keys(DTYPE_SIZE).join(", ")}`,
      name,
    );
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw new CheckpointError(file, `shape must be an array of non-negative integers, got ${describe(shape)}`, name);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    throw new CheckpointError(file, `data_offsets must be [begin, end] integers, got ${describe(offsets)}`, name);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) {
    throw new CheckpointError(file, `data_offsets [${begin}, ${end}] are reversed: end ${end} is before begin ${begin}`, name);
  }
  if (end > dataBytes) {
    throw new CheckpointError(
      file,
      `data_offsets [${begin}, ${end}] out of range: the data section holds ${dataBytes} bytes (file truncated?)`,
      name,
    );
  }
  const size = DTYPE_SIZE[dtype as SafetensorsDType];
  const expected = (shape as number[]).reduce((a, b) => a * b, 1) * size;
  if (end - begin !== expected) {
    throw new CheckpointError(
      file,
      `data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} x [${shape.join(",")}] needs ${expected}`,
      name,
    );
  }
  return { dtype: dtype as SafetensorsDType, shape: shape as number[], file, byteRange: [dataStart + begin, dataStart + end] };
}

/**
 * Checks that the tensors tile the data section `[dataStart, fileEnd)` exactly: sorted by
 * offset, each begins where the one before ends, the first at the start and the last at the
 * end of the file. These are the reference implementation's rules (`Metadata::validate` and
 * `MetadataIncompleteBuffer` in safetensors/src/tensor.rs): bytes that no tensor owns are a
 * damaged or hand-edited file, and bytes two tensors share alias them.
 * @throws CheckpointError naming the tensor at an overlap or a hole, or the trailing bytes
 */
function checkLayout(file: string, infos: Map<string, TensorInfo>, dataStart: number, fileEnd: number): void {
  const sorted = [...infos].sort(([, a], [, b]) => a.byteRange[0] - b.byteRange[0] || a.byteRange[1] - b.byteRange[1]);
  let end = dataStart;
  let prev: string | null = null;
  for (const [name, t] of sorted) {
    const [begin, stop] = t.byteRange;
    const after = prev === null ? "the start of the data section" : `tensor "${prev}"`;
    if (begin < end) throw new CheckpointError(file, `bytes [${begin}, ${stop}) overlap ${after}, which ends at ${end}`, name);
    if (begin > end) throw new CheckpointError(file, `bytes [${end}, ${begin}) between ${after} and this tensor belong to no tensor (a hole)`, name);
    end = stop;
    prev = name;
  }
  if (end < fileEnd) {
    const last = prev === null ? "the header (no tensors)" : `the last tensor, "${prev}",`;
    throw new CheckpointError(file, `${fileEnd - end} bytes [${end}, ${fileEnd}) follow ${last} and belong to no tensor (trailing bytes)`);
  }
}

/** One open `.safetensors` file; see {@link openSafetensors}. */
export class SafetensorsFile implements Checkpoint {
  private constructor(
    readonly file: string,
    private readonly reader: ByteReader,
    private readonly tensors: Map<string, TensorInfo>,
    /** The header's `__metadata__` (string to string; `{}` when absent). */
    readonly metadata: Record<string, string>,
  ) {}

  /**
   * Opens and validates `file`: header length, JSON (a tensor named twice is an error), every
   * entry's dtype, shape and offsets, and that the tensors fill the data section without
   * overlaps, holes or trailing bytes. Only the header is read.
   * @throws CheckpointError naming the file (and tensor) for any malformed header.
   */
  static async open(file: string, files?: Files): Promise<SafetensorsFile> {
    let reader: ByteReader;
    try {
      reader = await (files ?? (await hostFiles())).open(file);
    } catch (e) {
      throw new CheckpointError(file, `cannot open: ${(e as Error).message}`);
    }
    try {
      const { size } = reader;
      if (size < 8) throw new CheckpointError(file, `file is ${size} bytes, too short for the 8-byte header length (truncated?)`);
      const lenBuf = await readRange(reader, 0, 8, file);
      const headerLen = new DataView(lenBuf.buffer, lenBuf.byteOffset, 8).getBigUint64(0, true);
      if (headerLen > BigInt(size - 8)) {
        throw new CheckpointError(file, `header length ${headerLen} runs past the end of the ${size}-byte file (truncated?)`);
      }
      if (headerLen > BigInt(MAX_HEADER_BYTES)) {
        throw new CheckpointError(file, `header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
      }
      const n = Number(headerLen);
      const headerBuf = await readRange(reader, 8, 8 + n, file);
      let header: unknown;
      try {
        header = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(headerBuf));
      } catch (e) {
        throw new CheckpointError(file, `header is not valid UTF-8 JSON: ${(e as Error).message}`);
      }
      if (typeof header !== "object" || header === null || Array.isArray(header)) {
        throw new CheckpointError(file, `header must be a JSON object, got ${describe(header)}`);
      }
      const tensors = new Map<string, TensorInfo>();
      let metadata: Record<string, string> = {};
      for (const [name, v] of Object.entries(header)) {
        if (name === "__metadata__") metadata = parseMetadata(file, v);
        else tensors.set(name, parseEntry(file, name, v, 8 + n, size - 8 - n));
      }
      checkLayout(file, tensors, 8 + n, size);
      return new SafetensorsFile(file, reader, tensors, metadata);
    } catch (e) {
      await reader.close();
      throw e;
    }
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t === undefined) throw new CheckpointError(this.file, "not in the checkpoint", name);
    return t;
  }

  async readF32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    switch (t.dtype) {
      case "F32":
        return new Float32Array(await this.readBytes(name, t));
      case "F16":
        return f16ToF32(new Uint16Array(await this.readBytes(name, t)));
      case "BF16":
        return bf16ToF32(new Uint16Array(await this.readBytes(name, t)));
      case "F64":
        return Float32Array.from(new Float64Array(await this.readBytes(name, t)));
      default:
        throw new CheckpointError(this.file, `dtype ${t.dtype} cannot be read as float32 (readable: F32, F16, BF16, F64)`, name);
    }
  }

  async readI32(name: string): Promise<Int32Array> {
    const t = this.info(name);
    if (t.dtype === "I32") return new Int32Array(await this.readBytes(name, t));
    if (t.dtype !== "I64") {
      throw new CheckpointError(this.file, `dtype ${t.dtype} cannot be read as int32 (readable: I32, I64)`, name);
    }
    const wide = new BigInt64Array(await this.readBytes(name, t));
    const out = new Int32Array(wide.length);
    for (let i = 0; i < wide.length; i++) {
      const v = wide[i]!;
      if (v < -0x80000000n || v > 0x7fffffffn) {
        throw new CheckpointError(this.file, `I64 value ${v} at index ${i} does not fit in int32`, name);
      }
      out[i] = Number(v);
    }
    return out;
  }

  async readRaw(name: string): Promise<Uint8Array> {
    return new Uint8Array(await this.readBytes(name, this.info(name)));
  }

  async readRawRange(name: string, begin: number, end: number): Promise<Uint8Array> {
    const [start, stop] = this.info(name).byteRange;
    if (!(0 <= begin && begin <= end && start + end <= stop)) {
      throw new CheckpointError(this.file, `byte range [${begin}, ${end}) is outside the tensor's ${stop - start} bytes`, name);
    }
    return readRange(this.reader, start + begin, start + end, this.file, name);
  }

  async close(): Promise<void> {
    await this.reader.close();
  }

  /** The raw bytes of one tensor, in a fresh buffer of exactly its size (aligned for any view). */
  private async readBytes(name: string, t: TensorInfo): Promise<ArrayBuffer> {
    const [begin, end] = t.byteRange;
    const bytes = await readRange(this.reader, begin, end, this.file, name);
    return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? (bytes.buffer as ArrayBuffer) : bytes.slice().buffer;
  }
}

/** Bytes [start, end) of an open file. @throws CheckpointError naming the file (and tensor) on a short read or I/O error. */
async function readRange(reader: ByteReader, start: number, end: number, file: string, name?: string): Promise<Uint8Array> {
  try {
    return await reader.read(start, end);
  } catch (e) {
    throw new CheckpointError(file, (e as Error).message, name);
  }
}

function parseMetadata(file: string, v: unknown): Record<string, string> {
  if (typeof v !== "object" || v === null || Array.isArray(v) || !Object.values(v).every((x) => typeof x === "string")) {
    throw new CheckpointError(file, `__metadata__ must map strings to strings, got ${describe(v)}`);
  }
  return v as Record<string, string>;
}

/**
 * Opens one `.safetensors` file and validates its header (nothing else is read).
 * @throws CheckpointError naming the file and tensor: truncated file, header length beyond the
 *   file, header not JSON, a tensor named twice, unknown dtype, offsets out of range,
 *   overlapping or leaving a hole, offsets whose length disagrees with dtype x shape, bytes
 *   after the last tensor.
 */
export function openSafetensors(file: string, files?: Files): Promise<SafetensorsFile> {
  return SafetensorsFile.open(file, files);
}

/** A checkpoint split over shards by `model.safetensors.index.json` (HF `weight_map`). */
class ShardedCheckpoint implements Checkpoint {
  constructor(
    private readonly indexFile: string,
    private readonly shardOf: Map<string, SafetensorsFile>,
  ) {}

  names(): string[] {
    return [...this.shardOf.keys()];
  }

  has(name: string): boolean {
    return this.shardOf.has(name);
  }

  info(name: string): TensorInfo {
    return this.shard(name).info(name);
  }

  async readF32(name: string): Promise<Float32Array> {
    return this.shard(name).readF32(name);
  }

  async readI32(name: string): Promise<Int32Array> {
    return this.shard(name).readI32(name);
  }

  async readRaw(name: string): Promise<Uint8Array> {
    return this.shard(name).readRaw(name);
  }

  async readRawRange(name: string, begin: number, end: number): Promise<Uint8Array> {
    return this.shard(name).readRawRange(name, begin, end);
  }

  async close(): Promise<void> {
    await Promise.all([...new Set(this.shardOf.values())].map((s) => s.close()));
  }

  private shard(name: string): SafetensorsFile {
    const s = this.shardOf.get(name);
    if (s === undefined) throw new CheckpointError(this.indexFile, "not in the checkpoint's weight_map", name);
    return s;
  }
}

/** The index of a sharded checkpoint, as written by HF `save_pretrained`. */
export const INDEX_FILE = "model.safetensors.index.json";
/** The single file of an unsharded checkpoint. */
export const SINGLE_FILE = "model.safetensors";

/**
 * Whether a checkpoint's weights file (model.safetensors, its index) is at `path` of `files`.
 * @throws CheckpointError when a folder is there (a file is what transformers reads)
 */
export async function isWeightsFile(path: string, files: Files): Promise<boolean> {
  if (await files.exists(path)) return true;
  if (await isFolder(files, path)) throw new CheckpointError(path, "is a folder, not a file: a checkpoint's weights are safetensors files");
  return false;
}

/**
 * Opens the weights of a Hugging Face checkpoint folder: `model.safetensors` when it exists,
 * else `model.safetensors.index.json` and its shards (the order of HF `from_pretrained`). All
 * headers are validated up front.
 * @throws CheckpointError when neither file exists or one is a folder, the index is malformed (a tensor listed twice
 *   included), a shard file is
 *   missing, a tensor listed in the index is absent from its shard, or any shard is malformed.
 */
export async function openCheckpoint(dir: string, files?: Files): Promise<Checkpoint> {
  files ??= await hostFiles();
  const single = files.join(dir, SINGLE_FILE);
  if (await isWeightsFile(single, files)) return openSafetensors(single, files);
  const indexPath = files.join(dir, INDEX_FILE);
  if (!(await isWeightsFile(indexPath, files))) throw new CheckpointError(dir, `neither ${SINGLE_FILE} nor ${INDEX_FILE} exists`);
  let index: unknown;
  try {
    index = parseJson(await files.readText(indexPath));
  } catch (e) {
    throw new CheckpointError(indexPath, `not valid JSON: ${(e as Error).message}`);
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new CheckpointError(indexPath, `weight_map must be an object of tensor name -> shard file`);
  }
  const opened = new Map<string, SafetensorsFile>();
  const shardOf = new Map<string, SafetensorsFile>();
  try {
    for (const [name, shardName] of Object.entries(weightMap)) {
      if (typeof shardName !== "string" || shardName === "" || /[/\\]/.test(shardName) || shardName === "." || shardName === "..") {
        throw new CheckpointError(indexPath, `weight_map value must be a file name in ${dir}, got ${describe(shardName)}`, name);
      }
      let shard = opened.get(shardName);
      if (shard === undefined) {
        const path = files.join(dir, shardName);
        if (!(await files.exists(path))) throw new CheckpointError(indexPath, `shard file ${path} is missing`, name);
        shard = await openSafetensors(path, files);
        opened.set(shardName, shard);
      }
      if (!shard.has(name)) {
        throw new CheckpointError(indexPath, `listed in weight_map under ${shardName}, but absent from that shard`, name);
      }
      shardOf.set(name, shard);
    }
  } catch (e) {
    await Promise.all([...opened.values()].map((s) => s.close()));
    throw e;
  }
  return new ShardedCheckpoint(indexPath, shardOf);
}

// ---------------------------------------------------------------------------------------------
// Writing

/** One tensor to write: float32 `data` of `shape` (row-major), stored as `dtype` on disk. */
export interface TensorToWrite {
  dtype: "F32" | "F16" | "BF16";
  shape: number[];
  data: Float32Array;
}

/**
 * The bytes of one tensor in its on-disk dtype, little-endian: F32 as a view of `data` (no
 * copy), F16/BF16 rounded to nearest even from the float32 values (tensor/half.ts). `data` is
 * row-major with `shape`'s element count; that is not checked here (writeSafetensors checks it,
 * writeSafetensorsStream checks the byte count).
 */
export function encodeTensor(t: TensorToWrite): Uint8Array {
  if (t.dtype === "F32") return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const half = t.dtype === "F16" ? f32ToF16(t.data) : f32ToBf16(t.data);
  return new Uint8Array(half.buffer);
}

/** The dtype and shape of a tensor to write, whose bytes {@link writeSafetensorsStream} asks for later. */
export interface TensorLayout {
  dtype: SafetensorsDType;
  shape: number[];
}

/**
 * Writes `tensors` to a safetensors file, atomically: into a temporary file in the same folder,
 * then renamed over `file`. As in the reference implementation, tensors are laid out by
 * decreasing element size then name, and the header is padded with spaces so the data section
 * starts at a multiple of 8 bytes. Each tensor is converted and written on its own.
 * @param metadata stored as `__metadata__` (string values only; PEFT and HF use `{format: "pt"}`)
 * @throws CheckpointError naming the tensor when `data.length` disagrees with `shape`, or the
 *   name is `__metadata__`; I/O errors propagate and leave no temporary file behind.
 */
export async function writeSafetensors(
  file: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
  files?: Files,
): Promise<void> {
  for (const [name, t] of Object.entries(tensors)) {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    if (!t.shape.every(isCount) || numel !== t.data.length) {
      throw new CheckpointError(file, `shape [${t.shape.join(",")}] does not match ${t.data.length} elements`, name);
    }
  }
  await writeSafetensorsStream(file, tensors, async (name) => encodeTensor(tensors[name]!), metadata, files);
}

/**
 * Writes a safetensors file whose tensors' bytes are produced one at a time, in file order, by
 * `bytesOf` (little-endian, as stored), so that memory stays at one tensor however large the file:
 * the header is built from `layout` alone. Layout, padding and atomicity as {@link writeSafetensors}.
 * @throws CheckpointError naming the tensor for a bad shape, the name `__metadata__`, or bytes
 *   of another length than dtype and shape give; I/O errors propagate (no temporary file is left).
 */
export async function writeSafetensorsStream(
  file: string,
  layout: Record<string, TensorLayout>,
  bytesOf: (name: string) => Promise<Uint8Array>,
  metadata?: Record<string, string>,
  files?: Files,
): Promise<void> {
  const entries = Object.entries(layout).sort(
    ([an, a], [bn, b]) => DTYPE_SIZE[b.dtype] - DTYPE_SIZE[a.dtype] || (an < bn ? -1 : an > bn ? 1 : 0),
  );
  // Entries, not assignments, so that any name (even "__proto__") becomes a plain JSON key.
  const header: [string, unknown][] = metadata === undefined ? [] : [["__metadata__", metadata]];
  // Each tensor's byte count, in file order: its header offsets, then the check on its bytes.
  const sizes: number[] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    if (name === "__metadata__") throw new CheckpointError(file, "the name __metadata__ is reserved", name);
    if (t.shape.some((d) => !isCount(d))) throw new CheckpointError(file, `shape [${t.shape.join(",")}] is not a list of sizes`, name);
    const bytes = t.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[t.dtype];
    header.push([name, { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] }]);
    sizes.push(bytes);
    offset += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(header)));
  const padded = Math.ceil(json.length / 8) * 8;
  const head = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);

  // An async generator: each tensor's bytes are asked for when the writer takes them, so memory
  // stays at one tensor.
  await (files ?? (await hostFiles())).writeAtomic(file, (async function* () {
    yield head;
    for (const [i, [name, t]] of entries.entries()) {
      const bytes = await bytesOf(name);
      const want = sizes[i]!;
      if (bytes.byteLength !== want) throw new CheckpointError(file, `${bytes.byteLength} bytes given, ${t.dtype} [${t.shape.join(",")}] takes ${want}`, name);
      yield bytes;
    }
  })());
}
