import { copyFile, readChunks, type Files } from "../io/files.ts";
import type { DownloadStore } from "./hub.ts";

/**
 * A Hub download cache on any writable {@link Files} (hub.ts's DownloadStore), for a page's
 * Origin Private File System (io/opfs_files.ts): Files writes whole files atomically and
 * cannot append, so a partial file grows by atomic rewrites.
 * - append: the kept bytes are copied into a new version of the file, then the chunks; when the
 *   chunks fail (a dropped connection, an abort), what arrived is committed before the error
 *   propagates. A tab closed mid-file loses the bytes since the last such commit.
 * - rename: the file is copied to its new name (io/files.ts's copyFile), and the old one removed.
 * Copies go COPY_CHUNK bytes at a time, so memory stays at one chunk for any file size.
 */

/** Bytes per read when copying a file's bytes into a new version of it. */
const COPY_CHUNK = 1 << 24;

/** The first `end` bytes of file `path`, COPY_CHUNK at a time (none when `end` is 0). */
async function* bytesOf(files: Files, path: string, end: number): AsyncIterable<Uint8Array> {
  if (end === 0) return;
  const reader = await files.open(path);
  try {
    yield* readChunks(reader, end, COPY_CHUNK);
  } finally {
    await reader.close();
  }
}

/** A download cache on `files` whose checkpoints go to `<root>/<org>--<name>/<revision>`. */
export function filesStore(files: Files, root: string): DownloadStore {
  const size = async (path: string) => {
    if (!(await files.exists(path))) return 0;
    const reader = await files.open(path);
    await reader.close();
    return reader.size;
  };
  return {
    files,
    folder: (repo, revision) => files.join(files.join(root, repo.replace("/", "--")), revision),
    size,
    async append(path, keep, chunks) {
      let failure: { error: unknown } | null = null;
      await files.writeAtomic(
        path,
        (async function* () {
          yield* bytesOf(files, path, keep);
          try {
            yield* chunks;
          } catch (error) {
            failure = { error }; // end the write normally: the bytes that arrived are committed
          }
        })(),
      );
      if (failure !== null) throw (failure as { error: unknown }).error;
    },
    async rename(from, to) {
      await copyFile(files, from, to);
      await files.remove(from);
    },
    remove: (path) => files.remove(path),
  };
}
