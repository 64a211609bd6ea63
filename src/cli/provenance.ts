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

/**
 * The provenance of a results file (src/io/provenance.ts): versions, git commit, device, model and
 * adapter file hashes, the hash of every data file read so far and of the prompt data, start and
 * end time.
 * @throws CheckpointError when the model folder cannot be read (it was loaded before, so rarely).
 */
export async function provenance(run: RunInputs): Promise<Provenance> {
  const packages = Object.fromEntries(await Promise.all(RECORDED_PACKAGES.map(async (p) => [p, await installedVersion(p)] as const)));
  let data: Provenance["data"] = null;
  if (run.source) {
    const sha256: Record<string, string> = {};
    const inner = run.source.inner;
    if (inner instanceof FolderSource) for (const path of run.source.read) sha256[inner.describe(path)] = await sha256File(inner.describe(path));
    else sha256[SAMPLE_DATA_FILE] = await sha256File(SAMPLE_DATA_FILE);
    sha256[PAPER_PROMPTS_FILE] = await sha256File(PAPER_PROMPTS_FILE);
    data = { source: run.source.description, sha256 };
  } else if (run.files) {
    data = { source: "files", sha256: Object.fromEntries(await Promise.all(run.files.map(async (f) => [f, await sha256File(f)] as const))) };
  }
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
    data,
    started: run.started.toISOString(),
    finished: run.finished?.toISOString() ?? null,
  };
}
