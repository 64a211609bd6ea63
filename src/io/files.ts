/**
 * The I/O interface between qalign's code and its host: every read and write of the model,
 * lora, eval, interp and align layers (checkpoints, adapters, trainer checkpoints, data,
 * reports) goes through a {@link Files}, so the same code runs on Node (node_files.ts: the file
 * system) and in a browser (web_files.ts: fetch with HTTP range requests, or files the user
 * picked, both read-only; opfs_files.ts: the Origin Private File System, writable;
 * mounted_files.ts: several at path prefixes). Paths are whatever the implementation names
 * files by: file-system paths, URLs, or slash-separated names.
 */
import { importNodeOnly, isNodeHost } from "./host.ts";

/** One open file, read by byte range (a checkpoint is never read whole). */
export interface ByteReader {
  /** How messages name the file. */
  readonly name: string;
  /** Its length in bytes. */
  readonly size: number;
  /**
   * Bytes [start, end) of the file, exactly end - start of them.
   * @throws Error on a short read or an I/O failure (callers add the file's name).
   */
  read(start: number, end: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** What qalign asks of a host's files. */
export interface Files {
  /** The path of `name` inside folder `dir`. */
  join(dir: string, name: string): string;
  /** Whether a file exists at `path` (false for a folder). */
  exists(path: string): Promise<boolean>;
  /** @throws Error naming the file when it cannot be opened. */
  open(path: string): Promise<ByteReader>;
  /** The whole file as UTF-8 text. @throws Error naming the file when it cannot be read. */
  readText(path: string): Promise<string>;
  /**
   * Writes `chunks` in order as the new content of `path`, atomically: a reader sees the old
   * file or the whole new one, never a part. Chunks are taken one at a time, so a generator
   * (sync or async) keeps memory at one chunk; an error it throws leaves the old file. Missing
   * parent folders are created.
   * @throws Error when the host cannot write there (a read-only source such as a web server).
   */
  writeAtomic(path: string, chunks: Iterable<Uint8Array | string> | AsyncIterable<Uint8Array | string>): Promise<void>;
  /** The names of the entries of folder `dir`, sorted. @throws Error when it cannot be listed. */
  list(dir: string): Promise<string[]>;
  /**
   * Builds folder `dir` as a whole (a training checkpoint, a merged model): `fill` writes a fresh
   * temporary folder, the path it is given, which then takes the place of `dir`. At every point
   * {@link latestDir} names a complete folder: the old one until the new one is whole, then the
   * new one; a writer stopped at any step (a crash, a closed tab) leaves no mix of the two.
   * @throws what `fill` throws (its temporary folder is removed); Error where the host cannot write
   */
  replaceDir(dir: string, fill: (tmp: string) => Promise<void>): Promise<void>;
  /**
   * The complete folder that the last {@link replaceDir} of `dir` left: `dir`, or the complete
   * copy beside it that a writer stopped mid-swap left; null when there is none. (Node: like
   * `existsSync`, a file at `dir` counts.)
   * @throws Error where the host cannot tell (a folder over HTTP)
   */
  latestDir(dir: string): Promise<string | null>;
  /** Removes the file or folder at `path` with everything in it; nothing when there is none. @throws Error where the host cannot write */
  remove(path: string): Promise<void>;
}

/**
 * UTF-8 bytes as text, as Node's `readFile(path, "utf8")` decodes them: invalid sequences become
 * U+FFFD and a byte-order mark is kept (Blob.text() and Response.text() drop it), so every host
 * reads the same text from the same file.
 */
export function decodeUtf8(bytes: ArrayBuffer | Uint8Array): string {
  return new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
}

/** Copies go in pieces of this many bytes, so a copy holds one piece in memory. */
const COPY_CHUNK = 64 << 20;

/**
 * The bytes [0, end) of `reader`, `chunk` bytes at a time (none when `end` is 0), so that whoever
 * consumes them holds one piece in memory whatever the file's size.
 * @throws whatever `reader.read` throws (a short read, an I/O error)
 */
export async function* readChunks(reader: ByteReader, end = reader.size, chunk = COPY_CHUNK): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < end; at += chunk) yield await reader.read(at, Math.min(end, at + chunk));
}

/**
 * Copies file `from` to `to` within `files`, atomically (writeAtomic), a piece at a time.
 * @throws Error naming the file that cannot be read or written
 */
export async function copyFile(files: Files, from: string, to: string): Promise<void> {
  const src = await files.open(from);
  try {
    await files.writeAtomic(to, readChunks(src));
  } finally {
    await src.close();
  }
}

/**
 * Whether `path` is a folder of `files`: one it can list (a web server's folders cannot be
 * listed, so under urlFiles this is always false).
 */
export function isFolder(files: Files, path: string): Promise<boolean> {
  return files.list(path).then(
    () => true,
    () => false,
  );
}

/**
 * The last name of a path, as node:path's basename gives it for a folder or Hub id
 * ("~/models/Qwen1.5-1.8B/" and "Qwen/Qwen1.5-1.8B" give "Qwen1.5-1.8B"): trailing separators
 * dropped, "/" and "\\" both separating.
 */
export function baseName(path: string): string {
  return path.replace(/[\\/]+$/, "").split(/[\\/]/).pop() ?? "";
}

/** `dir` + "/" + `name` (just `name` in the root ""): how paths join where they are slash-separated names (picked files, the OPFS). */
export function joinSlash(dir: string, name: string): string {
  return dir === "" ? name : `${dir.replace(/\/+$/, "")}/${name}`;
}

let current: Files | null = null;

/** Node's implementation, imported by a computed name (host.ts) so that browser bundles leave it out. */
const NODE_FILES = "./node_files.ts";

/**
 * The host's files, chosen on first use: Node's file system (node_files.ts) under Node, else
 * URLs resolved against the page's location (web_files.ts); {@link setDefaultFiles} replaces them
 * (a page that reads the files its user picked).
 */
export async function hostFiles(): Promise<Files> {
  if (current !== null) return current;
  current = isNodeHost() ? (await importNodeOnly<typeof import("./node_files.ts")>(NODE_FILES)).nodeFiles : (await import("./web_files.ts")).urlFiles();
  return current;
}

/**
 * How the host's files name the file at `url`, a module-relative URL such as
 * `new URL("./paper_prompts.json", import.meta.url)`: Node's file-system path for a `file:` URL
 * (node:url's fileURLToPath), else the URL itself (a page's bundle, read by urlFiles).
 */
export async function hostPath(url: URL): Promise<string> {
  if (url.protocol !== "file:") return url.href;
  return (await importNodeOnly<typeof import("node:url")>("node:url")).fileURLToPath(url);
}

/** Sets what {@link hostFiles} returns from now on. */
export function setDefaultFiles(files: Files): void {
  current = files;
}
