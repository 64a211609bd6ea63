import { existsSync, mkdirSync, statSync } from "node:fs";
import { appendFile, rename, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cacheDir } from "../io/cache.ts";
import { nodeFiles } from "../io/node_files.ts";
import { downloadCheckpoint, isHubId, type DownloadStore, type HubOptions } from "./hub.ts";

/**
 * The Hub download cache on Node (hub.ts's DownloadStore on the file system): checkpoints in
 * `<cacheDir()>/hub/<org>--<name>/<revision>`, partial files grown by appends.
 */

/** Node's download cache under `root` (default: qalign's cache folder, read when a folder is asked for). */
export function nodeStore(root?: string): DownloadStore {
  return {
    files: nodeFiles,
    folder(repo, revision) {
      const dir = join(root ?? join(cacheDir(), "hub"), repo.replace("/", "--"), revision);
      mkdirSync(dir, { recursive: true });
      return dir;
    },
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
  return downloadCheckpoint(name, { ...store, folder: () => (mkdirSync(dir, { recursive: true }), dir) }, opts);
}
