import type { Backend } from "./backend.ts";
import { DeviceError } from "./errors.ts";

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

/** What assertSameDevice needs of a tensor (a structural type: device.ts sits below tensor.ts). */
interface OnDevice {
  readonly backend: Backend;
}

/**
 * Checks that every operand of `op` lives on one device; null and undefined (absent optional
 * operands) are skipped. Ops never copy between devices implicitly.
 * @throws DeviceError "<op>: operands are on different devices (cpu and webgpu); move one with
 *   `await t.to(device)`".
 */
export function assertSameDevice(op: string, ...xs: (OnDevice | null | undefined)[]): void {
  let first: Backend | null = null;
  for (const x of xs) {
    if (!x) continue;
    first ??= x.backend;
    if (x.backend === first) continue;
    const which = x.backend.name === first.name ? `two different ${first.name} devices` : `${first.name} and ${x.backend.name}`;
    throw new DeviceError(op, `operands are on different devices (${which}); move one with \`await t.to(device)\``);
  }
}
