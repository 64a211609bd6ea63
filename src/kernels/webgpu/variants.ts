import { hostEnv } from "../../io/host.ts";
import { MATMUL_VARIANTS } from "../matmul.wgsl.ts";
import type { AttentionVariant, MatmulVariant } from "./program.ts";

/**
 * Which form of each kernel family runs on an adapter. The fastest form depends on whether the
 * adapter is a GPU or a CPU emulation (SwiftShader) and on its features; bench/ measures the
 * choices on both.
 */

/** The forms chosen for one device (see KernelHost for what each one means). */
export interface KernelVariants {
  rowWorkgroup: number;
  matmulVariant: MatmulVariant;
  attentionVariant: AttentionVariant;
}

/** Forced choices (tests, benchmarks); an absent field takes the adapter's default. */
export interface VariantOptions {
  rowWorkgroup?: number;
  matmulVariant?: MatmulVariant;
  attentionVariant?: AttentionVariant;
}

/**
 * The variants for `device`:
 * - rowWorkgroup: by default 256, or 1 on a fallback (CPU) adapter such as SwiftShader, which
 *   pays a thread switch per barrier (see KernelHost.rowWorkgroup);
 * - matmulVariant: by default $QALIGN_MATMUL, else "quad" on a fallback adapter with the
 *   `subgroups` feature (loads shared in a quad of SIMD lanes), else "vec4";
 * - attentionVariant: by default "quad" where the matmul default is "quad", else "rows".
 * @throws RangeError for a rowWorkgroup that is not a power of two within the adapter's
 *   invocation limit, an unknown $QALIGN_MATMUL, or a "quad" variant without `subgroups`
 */
export function chooseVariants(device: GPUDevice, opts: VariantOptions, env: Readonly<Record<string, string | undefined>> = hostEnv()): KernelVariants {
  const limits = device.limits;
  const info = device.adapterInfo;
  const rowWorkgroup = opts.rowWorkgroup ?? (info.isFallbackAdapter ? 1 : 256);
  if (!Number.isInteger(Math.log2(rowWorkgroup)) || rowWorkgroup > limits.maxComputeInvocationsPerWorkgroup) {
    throw new RangeError(`webgpu: rowWorkgroup ${rowWorkgroup} is not a power of two <= ${limits.maxComputeInvocationsPerWorkgroup}`);
  }
  const subgroups = device.features.has("subgroups");
  const fromEnv = env["QALIGN_MATMUL"];
  if (fromEnv !== undefined && !(MATMUL_VARIANTS as readonly string[]).includes(fromEnv)) {
    throw new RangeError(`webgpu: QALIGN_MATMUL=${fromEnv} is not one of ${MATMUL_VARIANTS.join(", ")}`);
  }
  const cpuQuads = info.isFallbackAdapter && subgroups;
  const matmulVariant = opts.matmulVariant ?? (fromEnv as MatmulVariant | undefined) ?? (cpuQuads ? "quad" : "vec4");
  const attentionVariant = opts.attentionVariant ?? (cpuQuads ? "quad" : "rows");
  if ((matmulVariant === "quad" || attentionVariant === "quad") && !subgroups) {
    throw new RangeError("webgpu: the quad kernel variants need the adapter's `subgroups` feature, which this adapter lacks");
  }
  return { rowWorkgroup, matmulVariant, attentionVariant };
}
