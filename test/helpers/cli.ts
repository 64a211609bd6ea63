import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";

/** The repository root, where the CLI runs (relative paths such as .cache resolve there). */
export const ROOT = join(import.meta.dirname, "..", "..");

/**
 * Runs `qalign <args>` (src/cli/main.ts through tsx, as `npm run qalign` does) in a child
 * process and waits for it.
 * @param timeoutMs the child is killed after this long (status null)
 * @returns its exit status, stdout and stderr
 */
export function runCli(args: readonly string[], timeoutMs = 120_000): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "src", "cli", "main.ts"), ...args], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: timeoutMs,
    maxBuffer: 256 << 20, // `qalign logits` prints [seq, vocab] numbers
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The last line of a command's output (for a failing command, its error message), surrounding whitespace dropped. */
export const lastLine = (text: string): string => text.trim().split("\n").at(-1)!;

/** The built-in sample's files by relative path (src/eval/sample_data.json). */
export const SAMPLE = (JSON.parse(readFileSync(join(ROOT, "src", "eval", "sample_data.json"), "utf8")) as { files: Record<string, unknown[]> }).files;
