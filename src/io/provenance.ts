import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { open, readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Provenance of a results file: what ran, on what, from which files, and when, so that two runs
 * can be told apart later. Files are identified by SHA-256 (hex) of their bytes; a safetensors
 * file by its header (the 8-byte length and the JSON: names, dtypes, shapes, offsets), which
 * changes with any tensor's layout but costs nothing to read, unlike gigabytes of weights.
 */
export interface Provenance {
  qalign: string;
  /** The checkout's commit when qalign runs from a git checkout, and whether files differ from it; else null. */
  git: { commit: string; dirty: boolean } | null;
  node: string;
  /** Versions of the packages that decide numbers or text: webgpu (Dawn) and the tokenizer library. */
  packages: Record<string, string | null>;
  /** The device the tensors lived on, with its adapter's identity and features (webgpu). */
  device: Record<string, unknown>;
  /** The base checkpoint: folder, the dtypes its tensors are stored in, how they were loaded, and file hashes. */
  model: { dir: string; stored: string[]; loaded: string; sha256: Record<string, string> } | null;
  /** A LoRA adapter applied to the model: folder and file hashes. */
  adapter: { dir: string; sha256: Record<string, string> } | null;
  /** Every data file read (its name as messages give it) and the prompt data, by hash. */
  data: { source: string; sha256: Record<string, string> } | null;
  /** ISO 8601 times; `finished` is null while the run is still going. */
  started: string;
  finished: string | null;
}

/** SHA-256 of bytes or text (UTF-8), hex. */
export function sha256(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** SHA-256 of a file's bytes, hex (read whole: for configs and data files, not weights). */
export async function sha256File(file: string): Promise<string> {
  return sha256(await readFile(file));
}

/**
 * SHA-256 of a safetensors file's header: its first 8 + N bytes, N the little-endian u64 the
 * file starts with (the format's header length).
 * @throws Error when the file is shorter than its header says
 */
export async function sha256SafetensorsHeader(file: string): Promise<string> {
  const fh = await open(file, "r");
  try {
    const len = Buffer.alloc(8);
    await fh.read(len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE(0));
    // Checked against the file's size before allocating: a hostile length allocates nothing.
    if (8 + n > (await fh.stat()).size) throw new Error(`${file}: shorter than its ${n}-byte safetensors header`);
    const header = Buffer.alloc(8 + n);
    const { bytesRead } = await fh.read(header, 0, 8 + n, 0);
    if (bytesRead !== 8 + n) throw new Error(`${file}: shorter than its ${n}-byte safetensors header`);
    return sha256(header);
  } finally {
    await fh.close();
  }
}

/** qalign's root: two folders above this file, in the checkout (src/io/) and the package (dist/io/). */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The git commit of the checkout qalign runs from, and whether its tracked files differ; null outside a checkout or without git. */
export function gitCommit(root = ROOT): { commit: string; dirty: boolean } | null {
  if (!existsSync(join(root, ".git"))) return null;
  try {
    const git = (...args: string[]) => execFileSync("git", ["-C", root, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    return { commit: git("rev-parse", "HEAD"), dirty: git("status", "--porcelain", "--untracked-files=no") !== "" };
  } catch {
    return null;
  }
}

/**
 * The installed version of package `name` as Node resolves it from qalign, or null when it is not
 * installed. Packages whose `exports` hide package.json are found by walking up from their entry.
 */
export async function installedVersion(name: string): Promise<string | null> {
  const require = createRequire(join(ROOT, "package.json"));
  let file: string;
  try {
    file = require.resolve(`${name}/package.json`);
  } catch {
    try {
      let dir = dirname(require.resolve(name));
      while (!existsSync(join(dir, "package.json")) || !dir.endsWith(name)) {
        const up = dirname(dir);
        if (up === dir) return null;
        dir = up;
      }
      file = join(dir, "package.json");
    } catch {
      return null;
    }
  }
  const pkg = JSON.parse(await readFile(file, "utf8")) as { version?: unknown };
  return typeof pkg.version === "string" ? pkg.version : null;
}
