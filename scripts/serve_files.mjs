// A local file answered as a static web server answers it, for `npm run demo:browser` and the
// browser tests' server (test/helpers/browser.ts): the whole file, or the single byte range a
// `Range: bytes=a-b` header asks for (206 with Content-Range, RFC 9110 section 14; 416 when it
// starts past the end), with an ETag (size and modification time). Checkpoints load in a page
// by such ranges (src/io/web_files.ts).
import { closeSync, openSync, readSync, statSync } from "node:fs";

/** The bytes [start, end) of file `local`, read alone (a range of a checkpoint of gigabytes). */
function readRange(local, start, end) {
  const body = Buffer.allocUnsafe(end - start);
  const fd = openSync(local, "r");
  try {
    for (let done = 0; done < body.length; ) {
      const got = readSync(fd, body, done, body.length - done, start + done);
      if (got === 0) throw new Error(`${local}: short read: got ${done} of ${body.length} bytes at offset ${start}`);
      done += got;
    }
  } finally {
    closeSync(fd);
  }
  return body;
}

/**
 * The answer to a GET or HEAD of `local` with Range header `range`.
 * @returns null when `local` is not a file; else the status, headers, and `body`, the bytes to
 *   send (the whole file, or the range asked for)
 * @throws Error naming the file for a short read (the file shrank while read)
 */
export function fileAnswer(local, range) {
  const stat = statSync(local, { throwIfNoEntry: false });
  if (stat === undefined || !stat.isFile()) return null;
  const { size, mtimeMs } = stat;
  const m = /^bytes=(\d+)-(\d*)$/.exec(range ?? "");
  const [start, end] = m ? [Number(m[1]), Math.min(m[2] ? Number(m[2]) + 1 : size, size)] : [0, size];
  if (m && start >= end) return { status: 416, headers: { "Content-Range": `bytes */${size}` }, body: Buffer.alloc(0) };
  const body = readRange(local, start, end);
  const headers = { "Content-Type": "application/octet-stream", "Content-Length": String(end - start), "Accept-Ranges": "bytes", "Cache-Control": "no-store", ETag: `"${size}-${mtimeMs}"` };
  return { status: m ? 206 : 200, headers: m ? { ...headers, "Content-Range": `bytes ${start}-${end - 1}/${size}` } : headers, body };
}
