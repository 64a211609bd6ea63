/**
 * Dawn reports errors asynchronously: a validation error scope is pushed before work and popped
 * after it, and the pop resolves later with the error it caught (or null). This class keeps the
 * pending pops and the first failure, so the backend can throw it at its next `read` or `sync`
 * instead of letting a bare Dawn message reach the process. Uncaptured errors and device loss
 * are recorded the same way.
 */
export class ErrorScopes {
  private readonly pending = new Set<Promise<void>>();
  private failure: Error | null = null;

  constructor(private readonly device: GPUDevice) {
    device.addEventListener("uncapturederror", (ev) => this.fail(new Error(`webgpu: ${(ev as GPUUncapturedErrorEvent).error.message}`)));
    void device.lost.then((info) => {
      if (info.reason !== "destroyed") this.fail(new Error(`webgpu: device lost: ${info.message}`));
    });
  }

  /** Opens a validation error scope around the work recorded next (close it with `close`). */
  open(): void {
    this.device.pushErrorScope("validation");
  }

  /**
   * Pops the innermost Dawn error scope; an error it caught becomes `describe(message)`, thrown
   * by the next `settle`. The pop is asynchronous, so `settle` waits for every pending one.
   */
  close(describe: (message: string) => Error): void {
    const scope = this.device.popErrorScope().then((e) => {
      if (e) this.fail(describe(e.message));
    });
    this.pending.add(scope);
    void scope.finally(() => this.pending.delete(scope));
  }

  /** Waits for the scopes closed so far, then throws (once) the first failure recorded. */
  async settle(): Promise<void> {
    await Promise.all(this.pending);
    const e = this.failure;
    if (e) {
      this.failure = null;
      throw e;
    }
  }

  /** Records the first asynchronous failure; `settle` throws it. */
  private fail(e: Error): void {
    this.failure ??= e;
  }
}
