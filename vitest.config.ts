import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

// Kernels on SwiftShader (a CPU Vulkan driver) are slow and share one GPU device per worker:
// generous timeouts, and test files run in forked processes so a crash stays contained.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 300_000,
    hookTimeout: 120_000,
    pool: "forks",
    maxWorkers: 2,
    // Generated checkpoints go to the checkout's own .cache, not the user's cache folder, so
    // checkouts side by side never rebuild one another's files mid-test.
    env: { QALIGN_CACHE: process.env["QALIGN_CACHE"] ?? resolve(import.meta.dirname, ".cache") },
  },
});
