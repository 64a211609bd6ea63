// A local file answered as a static web server answers it, for `npm run demo:browser` and the
// browser tests' server (test/helpers/browser.ts): the whole file, or the single byte range a
// `Range: bytes=a-b` header asks for (206 with Content-Range, RFC 9110 section 14; 416 when it
// starts past the end), with an ETag (size and modification time). Checkpoints load in a page
// by such ranges (src/io/web_files.ts).
import { existsSync, readFileSync, statSync } from "node:fs";

/**
 * The answer to a GET or HEAD of `local` with Range header `range`.
 * @returns null when `local` is not a file; else the status, headers, the file's bytes and the
 *   [start, end) slice of them to send
 */
export function fileAnswer(local, range) {
  if (!existsSync(local) || !statSync(local).isFile()) return null;
  const body = readFileSync(local);
  const m = /^bytes=(\d+)-(\d*)$/.exec(range ?? "");
  const [start, end] = m ? [Number(m[1]), Math.min(m[2] ? Number(m[2]) + 1 : body.length, body.length)] : [0, body.length];
  if (m && start >= end) return { status: 416, headers: { "Content-Range": `bytes */${body.length}` }, body, start: 0, end: 0 };
  const { size, mtimeMs } = statSync(local);
  const headers = { "Content-Type": "application/octet-stream", "Content-Length": String(end - start), "Accept-Ranges": "bytes", "Cache-Control": "no-store", ETag: `"${size}-${mtimeMs}"` };
  return { status: m ? 206 : 200, headers: m ? { ...headers, "Content-Range": `bytes ${start}-${end - 1}/${body.length}` } : headers, body, start, end };
}
