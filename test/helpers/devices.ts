import { existsSync } from "node:fs";
import { afterAll, describe, test, type TestContext } from "vitest";
import { wasmDevice } from "../../src/kernels/devices.ts";
import { getWebGpuBackend, type WebGpuOptions } from "../../src/kernels/webgpu/device.ts";
import type { Backend } from "../../src/tensor/backend.ts";
import type { WebGpuBackend } from "../../src/kernels/webgpu/backend.ts";

/**
 * Device access for tests. A test that needs WebGPU gets the shared backend; on a machine with no
 * adapter it is skipped at runtime with the reason printed, except when QALIGN_REQUIRE_WEBGPU=1
 * (CI, a GPU box), where a missing adapter fails the test instead of hiding it.
 */

/** SwiftShader's Vulkan ICD as Debian's chromium package installs it: a CPU "GPU" for machines without one. */
export const SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";

// The Vulkan loader reads this when Dawn creates its instance, so set it before any backend exists.
if (process.env["VK_ICD_FILENAMES"] === undefined && existsSync(SWIFTSHADER_ICD)) {
  process.env["VK_ICD_FILENAMES"] = SWIFTSHADER_ICD;
}

const NO_ADAPTER =
  "no WebGPU adapter: without a GPU install SwiftShader (apt-get install libvulkan1 chromium) " +
  `and set VK_ICD_FILENAMES=${SWIFTSHADER_ICD}`;

/**
 * The shared webgpu backend, or a runtime skip (printing why) when no adapter exists.
 * @throws Error when no adapter exists and QALIGN_REQUIRE_WEBGPU=1.
 */
export async function webgpuOrSkip(ctx: TestContext): Promise<WebGpuBackend> {
  const gpu = await getWebGpuBackend();
  if (gpu) return gpu;
  if (process.env["QALIGN_REQUIRE_WEBGPU"] === "1") throw new Error(`QALIGN_REQUIRE_WEBGPU=1 but ${NO_ADAPTER}`);
  process.stderr.write(`skipping "${ctx.task.name}": ${NO_ADAPTER}\n`);
  return ctx.skip(NO_ADAPTER);
}

/** `test(name, fn)` for a test that runs on the shared webgpu backend (skip rule as webgpuOrSkip). */
export function testWebGpu(name: string, fn: (gpu: WebGpuBackend, ctx: TestContext) => Promise<void>, timeout?: number): void {
  test(name, async (ctx) => fn(await webgpuOrSkip(ctx), ctx), timeout);
}

/**
 * Threads of the wasm device in tests: two, so that every kernel runs split between the calling
 * thread and a worker whatever the machine's core count.
 */
export const TEST_WASM_THREADS = 2;

/**
 * Registers `fn` once per fast device checked against the cpu reference: "webgpu: name" (skip
 * rule as webgpuOrSkip) and "wasm: name" (never skips: it needs no adapter).
 */
export function testDevices(name: string, fn: (device: Backend, ctx: TestContext) => Promise<void>, timeout?: number): void {
  testWebGpu(`webgpu: ${name}`, fn, timeout);
  test(`wasm: ${name}`, async (ctx) => fn(await wasmDevice(TEST_WASM_THREADS), ctx), timeout);
}

/**
 * A describe block whose tests run on their own backend, made (once, on first use) with `opts`
 * (a lowered binding limit, GPU-sized row workgroups) on the shared backend's device, so kernels
 * the two have in common compile once; released after the block.
 * `body` registers tests with the `testOn` it is given; the skip rule is webgpuOrSkip's.
 */
export function describeWebGpu(
  name: string,
  opts: WebGpuOptions,
  body: (testOn: (name: string, fn: (gpu: WebGpuBackend, ctx: TestContext) => Promise<void>) => void) => void,
): void {
  describe(name, () => {
    let backend: Promise<WebGpuBackend | null> | null = null;
    afterAll(async () => {
      await (await backend)?.destroy();
    });
    body((testName, fn) =>
      test(testName, async (ctx) => {
        await webgpuOrSkip(ctx);
        backend ??= getWebGpuBackend().then((shared) => shared!.withOptions(opts));
        await fn((await backend)!, ctx);
      }),
    );
  });
}
