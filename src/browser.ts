/**
 * qalign in a browser: what `import * as qa from "qalign"` gives under the `browser` export
 * condition (bundlers such as Vite or esbuild set it). The host-neutral core of core.ts:
 * tensors, autograd, optimizers and the devices, with webgpu on the page's `navigator.gpu`
 * (a secure context: https or http://localhost) or on a GPUDevice the page passes to
 * `init("webgpu", { gpuDevice })`; and the page's Origin Private File System as Files
 * (io/opfs_files.ts), where a page writes adapters, reports and caches.
 */
export * from "./core.ts";

// io (the browser: the Origin Private File System)
export { opfsFiles, type OpfsDirectory } from "./io/opfs_files.ts";
