import { existsSync, statSync } from "node:fs";
import { open, readFile, readdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { writeAtomic } from "./atomic.ts";
import { latestDir, replaceDirAtomic } from "./atomic_dir.ts";
import { makeDirs } from "./make_dirs.ts";
import type { ByteReader, Files } from "./files.ts";

/** Reads and writes larger than this go in pieces (Node refuses single reads above 2 GiB). */
const IO_CHUNK = 1 << 30;

/** The file system, as Node's fs gives it: qalign's behaviour on Node (see files.ts). */
export const nodeFiles: Files = {
  join,
  async exists(path) {
    return existsSync(path) && statSync(path).isFile();
  },
  async open(path): Promise<ByteReader> {
    const fh = await open(path, "r");
    const { size } = await fh.stat();
    return {
      name: path,
      size,
      async read(start, end) {
        const buf = new Uint8Array(end - start);
        let done = 0;
        while (done < buf.byteLength) {
          const { bytesRead } = await fh.read(buf, done, Math.min(IO_CHUNK, buf.byteLength - done), start + done);
          if (bytesRead === 0) throw new Error(`short read: got ${done} of ${buf.byteLength} bytes at offset ${start}`);
          done += bytesRead;
        }
        return buf;
      },
      close: () => fh.close(),
    };
  },
  readText: (path) => readFile(path, "utf8"),
  async writeAtomic(path, chunks) {
    await makeDirs(dirname(path));
    return writeAtomic(path, async (fh) => {
      for await (const chunk of chunks) {
        const bytes = typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk;
        for (let done = 0; done < bytes.byteLength; ) {
          const { bytesWritten } = await fh.write(bytes, done, Math.min(IO_CHUNK, bytes.byteLength - done));
          done += bytesWritten;
        }
      }
    });
  },
  async list(dir) {
    return (await readdir(dir)).sort();
  },
  replaceDir(dir, fill) {
    return replaceDirAtomic(dir, async (tmp) => {
      await makeDirs(tmp);
      await fill(tmp);
    });
  },
  latestDir: async (dir) => latestDir(dir),
  remove: (path) => rm(path, { recursive: true, force: true }),
};
