import { mkdir, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";

/**
 * Creates folder `dir` and its missing parents, one `mkdir` each, from the nearest existing
 * ancestor down: `mkdir -p` without Node's `{ recursive: true }`. Node 20's recursive mkdir
 * never returns under a filesystem that answers ENOENT for any new name (`/proc`, `/sys`): it
 * retries the parent forever. Here the first refused level throws instead.
 * @throws the OS's error (ENOENT, EACCES, ENOTDIR, EEXIST for a file in the way) for the first
 *   level that cannot be made
 */
export async function makeDirs(dir: string): Promise<void> {
  const missing: string[] = [];
  for (let at = resolve(dir); ; at = dirname(at)) {
    const found = await stat(at).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return null;
      throw e;
    });
    if (found !== null) {
      if (!found.isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${at}'`), { code: "ENOTDIR" });
      break;
    }
    missing.push(at);
    if (dirname(at) === at) break;
  }
  for (const level of missing.reverse()) {
    await mkdir(level).catch(async (e: NodeJS.ErrnoException) => {
      // Another process made it between the stat and here: that is what was asked, if a folder.
      if (e.code !== "EEXIST" || !(await stat(level)).isDirectory()) throw e;
    });
  }
}
