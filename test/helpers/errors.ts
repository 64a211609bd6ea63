import { expect } from "vitest";
import { CheckpointError } from "../../src/model/safetensors.ts";

/**
 * Expects `p` to reject with a CheckpointError whose message contains every string of `expected`
 * and matches every RegExp of it (the file, field and limit a bad-input error must name).
 */
export async function expectCheckpointError(p: Promise<unknown>, ...expected: (string | RegExp)[]): Promise<void> {
  const err = await p.then(
    () => expect.unreachable("expected a CheckpointError"),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CheckpointError);
  const message = (err as Error).message;
  for (const e of expected) {
    if (typeof e === "string") expect(message).toContain(e);
    else expect(message).toMatch(e);
  }
}
