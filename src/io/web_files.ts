import { decodeUtf8, joinSlash, type ByteReader, type Files } from "./files.ts";

/**
 * Files in a browser (see files.ts): read-only sources, since a page cannot write to a web server
 * or to the files a user picked.
 * - urlFiles: a folder on a web server (the page's own origin, a local server, the Hub's
 *   `resolve/main/` URLs), each tensor fetched by an HTTP range request (RFC 9110 section 14), so
 *   loading a checkpoint transfers only the bytes it reads, as on Node.
 * - blobFiles: files the user picked (`<input type="file" webkitdirectory>`), read by Blob slices.
 */

/** Read-only sources refuse writes with this. */
function readOnly(path: string): never {
  throw new Error(`${path}: this source is read-only (a web server or picked files); write to the Origin Private File System instead (opfsFiles, or mountedFiles to read here and write there)`);
}

/** What asking after a folder over HTTP gets. */
function unlistable(url: string): Error {
  return new Error(`${url}: a folder cannot be listed over HTTP; name its files`);
}

/** A fetch that must succeed. @throws Error naming the URL and the HTTP status. */
async function fetchOk(url: string, init?: RequestInit): Promise<Response> {
  const res = await fetch(url, init);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
  return res;
}

/**
 * Files under URLs, relative paths resolved against `base` (default: the page's location).
 * Folders cannot be listed over HTTP: `list` throws.
 * @param base an absolute URL
 */
export function urlFiles(base: string = (globalThis as { location?: { href: string } }).location?.href ?? ""): Files {
  const abs = (path: string) => new URL(path, base).href;
  return {
    join: (dir, name) => new URL(name, abs(dir).replace(/\/?$/, "/")).href,
    async exists(path) {
      return (await fetch(abs(path), { method: "HEAD" })).ok;
    },
    async open(path): Promise<ByteReader> {
      const url = abs(path);
      const length = (await fetchOk(url, { method: "HEAD" })).headers.get("Content-Length");
      const size = Number(length);
      if (length === null || !Number.isSafeInteger(size)) throw new Error(`${url}: the server sent no Content-Length, so the file cannot be read by ranges`);
      return {
        name: url,
        size,
        async read(start, end) {
          if (end <= start) return new Uint8Array(0);
          const res = await fetchOk(url, { headers: { Range: `bytes=${start}-${end - 1}` } });
          // 206: the range. A server that ignores Range answers 200 with the whole file.
          const body = new Uint8Array(await res.arrayBuffer());
          const bytes = res.status === 206 ? body : body.subarray(start, end);
          if (bytes.byteLength !== end - start) throw new Error(`short read: got ${bytes.byteLength} of ${end - start} bytes at offset ${start}`);
          return bytes;
        },
        close: async () => undefined,
      };
    },
    async readText(path) {
      return decodeUtf8(await (await fetchOk(abs(path))).arrayBuffer());
    },
    writeAtomic: (path) => Promise.resolve().then(() => readOnly(abs(path))),
    list: (dir) => Promise.reject(unlistable(abs(dir))),
    replaceDir: (dir) => Promise.resolve().then(() => readOnly(abs(dir))),
    latestDir: (dir) => Promise.reject(unlistable(abs(dir))),
    remove: (path) => Promise.resolve().then(() => readOnly(abs(path))),
  };
}

/**
 * Files the user picked, by path: `picked` maps "folder/config.json" to its File (a picked
 * folder's files carry that path as `webkitRelativePath`).
 */
export function blobFiles(picked: ReadonlyMap<string, Blob>): Files {
  const get = (path: string) => {
    const blob = picked.get(path);
    if (blob === undefined) throw new Error(`${path}: not among the picked files`);
    return blob;
  };
  return {
    join: joinSlash,
    exists: async (path) => picked.has(path),
    async open(path): Promise<ByteReader> {
      const blob = get(path);
      return {
        name: path,
        size: blob.size,
        read: async (start, end) => new Uint8Array(await blob.slice(start, end).arrayBuffer()),
        close: async () => undefined,
      };
    },
    readText: async (path) => decodeUtf8(await get(path).arrayBuffer()),
    writeAtomic: (path) => Promise.resolve().then(() => readOnly(path)),
    async list(dir) {
      const prefix = dir === "" ? "" : `${dir.replace(/\/$/, "")}/`;
      return [...picked.keys()].filter((p) => p.startsWith(prefix) && !p.slice(prefix.length).includes("/")).map((p) => p.slice(prefix.length)).sort();
    },
    replaceDir: (dir) => Promise.resolve().then(() => readOnly(dir)),
    // A picked folder holds its files' paths only: it exists when a picked path is inside it.
    latestDir: async (dir) => ([...picked.keys()].some((p) => p.startsWith(`${dir.replace(/\/$/, "")}/`)) ? dir : null),
    remove: (path) => Promise.resolve().then(() => readOnly(path)),
  };
}
