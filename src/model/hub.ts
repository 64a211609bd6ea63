import { existsSync, statSync } from "node:fs";
import { appendFile, mkdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { downloadFile } from "@huggingface/hub";
import { cacheDir } from "../io/cache.ts";
import { parseJson } from "../io/json.ts";
import { CheckpointError, INDEX_FILE, SINGLE_FILE } from "./safetensors.ts";

/**
 * Checkpoints from the Hugging Face Hub (Node): the files a Llama-family checkpoint needs,
 * fetched with `@huggingface/hub` from `<hubUrl>/<org>/<name>/resolve/<revision>/<file>` into
 * qalign's cache folder, each written to `<file>.part` and renamed when complete, so an
 * interrupted download resumes from the bytes it has (an HTTP range request for the rest).
 */

/** The Hub that names resolve against unless told otherwise ($HF_ENDPOINT, as huggingface_hub reads it). */
export function hubUrl(): string {
  return process.env["HF_ENDPOINT"] || "https://huggingface.co";
}

/** "org/name" as the Hub writes a repository id: two path segments of letters, digits, `-`, `_`, `.`. */
const HUB_NAME = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

/** Whether `model` names a Hub repository rather than a local folder (an existing folder always wins). */
export function isHubName(model: string): boolean {
  return HUB_NAME.test(model) && !existsSync(model);
}

/** Options of {@link downloadModel}. */
export interface DownloadOptions {
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** The Hub's base URL (default {@link hubUrl}); tests point it at a local server. */
  hubUrl?: string;
  /** The folder the checkpoint goes to (default `<cacheDir()>/hub/<org>--<name>/<revision>`). */
  dir?: string;
  /** $HF_TOKEN by default, for gated or private repositories. */
  accessToken?: string;
  /** Called as bytes arrive: the file, its bytes on disk so far, and its size. */
  onProgress?: (file: string, bytes: number, size: number) => void;
}

/** Files a checkpoint may have besides its weights; absent ones are skipped. */
const OPTIONAL = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"];

/**
 * Downloads Hub model `name` ("Qwen/Qwen2.5-0.5B"): config.json, the weights
 * (model.safetensors, else model.safetensors.index.json and every shard it lists) and the
 * tokenizer files. Complete files already in the folder are kept; a `.part` file is resumed.
 * @returns the local folder, ready for loadModel and loadTokenizer
 * @throws CheckpointError naming the repository when it has no config.json or no safetensors
 *   weights, or the index lists a shard outside the repository; the Hub's HTTP errors
 *   (HubApiError: 401/403 for gated models without a token, 404 for an unknown name).
 */
export async function downloadModel(name: string, opts: DownloadOptions = {}): Promise<string> {
  const revision = opts.revision ?? "main";
  const dir = opts.dir ?? join(cacheDir(), "hub", name.replace("/", "--"), revision);
  const params = { repo: name, revision, hubUrl: opts.hubUrl ?? hubUrl(), accessToken: opts.accessToken ?? (process.env["HF_TOKEN"] || undefined) };
  const where = `${params.hubUrl}/${name}`;
  await mkdir(dir, { recursive: true });
  /** Fetches one file into `dir`; false when the repository has no such file. */
  const fetchFile = async (file: string): Promise<boolean> => {
    const target = join(dir, file);
    if (existsSync(target)) return true;
    const blob = await downloadFile({ ...params, path: file });
    if (blob === null) return false;
    const part = `${target}.part`;
    let have = existsSync(part) ? statSync(part).size : 0;
    if (have > blob.size) have = 0; // a stale part of another version: start over
    if (have === 0) await writeFile(part, new Uint8Array(0));
    opts.onProgress?.(file, have, blob.size);
    // blob.slice(have) is fetched with `Range: bytes=have-`: only the missing bytes travel.
    for await (const chunk of blob.slice(have).stream() as unknown as AsyncIterable<Uint8Array>) {
      await appendFile(part, chunk);
      have += chunk.byteLength;
      opts.onProgress?.(file, have, blob.size);
    }
    if ((await stat(part)).size !== blob.size) throw new CheckpointError(where, `download of ${file} stopped at ${have} of ${blob.size} bytes`);
    await rename(part, target);
    return true;
  };
  if (!(await fetchFile("config.json"))) throw new CheckpointError(where, "has no config.json: not a transformers checkpoint");
  if (!(await fetchFile(SINGLE_FILE))) {
    if (!(await fetchFile(INDEX_FILE))) throw new CheckpointError(where, `has neither ${SINGLE_FILE} nor ${INDEX_FILE}: qalign reads safetensors weights only`);
    const index = parseJson(await readFile(join(dir, INDEX_FILE), "utf8")) as { weight_map?: Record<string, unknown> } | null;
    const shards = [...new Set(Object.values(index?.weight_map ?? {}))];
    for (const shard of shards) {
      if (typeof shard !== "string" || !/^[\w.-]+$/.test(shard)) throw new CheckpointError(join(dir, INDEX_FILE), `weight_map names ${JSON.stringify(shard)}, not a file of the repository`);
      if (!(await fetchFile(shard))) throw new CheckpointError(where, `lists shard ${shard}, which the repository does not have`);
    }
  }
  for (const file of OPTIONAL) await fetchFile(file);
  return dir;
}
