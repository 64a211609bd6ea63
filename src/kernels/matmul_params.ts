import type { Field } from "./webgpu/program.ts";

/**
 * What the matmul kernels (matmul.wgsl.ts, gemv.wgsl.ts) share: one uniform block, so that the
 * dispatch code fills it once whichever kernel it picks, and the store that overwrites or
 * accumulates.
 */

/** The uniform block of every matmul kernel (elements, not bytes). */
export const MATMUL_PARAMS: readonly Field[] = [
  "M",
  "N",
  "K",
  "batch0",
  "aOff",
  "bOff",
  "cOff",
  // element strides of opA over (m, k) and of opB over (k, n)
  "sAm",
  "sAk",
  "sBk",
  "sBn",
  // batch strides of A, B, C and C's row stride
  "sAb",
  "sBb",
  "sCb",
  "ldc",
  // 1: add to the output (a later slice of k); 0: overwrite it.
  "accumulate",
].map((name) => ({ name, type: "u32" as const }));

/** The store of one output element, overwriting or accumulating (a later slice of k). */
export const storeC = (at: string, value: string) => `C[${at}] = select(0.0, C[${at}], P.accumulate == 1u) + ${value};`;
