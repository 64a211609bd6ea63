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
  },
});
