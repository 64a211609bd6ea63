import { readFile } from "node:fs/promises";

/**
 * qalign's own package.json: two folders above this file both in the checkout (src/io/) and in
 * the installed package (dist/io/), so the same relative URL finds it from either.
 */
const PACKAGE_JSON = new URL("../../package.json", import.meta.url);

/**
 * qalign's version, from its package.json ("0.1.0").
 * @throws Error when package.json is unreadable or has no string `version`.
 */
export async function packageVersion(): Promise<string> {
  const pkg = JSON.parse(await readFile(PACKAGE_JSON, "utf8")) as { version?: unknown };
  if (typeof pkg.version !== "string") throw new Error(`${PACKAGE_JSON.pathname}: no "version" string`);
  return pkg.version;
}
