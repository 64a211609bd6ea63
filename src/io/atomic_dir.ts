import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/**
 * Crash-safe folder writes (files: atomic.ts): a reader (or a resumed run) sees either
 * the old or the new version of a folder, never a half-written one, because POSIX `rename`
 * within a filesystem is atomic.
 */

/**
 * Builds folder `dir` atomically: `fill` creates and writes a fresh temporary sibling, which then
 * takes the place of `dir`. An existing `dir` is first renamed to `<dir>.old` and removed after
 * the swap, so a crash between the two renames leaves `<dir>.old` complete (see
 * {@link latestDir}). Temporary siblings left by a writer killed mid-fill are removed first.
 */
export async function replaceDirAtomic(dir: string, fill: (tmp: string) => Promise<void>): Promise<void> {
  const parent = dirname(dir);
  const prefix = `${basename(dir)}.tmp-`;
  if (existsSync(parent)) {
    for (const name of await readdir(parent)) if (name.startsWith(prefix)) await rm(join(parent, name), { recursive: true, force: true });
  }
  const tmp = join(parent, `${prefix}${process.pid}-${randomBytes(4).toString("hex")}`);
  const old = `${dir}.old`;
  try {
    await fill(tmp);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  // At every point below, `dir` or `old` is a complete folder.
  if (existsSync(dir)) {
    await rm(old, { recursive: true, force: true });
    await rename(dir, old);
  }
  await rename(tmp, dir);
  await rm(old, { recursive: true, force: true });
}

/** `dir` when it exists, else `<dir>.old` left by a crash inside {@link replaceDirAtomic}, else null. */
export function latestDir(dir: string): string | null {
  if (existsSync(dir)) return dir;
  return existsSync(`${dir}.old`) ? `${dir}.old` : null;
}
