import { hostFiles, isFolder, type Files } from "../io/files.ts";
import { hostEnv, importNodeOnly, isNodeHost } from "../io/host.ts";
import { parseJson } from "../io/json.ts";
import { hasOpfs, opfsFiles } from "../io/opfs_files.ts";
import { urlFiles } from "../io/web_files.ts";
import { filesStore } from "./hub_files.ts";
import { CheckpointError, INDEX_FILE, SINGLE_FILE } from "./safetensors.ts";

/**
 * Checkpoints from the Hugging Face Hub, on Node and in a browser: the files a Llama-family
 * checkpoint needs, fetched from `<endpoint>/<org>/<name>/resolve/<revision>/<file>` (with
 * `@huggingface/hub` on Node, plain fetch in a page: see HubClient) into a cache (Node: qalign's cache folder,
 * hub_node.ts; a page: its Origin Private File System, through hub_files.ts). Each file grows as
 * `<file>.part`, beside `<file>.part.json` recording the Hub's ETag and size, and is renamed
 * when complete; an interrupted download resumes from the bytes it has (an HTTP range request
 * for the rest) when the ETag and size still match, and starts over otherwise. A dropped
 * connection is retried from where it stopped. A finished download writes
 * `.qalign-download.json`, so later loads of the same revision make no request at all.
 */

/** "org/name" as the Hub writes a repository id: two path segments of letters, digits, `-`, `_`, `.`. */
const HUB_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

/** The marker a complete download leaves in its folder: the repository, revision and Hub, and each file's size (and ETag, when this call fetched it). */
export const DOWNLOAD_MARKER = ".qalign-download.json";

/** Files a checkpoint may have besides its weights; absent ones are skipped. */
const OPTIONAL = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"];

/** Tries per file after a dropped connection that still brought bytes (an attempt that brings none ends it). */
const RETRIES = 3;

/** The Hub names resolve against unless told otherwise ($HF_ENDPOINT on Node, as huggingface_hub reads it). */
export function hubUrl(): string {
  return hostEnv()["HF_ENDPOINT"] || "https://huggingface.co";
}

/** Options of a Hub download (downloadModel, and loadModel given a Hub id). */
export interface HubOptions {
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** The Hub's base URL (default {@link hubUrl}); tests point it at a local server. */
  endpoint?: string;
  /** $HF_TOKEN by default on Node, for gated or private repositories. */
  accessToken?: string;
  /** Called as bytes arrive: the file, its bytes in the cache so far, and its size. */
  onDownload?: (file: string, bytes: number, size: number) => void;
  /** Stops the download; what arrived stays for the next call to resume. It rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Where downloads go (default: the host's cache, Node's cache folder or a page's OPFS), e.g.
   * `nodeStore("/data/hub")` for a folder of one's own, as transformers' `cache_dir`.
   */
  store?: DownloadStore;
}

/**
 * Where downloads go: a folder's files that the checkpoint is then read from, and the few writes
 * a resumable download needs (hub_node.ts: Node's file system; hub_files.ts: any writable Files,
 * such as the OPFS).
 */
export interface DownloadStore {
  /** Reads of the cache, which loadModel and loadTokenizer are given. */
  readonly files: Files;
  /** The cache folder of `repo` at `revision`. */
  folder(repo: string, revision: string): string;
  /** Bytes of the file at `path`, 0 when there is none. */
  size(path: string): Promise<number>;
  /**
   * Keeps the first `keep` bytes of the file at `path` (none, or no file: a new one) and writes
   * `chunks` after them. When `chunks` throws, the bytes written before stay, and the error
   * propagates.
   */
  append(path: string, keep: number, chunks: AsyncIterable<Uint8Array>): Promise<void>;
  /** Renames file `from` to `to`, replacing it. */
  rename(from: string, to: string): Promise<void>;
  /** Removes the file at `path`, if any. */
  remove(path: string): Promise<void>;
}

/** Where a Hub id was found: the folder and the files it is read through. */
export interface ModelSource {
  dir: string;
  files: Files;
}

/** Whether `model` is written as a Hub repository id, "org/name" (it may still be a local folder). */
export function isHubId(model: string): boolean {
  return HUB_ID.test(model);
}

/** The OPFS folder of a page's download cache. */
export const OPFS_HUB_CACHE = "qalign-cache/hub";

/**
 * The host's download cache: on Node the cache folder (hub_node.ts, imported by a name that
 * bundlers leave out; the path is relative to io/host.ts, which imports it); in a page its
 * Origin Private File System under {@link OPFS_HUB_CACHE}; null where there is neither.
 */
async function hostStore(): Promise<DownloadStore | null> {
  if (isNodeHost()) return (await importNodeOnly<typeof import("./hub_node.ts")>("../model/hub_node.ts")).nodeStore();
  if (!hasOpfs()) return null;
  return filesStore(opfsFiles(), OPFS_HUB_CACHE);
}

/**
 * Where `model` is, as transformers' `from_pretrained` decides: with `opts.files`, or when
 * `model` is a folder (of the host's files: one it can list), or is not written "org/name",
 * `model` itself; else a Hub id, downloaded (or found complete) in `opts.store`, by default the
 * host's cache (Node's cache folder, a page's OPFS; a host with neither reads the Hub's
 * resolve/ URLs by ranges, uncached).
 * @throws what {@link downloadCheckpoint} throws
 */
export async function resolveModel(model: string, opts: HubOptions & { files?: Files } = {}): Promise<ModelSource> {
  if (opts.files !== undefined) return { dir: model, files: opts.files };
  const files = await hostFiles();
  // A web server's folders cannot be listed: in a page "org/name" is a Hub id ("./org/name" is the page's own).
  if (!isHubId(model) || (await isFolder(files, model))) return { dir: model, files };
  const store = opts.store ?? (await hostStore());
  // No cache (a page): the Hub's resolve/ URLs, read by ranges as loadModel reads any URL.
  if (store === null) return { dir: ".", files: urlFiles(resolveUrl({ endpoint: endpointOf(opts), repo: model, revision: opts.revision ?? "main" }, "")) };
  return { dir: await downloadCheckpoint(model, store, opts), files: store.files };
}

/** One file as the Hub describes it: its size and ETag, and its bytes from an offset on. */
export interface HubFile {
  size: number;
  etag: string;
  /** The file's bytes [from, size): a range request. @throws an error with `statusCode` for an HTTP failure. */
  stream(from: number): Promise<ReadableStream<Uint8Array>>;
}

/** A server that answered, but not as a Hub endpoint does (no size or ETag): hub_node.ts and hub_fetch.ts throw it. */
export class HubResponseError extends Error {
  override name = "HubResponseError";
}

/**
 * The size and ETag of a file from a Hub endpoint's answer to `GET <url>` with `Range: bytes=0-0`
 * (what @huggingface/hub's fileDownloadInfo reads, and the resumable download needs): the size
 * is Content-Range's total (`bytes 0-0/<size>`, a 206 answer), the ETag X-Linked-ETag (the Hub's,
 * for a file on its CDN) or ETag. A plain web server (`python3 -m http.server`) ignores the range
 * and sends no ETag.
 * @throws HubResponseError naming the URL, the status and each header that is missing or bad
 */
export function probedFileInfo(url: string, status: number, headers: Headers): { size: number; etag: string } {
  const range = headers.get("Content-Range");
  const size = Number(range?.split("/")[1]);
  const etag = headers.get("X-Linked-ETag") ?? headers.get("ETag");
  const missing = [
    ...(range === null ? ["no Content-Range (the file's size, in answer to Range: bytes=0-0)"] : Number.isSafeInteger(size) ? [] : [`Content-Range "${range}" without a size`]),
    ...(etag === null ? ["no ETag or X-Linked-ETag (the file's version, which a resumed download checks)"] : []),
  ];
  if (missing.length > 0) {
    throw new HubResponseError(`${url} answered HTTP ${status} with ${missing.join(" and ")}: the server was reached, but it does not answer as a Hugging Face Hub endpoint (or mirror) does`);
  }
  return { size, etag: etag! };
}

/** What a request to the Hub is about: the repository, its revision, where the Hub is, and how to fetch. */
export interface HubRequest {
  repo: string;
  revision: string;
  endpoint: string;
  accessToken: string | undefined;
  /** fetch, with the download's abort signal. */
  fetch: typeof fetch;
}

/**
 * How a host asks the Hub about `file`: null when the repository has no such file (a 404 with
 * X-Error-Code EntryNotFound). On Node it is `@huggingface/hub` (hub_node.ts), in a page plain
 * fetch (hub_fetch.ts).
 * @throws an error with `statusCode` for an HTTP failure; HubResponseError for an answer without
 *   a size or ETag (probedFileInfo); fetch's error when the Hub cannot be reached.
 */
export type HubClient = (request: HubRequest, file: string) => Promise<HubFile | null>;

/** The Hub's base URL of a download: `opts.endpoint` or {@link hubUrl}, without trailing slashes. */
const endpointOf = (opts: Pick<HubOptions, "endpoint">): string => (opts.endpoint ?? hubUrl()).replace(/\/+$/, "");

/** The URL of `file` in the request's repository and revision: `<endpoint>/<repo>/resolve/<revision>/<file>`. */
export function resolveUrl({ endpoint, repo, revision }: Pick<HubRequest, "endpoint" | "repo" | "revision">, file: string): string {
  return `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${file}`;
}

/** The host's Hub client: @huggingface/hub on Node (imported by a name bundlers leave out), fetch in a page. */
async function hostClient(): Promise<HubClient> {
  if (isNodeHost()) return (await importNodeOnly<typeof import("./hub_node.ts")>("../model/hub_node.ts")).libraryClient;
  return (await import("./hub_fetch.ts")).fetchClient;
}

/** What `.part.json` records beside a partial file. */
interface PartInfo {
  etag: string;
  size: number;
}

/**
 * Downloads Hub checkpoint `repo` ("Qwen/Qwen2.5-0.5B") into `store`: config.json, the weights
 * (model.safetensors, else model.safetensors.index.json and every shard it lists) and the
 * tokenizer files. A folder with the download marker is returned without any request; complete
 * files are kept, partial ones resumed (see the file comment).
 * @returns the cache folder, ready for loadModel and loadTokenizer through `store.files`
 * @throws CheckpointError naming `<endpoint>/<repo>`, the file and the HTTP status for a Hub
 *   error (401/403: gated or private without a token; 404: no such repository or revision), an
 *   unreachable endpoint, a repository without config.json or safetensors weights, an index
 *   listing a shard outside the repository, or a download that stops short after its retries;
 *   all before any weight is read. An abort rejects with the signal's reason.
 */
export async function downloadCheckpoint(repo: string, store: DownloadStore, opts: HubOptions & { client?: HubClient } = {}): Promise<string> {
  const revision = opts.revision ?? "main";
  const endpoint = endpointOf(opts);
  const where = `${endpoint}/${repo}`;
  if (!isHubId(repo)) throw new CheckpointError(repo, 'not a Hub repository id ("org/name")');
  const { files } = store;
  const dir = store.folder(repo, revision);
  if (await files.exists(files.join(dir, DOWNLOAD_MARKER))) return dir;
  const client = opts.client ?? (await hostClient());
  const signal = opts.signal;
  const request: HubRequest = {
    repo,
    revision,
    endpoint,
    accessToken: opts.accessToken ?? (hostEnv()["HF_TOKEN"] || undefined),
    fetch: ((input: Parameters<typeof fetch>[0], init?: RequestInit) => fetch(input, { ...init, signal })) as typeof fetch,
  };
  /** The Hub's answer about `file`, null when the repository has no such file. */
  const ask = async (file: string): Promise<HubFile | null> => {
    try {
      return await client(request, file);
    } catch (e) {
      throw hubError(e, where, file, signal);
    }
  };
  const got: Record<string, { size: number; etag: string | null }> = {};
  /** Fetches one file into the folder; false when the repository has no such file. */
  const fetchFile = async (file: string): Promise<boolean> => {
    const target = files.join(dir, file);
    if (await files.exists(target)) {
      got[file] = { size: await store.size(target), etag: null }; // completed by an earlier call
      return true;
    }
    const remote = await ask(file);
    if (remote === null) return false;
    const { size, etag } = remote;
    const [part, partInfo] = [`${target}.part`, `${target}.part.json`];
    const recorded = (await files.exists(partInfo)) ? readPartInfo(await files.readText(partInfo)) : null;
    let have = await store.size(part);
    // Another version of the file (its ETag or size changed), or more bytes than it has: start over.
    if (recorded?.etag !== etag || recorded.size !== size || have > size) {
      have = 0;
      await files.writeAtomic(partInfo, [JSON.stringify({ etag, size } satisfies PartInfo)]);
    }
    opts.onDownload?.(file, have, size);
    for (let tries = 0; have < size; ) {
      const before = have;
      try {
        // A range request for bytes have..: only the missing bytes travel.
        await store.append(part, have, counted(remote.stream(have), (n) => opts.onDownload?.(file, (have += n), size)));
      } catch (e) {
        have = await store.size(part);
        if (signal?.aborted) throw signal.reason;
        if (have === before || ++tries > RETRIES) {
          throw new CheckpointError(where, `${file}: the download stopped at ${have} of ${size} bytes (${messageOf(e)}); run again to resume`);
        }
        continue;
      }
      have = await store.size(part);
      if (have !== size) throw new CheckpointError(where, `${file}: the Hub sent ${have} bytes where it announced ${size}`);
    }
    await store.rename(part, target);
    await store.remove(partInfo);
    got[file] = { etag, size };
    return true;
  };
  if (!(await fetchFile("config.json"))) throw new CheckpointError(where, "has no config.json (HTTP 404): not a transformers checkpoint, or no such revision");
  if (!(await fetchFile(SINGLE_FILE))) {
    if (!(await fetchFile(INDEX_FILE))) throw new CheckpointError(where, `has neither ${SINGLE_FILE} nor ${INDEX_FILE} (HTTP 404): qalign reads safetensors weights only`);
    const indexPath = files.join(dir, INDEX_FILE);
    const index = parseJson(await files.readText(indexPath)) as { weight_map?: Record<string, unknown> } | null;
    for (const shard of new Set(Object.values(index?.weight_map ?? {}))) {
      if (typeof shard !== "string" || !/^[\w.-]+$/.test(shard) || shard === "." || shard === "..") {
        throw new CheckpointError(indexPath, `weight_map names ${JSON.stringify(shard)}, not a file of the repository`);
      }
      if (!(await fetchFile(shard))) throw new CheckpointError(where, `lists shard ${shard}, which the repository does not have (HTTP 404)`);
    }
  }
  for (const file of OPTIONAL) await fetchFile(file);
  await files.writeAtomic(files.join(dir, DOWNLOAD_MARKER), [JSON.stringify({ repo, revision, endpoint, files: got }, null, 1)]);
  return dir;
}

/** The chunks of `stream`, each one's byte count reported to `onBytes` once the consumer took it. */
async function* counted(opened: Promise<ReadableStream<Uint8Array>>, onBytes: (n: number) => void): AsyncIterable<Uint8Array> {
  // A reader rather than `for await`: async iteration of ReadableStream is recent in browsers.
  const reader = (await opened).getReader();
  let ended = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if ((ended = done)) return;
      yield value;
      onBytes(value.byteLength);
    }
  } finally {
    // A consumer that stopped early (its write failed) closes the connection.
    if (!ended) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}

/** An error's message; @huggingface/hub aborts a failed range stream with a bare string. */
function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A `.part.json` file's record, or null when it is not one (a damaged file: the part starts over). */
function readPartInfo(text: string): PartInfo | null {
  try {
    const v = parseJson(text) as Partial<PartInfo> | null;
    return typeof v?.etag === "string" && typeof v.size === "number" ? { etag: v.etag, size: v.size } : null;
  } catch {
    return null;
  }
}

/** Why a status fails, in the words a user can act on. */
const STATUS_HINTS: Record<number, string> = {
  401: "the repository is private or gated, or does not exist: set HF_TOKEN (accessToken) to a token that may read it",
  403: "the token may not read this repository (a gated model: accept its terms on the Hub)",
  404: "no such repository, revision or file",
  429: "rate limited: wait and run again",
};

/**
 * A Hub failure as a CheckpointError naming the repository, the file and the HTTP status (the
 * client's error carries `statusCode`, as @huggingface/hub's HubApiError does), or the headers a
 * server that is not a Hub endpoint left out (HubResponseError); an abort stays the signal's reason.
 */
function hubError(e: unknown, where: string, file: string, signal: AbortSignal | undefined): unknown {
  if (signal?.aborted) return signal.reason;
  const status = (e as { statusCode?: unknown }).statusCode;
  if (typeof status === "number") return new CheckpointError(where, `${file}: HTTP ${status}: ${STATUS_HINTS[status] ?? messageOf(e)}`);
  if (e instanceof HubResponseError) return new CheckpointError(where, `${file}: ${e.message}`);
  return new CheckpointError(where, `${file}: cannot reach the Hub: ${messageOf(e)}`);
}
