import { constants } from "node:fs";
import { access, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { makeDirs } from "../io/make_dirs.ts";
import { CliError } from "./args.ts";

/**
 * Resolves once everything written to `stream` so far has been handed to the OS. On Linux a
 * write to a full pipe (64 KiB) is queued in the process, and `process.exit` drops that queue;
 * writes complete in order, so the callback of an empty write fires after all earlier ones.
 * @throws the stream's write error (EPIPE when the reader has gone)
 */
export function flush(stream: NodeJS.WritableStream): Promise<void> {
  return new Promise((resolve, reject) => stream.write("", (err) => (err ? reject(err) : resolve())));
}

/** The OS's error when a pipe's reader has closed it (`qalign ... | head`). */
export const isReaderGone = (e: unknown): boolean => (e as NodeJS.ErrnoException)?.code === "EPIPE";

/**
 * Makes every write to `stream` after its reader has gone end the process at once with status 0
 * and no message, as `yes | head` ends: the reader chose to stop, so the work it will never read
 * stops too (a model still generating, a JSON still printing). Without a listener, Node throws the
 * stream's EPIPE 'error' event as an uncaught exception with its stack. Other write errors (a full
 * disk) print one line and exit 1.
 * @param exit process.exit, or a stand-in
 */
export function stopWhenReaderGoes(stream: NodeJS.WritableStream, exit: (code: number) => never = process.exit): void {
  stream.on("error", (e: Error) => {
    if (isReaderGone(e)) exit(0);
    process.stderr.write(`qalign: stdout: ${e.message}\n`);
    exit(1);
  });
}

/**
 * Creates `--out DIR` (with its parents) and checks that it is writable, so that a command
 * fails before its compute rather than losing it when it comes to write.
 * @throws CliError naming the command, the folder and the OS's reason
 */
export async function prepareOutDir(command: string, dir: string): Promise<void> {
  try {
    await makeDirs(dir);
    await access(dir, constants.W_OK);
  } catch (e) {
    throw new CliError(`${command}: --out ${dir} is not a writable folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/**
 * Whether folder entry `name` is file `own` or one of the forms its crash-safe writes leave
 * (src/io/atomic.ts: `.<own>.<hex>.tmp`; src/io/atomic_dir.ts: `<own>.old`, `<own>.tmp-...`).
 */
function isFormOf(name: string, own: string): boolean {
  return name === own || name.startsWith(`${own}.`) || (name.startsWith(`.${own}.`) && name.endsWith(".tmp"));
}

/** Entries of `--out DIR` that are listed before the rest are summarised. */
const SHOWN_ENTRIES = 3;

/**
 * The entries of `--out DIR` that an earlier run of `command` wrote, for a command that keeps
 * one run per folder, so that it never mixes its files with another run's or another
 * program's (a model folder, another command's results). An absent folder holds none.
 * @param own the entry names `command` writes at the folder's top (see {@link isFormOf})
 * @param marker the entry of `own` that `command` writes before any other, so that a folder
 *   without it holds no earlier run whatever its names (a user's own report.md)
 * @returns the entries found, sorted (empty for an empty or absent folder)
 * @throws CliError naming the command, the folder and the first entries of another kind (with
 *   `marker`: every entry, when it is absent)
 */
export async function previousRunFiles(command: string, dir: string, own: readonly string[], marker?: string): Promise<string[]> {
  let names: string[];
  try {
    names = (await readdir(dir)).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw e;
  }
  const marked = marker === undefined || names.includes(marker);
  const foreign = marked ? names.filter((n) => !own.some((o) => isFormOf(n, o))) : names;
  if (foreign.length > 0) {
    const more = foreign.length > SHOWN_ENTRIES ? ` and ${foreign.length - SHOWN_ENTRIES} more` : "";
    throw new CliError(`${command}: --out ${dir} is not empty and holds no earlier ${command} run (${foreign.slice(0, SHOWN_ENTRIES).join(", ")}${more}); choose an empty or new folder`);
  }
  return names;
}

/** Removes the entries `names` of folder `dir` (files or folders), as an earlier run left them. */
export async function removeEntries(dir: string, names: readonly string[]): Promise<void> {
  for (const name of names) await rm(join(dir, name), { recursive: true, force: true });
}
