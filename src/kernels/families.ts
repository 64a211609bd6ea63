/**
 * Every op family's kernels, imported once so that they register (src/kernels/registry.ts).
 * One line per family: its WGSL file, which imports its reference for the size check, so the
 * family's cpu kernel (in the reference file) and webgpu kernel (in the WGSL file) both
 * register. The backends import this file; the wasm device's own kernels register from the
 * wasm/*.wasm.ts files its backend imports for their modules. JavaScript runs a module only
 * when something imports it, so this list is the one place a new family is named.
 */
import "./adamw.wgsl.ts";
import "./attention.wgsl.ts";
import "./cross_entropy.wgsl.ts";
import "./embedding.wgsl.ts";
import "./matmul.wgsl.ts";
import "./reduce.wgsl.ts";
import "./rmsnorm.wgsl.ts";
import "./rope.wgsl.ts";
import "./softmax.wgsl.ts";
import "./weights.wgsl.ts";
