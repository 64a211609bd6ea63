import { constants } from "node:fs";
import { access, mkdir } from "node:fs/promises";
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

/**
 * Creates `--out DIR` (with its parents) and checks that it is writable, so that a command
 * fails before its compute rather than losing it when it comes to write.
 * @throws CliError naming the command, the folder and the OS's reason
 */
export async function prepareOutDir(command: string, dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
    await access(dir, constants.W_OK);
  } catch (e) {
    throw new CliError(`${command}: --out ${dir} is not a writable folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}
