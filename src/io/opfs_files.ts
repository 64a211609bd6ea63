import { decodeUtf8, joinSlash, type ByteReader, type Files } from "./files.ts";

/**
 * Files on a browser's Origin Private File System (OPFS, WHATWG File System Standard): the
 * page's own writable storage, for what qalign writes in a browser (adapters, reports, caches).
 * Paths are slash-separated names under the OPFS root ("runs/adapter/adapter_config.json");
 * empty segments are ignored ("/a//b" is "a/b") and "." or ".." are refused, since OPFS has no
 * parent links. A folder is a FileSystemDirectoryHandle, a file a FileSystemFileHandle.
 */

/** The parts of the File System Standard's handles used here (TypeScript's DOM types are not loaded: the core builds without lib.dom). */
interface WritableStream {
  write(data: Uint8Array | string | Blob): Promise<void>;
  close(): Promise<void>;
  abort(reason?: unknown): Promise<void>;
}
interface FileHandle {
  readonly kind: "file";
  readonly name: string;
  getFile(): Promise<Blob>;
  createWritable(options?: { keepExistingData?: boolean }): Promise<WritableStream>;
  /** Chrome 110+, Firefox 111+, Safari 16.4+ on OPFS: renames the file, replacing `name` in the same folder. */
  move?(name: string): Promise<void>;
}
/** An OPFS folder (FileSystemDirectoryHandle). */
export interface OpfsDirectory {
  readonly kind: "directory";
  readonly name: string;
  getDirectoryHandle(name: string, options?: { create?: boolean }): Promise<OpfsDirectory>;
  getFileHandle(name: string, options?: { create?: boolean }): Promise<FileHandle>;
  removeEntry(name: string, options?: { recursive?: boolean }): Promise<void>;
  keys(): AsyncIterable<string>;
  entries(): AsyncIterable<[string, FileHandle | OpfsDirectory]>;
}

/** The page's storage manager, where it has one (navigator.storage). */
function storageManager(): { getDirectory?(): Promise<OpfsDirectory> } | undefined {
  return (globalThis as { navigator?: { storage?: { getDirectory?(): Promise<OpfsDirectory> } } }).navigator?.storage;
}

/** Whether the host has an Origin Private File System (navigator.storage.getDirectory): a page of a current browser, not Node. */
export function hasOpfs(): boolean {
  return typeof storageManager()?.getDirectory === "function";
}

/** The OPFS root of the page (navigator.storage.getDirectory()). @throws Error where the host has none (Node, an old browser). */
function opfsRoot(): Promise<OpfsDirectory> {
  if (!hasOpfs()) return Promise.reject(new Error("this host has no Origin Private File System (navigator.storage.getDirectory)"));
  return storageManager()!.getDirectory!();
}

/** The names of `path`'s segments. @throws Error naming the path for a "." or ".." segment. */
function segments(path: string): string[] {
  const parts = path.split("/").filter((s) => s !== "");
  if (parts.some((s) => s === "." || s === "..")) throw new Error(`${path}: OPFS paths are names under its root; "." and ".." are not allowed`);
  return parts;
}

/** A missing entry or an entry of the other kind (a folder where a file is asked for, or the reverse). */
function isMissing(e: unknown): boolean {
  const name = (e as { name?: unknown } | null)?.name;
  return name === "NotFoundError" || name === "TypeMismatchError";
}

/** A temporary sibling's name, as Node's atomic.ts names them: hidden, random, `.tmp`. */
function tmpName(name: string): string {
  const random = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
  return `.${name}.${random}.tmp`;
}

/** Orders temporary folders by creation: a fixed-width time stamp, then a counter within this page. */
let sequence = 0;
function stamp(): string {
  return `${Date.now().toString(36).padStart(10, "0")}${(sequence++ % 36 ** 4).toString(36).padStart(4, "0")}`;
}

/** Copies folder `src`'s files and folders into `dest`, recursively. */
async function copyTree(src: OpfsDirectory, dest: OpfsDirectory): Promise<void> {
  for await (const [name, handle] of src.entries()) {
    if (handle.kind === "directory") {
      await copyTree(handle, await dest.getDirectoryHandle(name, { create: true }));
    } else {
      const out = await (await dest.getFileHandle(name, { create: true })).createWritable();
      await out.write(await handle.getFile());
      await out.close();
    }
  }
}

/** The names of folder `dir`'s entries, sorted. */
async function namesOf(dir: OpfsDirectory): Promise<string[]> {
  const names: string[] = [];
  for await (const n of dir.keys()) names.push(n);
  return names.sort();
}

/**
 * `path`'s folder segments and last name.
 * @throws Error naming the path and `what` was asked of it when it is the root
 */
function lastName(path: string, what: string): [string[], string] {
  const parts = segments(path);
  const name = parts.pop();
  if (name === undefined) throw new Error(`${path}: the OPFS root is a folder, it cannot be ${what}`);
  return [parts, name];
}

/** Removes entry `name` of `dir` with everything in it, when there is one. */
async function removeIfThere(dir: OpfsDirectory, name: string): Promise<void> {
  await dir.removeEntry(name, { recursive: true }).catch((e: unknown) => {
    if (!isMissing(e)) throw e;
  });
}

/**
 * Files on the OPFS (see above), under `root` (default: the page's OPFS root, asked for on first
 * use). Behaves as Node's files (node_files.ts) on the same operations: `list` gives a folder's
 * file and folder names sorted, `exists` is false for a folder, a missing file or folder is an
 * error naming the path, and `writeAtomic` creates missing parent folders.
 *
 * writeAtomic writes a temporary sibling (`.<name>.<random>.tmp`) and then renames it over the
 * file with FileSystemFileHandle.move, which replaces it in one step: a reader sees the old file
 * or the whole new one. Where move is missing, the temporary file's bytes are streamed into the
 * file through one writable stream, whose content the standard makes visible only when the
 * stream closes, so a reader again sees the old or the whole new file; the temporary file is
 * removed after (a tab closed in between leaves it, as a killed Node process does). Both ways, a
 * reader lists the temporary sibling while the write runs. A File from an earlier `open` is a
 * snapshot: once the file is replaced, reading it fails (Chrome: NotReadableError) rather than
 * mixing old and new bytes.
 *
 * replaceDir cannot rename a folder (no browser moves an OPFS folder), so a complete temporary
 * folder `<dir>.tmp-<stamp>` is marked by an empty sibling file `<dir>.tmp-<stamp>.complete`
 * (one file creation: the commit), then copied over `dir`, then unmarked and removed. While
 * a marked folder exists latestDir names it (the newest, if a crash left several), else `dir`:
 * a complete folder at every step. The copy costs the folder's size once more.
 */
export function opfsFiles(root?: OpfsDirectory): Files {
  let top: Promise<OpfsDirectory> | null = null;
  const rootDir = () => (top ??= root ? Promise.resolve(root) : opfsRoot());

  /** The folder at `parts`, created when `create`. */
  const folder = async (parts: string[], create: boolean): Promise<OpfsDirectory> => {
    let dir = await rootDir();
    for (const p of parts) dir = await dir.getDirectoryHandle(p, { create });
    return dir;
  };
  /** The folder holding the file at `path`, and the file's name. @throws Error naming the path for the root itself. */
  const parentOf = async (path: string, create: boolean): Promise<[OpfsDirectory, string]> => {
    const [parts, name] = lastName(path, "read or written as a file");
    return [await folder(parts, create), name];
  };
  /** The file at `path`, or null when it is missing or a folder. */
  const lookup = async (path: string): Promise<Blob | null> => {
    try {
      const [dir, name] = await parentOf(path, false);
      return await (await dir.getFileHandle(name)).getFile();
    } catch (e) {
      if (isMissing(e)) return null;
      throw e;
    }
  };
  /** The file at `path`. @throws Error naming the path when it is missing or a folder. */
  const file = async (path: string): Promise<Blob> => {
    const blob = await lookup(path);
    if (blob === null) throw new Error(`${path}: no such file in the OPFS`);
    return blob;
  };

  return {
    join: joinSlash,
    exists: async (path) => (await lookup(path)) !== null,
    async open(path): Promise<ByteReader> {
      const blob = await file(path);
      return {
        name: path,
        size: blob.size,
        async read(start, end) {
          const bytes = new Uint8Array(await blob.slice(start, end).arrayBuffer());
          if (bytes.byteLength !== end - start) throw new Error(`short read: got ${bytes.byteLength} of ${end - start} bytes at offset ${start}`);
          return bytes;
        },
        close: async () => undefined,
      };
    },
    readText: async (path) => decodeUtf8(await (await file(path)).arrayBuffer()),
    async writeAtomic(path, chunks) {
      const [dir, name] = await parentOf(path, true);
      const tmp = tmpName(name);
      const handle = await dir.getFileHandle(tmp, { create: true });
      try {
        const out = await handle.createWritable();
        try {
          for await (const chunk of chunks) await out.write(chunk);
        } catch (e) {
          await out.abort(e).catch(() => undefined);
          throw e;
        }
        await out.close();
        if (handle.move) return await handle.move(name);
        const dest = await (await dir.getFileHandle(name, { create: true })).createWritable();
        await dest.write(await handle.getFile());
        await dest.close();
      } catch (e) {
        await dir.removeEntry(tmp).catch(() => undefined);
        throw e;
      }
      await dir.removeEntry(tmp);
    },
    async replaceDir(dir, fill) {
      const [parts, name] = lastName(dir, "replaced");
      const parent = await folder(parts, true);
      const names = await namesOf(parent);
      const prefix = `${name}.tmp-`;
      const marked = names.filter((n) => n.startsWith(prefix) && n.endsWith(".complete")).map((n) => n.slice(0, -".complete".length));
      // Temporary folders no marker vouches for are what a writer stopped mid-fill left.
      for (const n of names) if (n.startsWith(prefix) && !n.endsWith(".complete") && !marked.includes(n)) await removeIfThere(parent, n);
      const tmpName = `${prefix}${stamp()}`;
      const tmp = await parent.getDirectoryHandle(tmpName, { create: true });
      try {
        await fill(joinSlash(parts.join("/"), tmpName));
      } catch (e) {
        await removeIfThere(parent, tmpName);
        throw e;
      }
      await parent.getFileHandle(`${tmpName}.complete`, { create: true }); // the commit
      for (const n of marked) {
        await removeIfThere(parent, `${n}.complete`);
        await removeIfThere(parent, n);
      }
      await removeIfThere(parent, name);
      await copyTree(tmp, await parent.getDirectoryHandle(name, { create: true }));
      await parent.removeEntry(`${tmpName}.complete`);
      await removeIfThere(parent, tmpName);
    },
    async latestDir(dir) {
      const [parts, name] = lastName(dir, "replaced");
      let names: string[];
      try {
        names = await namesOf(await folder(parts, false));
      } catch (e) {
        if (isMissing(e)) return null;
        throw e;
      }
      const prefix = `${name}.tmp-`;
      const marked = names.filter((n) => n.startsWith(prefix) && n.endsWith(".complete") && names.includes(n.slice(0, -".complete".length)));
      if (marked.length > 0) return joinSlash(parts.join("/"), marked.sort().at(-1)!.slice(0, -".complete".length));
      return names.includes(name) ? dir : null;
    },
    async remove(path) {
      const [parts, name] = lastName(path, "removed");
      try {
        await removeIfThere(await folder(parts, false), name);
      } catch (e) {
        if (!isMissing(e)) throw e;
      }
    },
    async list(dir) {
      try {
        return await namesOf(await folder(segments(dir), false));
      } catch (e) {
        throw isMissing(e) ? new Error(`${dir}: no such folder in the OPFS`) : e;
      }
    },
  };
}
