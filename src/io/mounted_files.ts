import type { Files } from "./files.ts";

/**
 * Several sources as one {@link Files} (files.ts), each mounted at a path prefix: a page reads a
 * checkpoint from URLs or from picked files and writes adapters and reports to the OPFS through
 * one object, e.g. `mountedFiles({ "": urlFiles(), "opfs:": opfsFiles() })` reads
 * "/models/x/config.json" over HTTP and writes "opfs:runs/adapter/adapter_config.json" to the OPFS.
 * A path goes to the mount with the longest prefix that starts it, with that prefix removed; the
 * paths a mount's `join` returns get the prefix back, so they route to the same mount.
 * @throws Error (from each operation) naming the path when no prefix starts it; give a "" mount to catch all.
 */
export function mountedFiles(mounts: Readonly<Record<string, Files>>): Files {
  const prefixes = Object.keys(mounts).sort((a, b) => b.length - a.length);
  const route = (path: string): [Files, string, string] => {
    const prefix = prefixes.find((p) => path.startsWith(p));
    if (prefix === undefined) throw new Error(`${path}: no mounted source has a prefix of this path (mounted: ${prefixes.map((p) => JSON.stringify(p)).join(", ")})`);
    return [mounts[prefix]!, prefix, path.slice(prefix.length)];
  };
  /** `op` on the mount of `path`, its synchronous routing error as a rejected promise. */
  const on = async <T>(path: string, op: (files: Files, rest: string, prefix: string) => Promise<T>): Promise<T> => {
    const [files, prefix, rest] = route(path);
    return op(files, rest, prefix);
  };
  return {
    join(dir, name) {
      const [files, prefix, rest] = route(dir);
      return prefix + files.join(rest, name);
    },
    exists: (path) => on(path, (f, p) => f.exists(p)),
    open: (path) => on(path, (f, p) => f.open(p)),
    readText: (path) => on(path, (f, p) => f.readText(p)),
    writeAtomic: (path, chunks) => on(path, (f, p) => f.writeAtomic(p, chunks)),
    list: (dir) => on(dir, (f, p) => f.list(p)),
    replaceDir: (dir, fill) => on(dir, (f, p, prefix) => f.replaceDir(p, (tmp) => fill(prefix + tmp))),
    latestDir: (dir) => on(dir, async (f, p, prefix) => {
      const found = await f.latestDir(p);
      return found === null ? null : prefix + found;
    }),
    remove: (path) => on(path, (f, p) => f.remove(p)),
  };
}
