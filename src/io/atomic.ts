import { randomBytes } from "node:crypto";
import { open, rename, rm, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/**
 * Crash-safe file writes: a reader (or a resumed run) sees either the old or the new version of
 * a file, never a half-written one, because POSIX `rename` within a filesystem is atomic.
 */

/**
 * Writes `file` through a temporary sibling: `write` fills the open handle, which is then flushed
 * (fsync) and renamed over `file`. I/O errors propagate and leave no temporary file behind.
 */
export async function writeAtomic(file: string, write: (fh: FileHandle) => Promise<void>): Promise<void> {
  const tmp = join(dirname(file), `.${basename(file)}.${randomBytes(6).toString("hex")}.tmp`);
  const fh = await open(tmp, "wx");
  try {
    await write(fh);
    await fh.sync();
    await fh.close();
    await rename(tmp, file);
  } catch (e) {
    await fh.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Writes `text` (UTF-8) to `file` atomically (see writeAtomic). */
export function writeFileAtomic(file: string, text: string): Promise<void> {
  return writeAtomic(file, (fh) => fh.writeFile(text, "utf8"));
}
