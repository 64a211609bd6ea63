import type { Backend } from "./backend.ts";

/**
 * The device that creation functions use when none is named. The public entry (src/index.ts)
 * starts it at the `cpu` device; `qa.init("webgpu" | "auto")` or `setDefaultDevice` changes it.
 */
let current: Backend | null = null;

export function setDefaultDevice(backend: Backend): void {
  current = backend;
}

/** @throws Error when no device was set (import qalign through src/index.ts, which sets cpu). */
export function defaultDevice(): Backend {
  if (current === null) throw new Error("no default device: call setDefaultDevice() or qa.init()");
  return current;
}
