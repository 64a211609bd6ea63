/**
 * qalign in a browser: what `import * as qa from "qalign"` gives under the `browser` export
 * condition (bundlers such as Vite or esbuild set it). The host-neutral core of core.ts:
 * tensors, autograd, optimizers and the devices, with webgpu on the page's `navigator.gpu`
 * (a secure context: https or http://localhost) or on a GPUDevice the page passes to
 * `init("webgpu", { gpuDevice })`.
 */
export * from "./core.ts";
