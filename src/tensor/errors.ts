/**
 * Errors thrown by tensor ops. Each names the op and the shapes or limits involved, so a
 * failure deep in a model reads as "matmul: [2,3] x [4,5]: inner dims 3 != 4".
 */
export class ShapeError extends Error {
  override name = "ShapeError";
  constructor(op: string, message: string) {
    super(`${op}: ${message}`);
  }
}

export class DTypeError extends Error {
  override name = "DTypeError";
  constructor(op: string, message: string) {
    super(`${op}: ${message}`);
  }
}

/** A tensor or buffer that does not fit a device limit (bytes, workgroups, bindings). */
export class DeviceLimitError extends Error {
  override name = "DeviceLimitError";
  constructor(op: string, message: string) {
    super(`${op}: ${message}`);
  }
}

/**
 * Operands on different devices (cpu and webgpu, or two webgpu devices), or a device name that
 * does not exist. Ops never move data between devices implicitly: a copy costs a readback, so
 * the caller makes it with `await t.to(device)`.
 */
export class DeviceError extends Error {
  override name = "DeviceError";
  constructor(op: string, message: string) {
    super(`${op}: ${message}`);
  }
}

/** Use of a tensor after `dispose()`, or of a storage after it was freed. */
export class DisposedError extends Error {
  override name = "DisposedError";
  constructor(op: string) {
    super(`${op}: tensor was disposed`);
  }
}

export class AutogradError extends Error {
  override name = "AutogradError";
  constructor(op: string, message: string) {
    super(`${op}: ${message}`);
  }
}

/** Formats a shape as `[2,3,4]` for messages. */
export function fmt(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}
