import { existsSync } from "node:fs";
import { join } from "node:path";
import { describeDevice } from "../kernels/devices.ts";
import { packageVersion } from "../io/package.ts";
import { gitCommit, installedVersion, sha256File, sha256SafetensorsHeader, type Provenance } from "../io/provenance.ts";
import { PAPER_PROMPTS_FILE, SAMPLE_DATA_FILE } from "../eval/default_data.ts";
import { FolderSource, type RecordingSource } from "../eval/source.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE } from "../lora/peft.ts";
import { INDEX_FILE, openCheckpoint } from "../model/safetensors.ts";
import type { Backend } from "../tensor/backend.ts";

/** Packages whose versions decide numbers or text: Dawn's bindings and the tokenizer library. */
const RECORDED_PACKAGES = ["webgpu", "@huggingface/tokenizers"];

/** What a command ran on, for {@link provenance}. */
export interface RunInputs {
  /** When the command started (new Date() at its start). */
  started: Date;
  /** Null while the run is not finished (a results file rewritten as it goes). */
  finished: Date | null;
  device: Backend;
  modelDir?: string;
  /** --dtype as given; undefined: as the checkpoint stores them. */
  dtype?: string;
  adapterDir?: string | null;
  /** The data source, wrapped so that it knows which files were read. */
  source?: RecordingSource;
  /** Data files read directly (train's --data). */
  files?: readonly string[];
}

/**
 * SHA-256 of a checkpoint folder's identity: config.json, and model.safetensors.index.json with
 * every shard's header, or model.safetensors' header (see sha256SafetensorsHeader).
 * @returns file name -> hash, and the dtypes its tensors are stored in
 */
async function checkpointHashes(dir: string): Promise<{ sha256: Record<string, string>; stored: string[] }> {
  const sha256: Record<string, string> = { "config.json": await sha256File(join(dir, "config.json")) };
  const ckpt = await openCheckpoint(dir);
  try {
    const names = ckpt.names();
    const files = [...new Set(names.map((n) => ckpt.info(n).file))].sort();
    if (existsSync(join(dir, INDEX_FILE))) sha256[INDEX_FILE] = await sha256File(join(dir, INDEX_FILE));
    for (const f of files) sha256[`${f.slice(dir.length).replace(/^\/+/, "")} (header)`] = await sha256SafetensorsHeader(f);
    return { sha256, stored: [...new Set(names.map((n) => ckpt.info(n).dtype))].sort() };
  } finally {
    await ckpt.close();
  }
}

/** The parts of a run's provenance that stay the same while it runs: all but `data` and `finished`. */
export type FixedProvenance = Omit<Provenance, "data" | "finished">;

/**
 * The provenance fields that do not change while a command runs (src/io/provenance.ts): versions,
 * git commit, device, model and adapter file hashes, start time. A command that rewrites its
 * results file as it goes computes them once (see {@link withData}).
 * @throws CheckpointError when the model folder cannot be read (it was loaded before, so rarely).
 */
export async function fixedProvenance(run: RunInputs): Promise<FixedProvenance> {
  const packages = Object.fromEntries(await Promise.all(RECORDED_PACKAGES.map(async (p) => [p, await installedVersion(p)] as const)));
  const model = run.modelDir ? { dir: run.modelDir, loaded: run.dtype ?? "as stored", ...(await checkpointHashes(run.modelDir)) } : null;
  const adapter = run.adapterDir
    ? { dir: run.adapterDir, sha256: { [ADAPTER_CONFIG_FILE]: await sha256File(join(run.adapterDir, ADAPTER_CONFIG_FILE)), [ADAPTER_WEIGHTS_FILE]: await sha256File(join(run.adapterDir, ADAPTER_WEIGHTS_FILE)) } }
    : null;
  return {
    qalign: await packageVersion(),
    git: gitCommit(),
    node: process.version,
    packages,
    device: describeDevice(run.device),
    model,
    adapter,
    started: run.started.toISOString(),
  };
}

/**
 * The `data` field of a run's provenance: the hash of every data file read so far and of the
 * prompt data, or of the files read directly.
 * @param hashed path -> SHA-256 of files hashed before; a run that asks again after reading more
 *   passes the same map, so that each file is hashed once (it is filled in here)
 */
export async function dataProvenance(run: RunInputs, hashed = new Map<string, string>()): Promise<Provenance["data"]> {
  const hash = async (path: string): Promise<string> => {
    let h = hashed.get(path);
    if (h === undefined) hashed.set(path, (h = await sha256File(path)));
    return h;
  };
  if (run.source) {
    const sha256: Record<string, string> = {};
    const inner = run.source.inner;
    if (inner instanceof FolderSource) for (const path of run.source.read) sha256[inner.describe(path)] = await hash(inner.describe(path));
    else sha256[SAMPLE_DATA_FILE] = await hash(SAMPLE_DATA_FILE);
    sha256[PAPER_PROMPTS_FILE] = await hash(PAPER_PROMPTS_FILE);
    return { source: run.source.description, sha256 };
  }
  if (run.files) return { source: "files", sha256: Object.fromEntries(await Promise.all(run.files.map(async (f) => [f, await hash(f)] as const))) };
  return null;
}

/** The whole provenance from its fixed part, its data part and the end time (null while running), fields in their recorded order. */
export function withData(fixed: FixedProvenance, data: Provenance["data"], finished: Date | null): Provenance {
  const { started, ...rest } = fixed;
  return { ...rest, data, started, finished: finished?.toISOString() ?? null };
}

/**
 * The provenance of a results file (src/io/provenance.ts): versions, git commit, device, model and
 * adapter file hashes, the hash of every data file read so far and of the prompt data, start and
 * end time.
 * @throws CheckpointError when the model folder cannot be read (it was loaded before, so rarely).
 */
export async function provenance(run: RunInputs): Promise<Provenance> {
  return withData(await fixedProvenance(run), await dataProvenance(run), run.finished);
}
