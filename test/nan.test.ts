import { describe, test } from "vitest";
import { getDevice, wasmDevice } from "../src/kernels/devices.ts";
import { TEST_WASM_THREADS, describeWebGpu, testWebGpu } from "./helpers/devices.ts";
import { CASES } from "./helpers/nan_cases.ts";

/**
 * NaN propagates as in PyTorch on every device: a NaN input gives NaN wherever it reaches
 * (torch.max, amax, maximum, minimum, relu and every unary op, softmax, log_softmax,
 * cross_entropy and its gradient, mean of no elements, and scaled_dot_product_attention for a
 * query row that sees the NaN), and nowhere else; masked keys (causal, sliding window, padding)
 * stay out of reach. The expected values are closed forms and a float64 attention
 * (helpers/nan_cases.ts); the same cases run on cpu, webgpu (the adapter's kernel forms, and a
 * GPU's: 256 invocations per row, rows attention) and wasm.
 */
describe("NaN on the cpu device", () => {
  for (const [name, run] of CASES) test(name, async () => run(await getDevice("cpu")));
});

describe("NaN on the webgpu device", () => {
  for (const [name, run] of CASES) testWebGpu(name, run);
});

describeWebGpu("NaN with GPU-sized workgroups (256 per row, rows attention)", { rowWorkgroup: 256, attentionVariant: "rows" }, (testOn) => {
  for (const [name, run] of CASES) testOn(name, run);
});

describe("NaN on the wasm device", () => {
  for (const [name, run] of CASES) test(name, async () => run(await wasmDevice(TEST_WASM_THREADS)));
});
