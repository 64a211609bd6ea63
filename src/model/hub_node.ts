import { existsSync, statSync } from "node:fs";
import { appendFile, rename, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cacheDir } from "../io/cache.ts";
import { nodeFiles } from "../io/node_files.ts";
import { downloadCheckpoint, isHubId, probedFileInfo, resolveUrl, type DownloadStore, type HubClient, type HubOptions } from "./hub.ts";

/**
 * Hub downloads on Node: the cache (hub.ts's DownloadStore on the file system, checkpoints in
 * `<cacheDir()>/hub/<org>--<name>/<revision>`, partial files grown by appends) and the client,
 * `@huggingface/hub` (not in a page: its package's exports map hides its browser build from
 * esbuild, so pages use hub_fetch.ts).
 */

/**
 * The Hub client on Node: @huggingface/hub's fileDownloadInfo (a one-byte range request that
 * gives the size and ETag) and downloadFile (a Blob whose slices are range requests). An answer
 * without them throws probedFileInfo's HubResponseError, naming the URL and the headers.
 */
export const libraryClient: HubClient = async (request, path) => {
  const { repo, revision, endpoint, accessToken, fetch } = request;
  const hub = await import("@huggingface/hub");
  // The library's first answer, kept: its "Expected size information" names neither the URL nor
  // the header, which probedFileInfo says.
  let probe: Response | undefined;
  const seen = (async (input: Parameters<typeof fetch>[0], init?: RequestInit) => {
    const res = await fetch(input, init);
    probe ??= res;
    return res;
  }) as typeof fetch;
  const params = { repo, revision, hubUrl: endpoint, accessToken, fetch: seen, path };
  let info;
  try {
    info = await hub.fileDownloadInfo(params);
  } catch (e) {
    // Its InvalidApiResponseFormatError is a plain Error: any failure after an answer that lacks the headers is that one.
    if (probe?.ok) probedFileInfo(resolveUrl(request, path), probe.status, probe.headers);
    throw e;
  }
  if (info === null) return null;
  // xet: false reads the file's resolve URL by ranges (xet reconstruction does not resume this way).
  const blob = await hub.downloadFile({ ...params, downloadInfo: info, xet: false });
  if (blob === null) return null;
  return { size: info.size, etag: info.etag, stream: async (from) => blob.slice(from).stream() };
};

/** Node's download cache under `root` (default: qalign's cache folder, read when a folder is asked for). */
export function nodeStore(root?: string): DownloadStore {
  return {
    files: nodeFiles,
    folder: (repo, revision) => join(root ?? join(cacheDir(), "hub"), repo.replace("/", "--"), revision),
    size: async (path) => (existsSync(path) ? statSync(path).size : 0),
    async append(path, keep, chunks) {
      if (keep === 0) await writeFile(path, new Uint8Array(0));
      else await truncate(path, keep);
      // One append per chunk: what arrived before a failure is on disk for the next try.
      for await (const chunk of chunks) await appendFile(path, chunk);
    },
    rename: (from, to) => rename(from, to),
    remove: (path) => rm(path, { force: true }),
  };
}

/** Whether `model` names a Hub repository rather than a local folder (an existing folder always wins). */
export function isHubName(model: string): boolean {
  return isHubId(model) && !existsSync(model);
}

/**
 * Downloads Hub model `name` ("Qwen/Qwen2.5-0.5B") on Node, as hub.ts's downloadCheckpoint
 * does, into `opts.dir` or the cache folder (`<cacheDir()>/hub/<org>--<name>/<revision>`).
 * @returns the local folder, ready for loadModel and loadTokenizer
 * @throws what downloadCheckpoint throws
 */
export async function downloadModel(name: string, opts: HubOptions & { dir?: string } = {}): Promise<string> {
  const store = nodeStore();
  const dir = opts.dir;
  if (dir === undefined) return downloadCheckpoint(name, store, opts);
  return downloadCheckpoint(name, { ...store, folder: () => dir }, opts);
}
