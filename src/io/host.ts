/**
 * What the host (Node, or a browser page) offers, asked for without assuming Node, so that the
 * modules using these load in a browser too.
 */

/**
 * The host's environment variables: Node's `process.env`, or an empty record where there is no
 * `process` (a browser page), so that switches such as QALIGN_MATMUL read as unset there.
 */
export function hostEnv(): Readonly<Record<string, string | undefined>> {
  return (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env ?? {};
}

/**
 * Imports a module only Node has (a builtin such as `node:os`, or the `webgpu` package's Dawn
 * addon) by a name computed at run time, so that bundlers building for the browser neither
 * resolve nor include it. Call it only where the host is Node; `T` is the module's type
 * (`typeof import("node:os")`).
 * @throws whatever the import throws (a module that is not installed).
 */
export function importNodeOnly<T>(id: string): Promise<T> {
  return import(/* @vite-ignore */ id) as Promise<T>;
}

/** Whether the host is Node (a browser page, or a worker, has no `process.versions.node`). */
export function isNodeHost(): boolean {
  return typeof (globalThis as { process?: { versions?: { node?: unknown } } }).process?.versions?.node === "string";
}
