import { existsSync } from "node:fs";
import type { TestContext } from "vitest";
import { SHARED_DATA_DIR } from "../../src/eval/default_data.ts";

/**
 * Skips the running test with a printed reason when the shared release data is absent (on a
 * user's machine); in CI, where it must exist, its absence fails the test instead.
 * @returns the data folder
 */
export function sharedDataOrSkip(ctx: TestContext): string {
  if (existsSync(SHARED_DATA_DIR)) return SHARED_DATA_DIR;
  const why = `${SHARED_DATA_DIR} is absent`;
  if (process.env["CI"]) throw new Error(`CI is set but ${why}`);
  process.stderr.write(`skipping "${ctx.task.name}": ${why}\n`);
  return ctx.skip(why);
}
