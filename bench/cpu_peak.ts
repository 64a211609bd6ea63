/**
 * The CPU's FP32 peak, the yardstick for every device's matmul on a machine where all of them
 * (wasm, SwiftShader's webgpu, the peers) run on the same cores:
 *   cores x FMA units per core x f32 lanes per FMA x 2 flop per FMA x clock.
 * Cores: logical CPUs (os.cpus()); clock: the model's nominal MHz as /proc/cpuinfo or os.cpus()
 * report it (no turbo); FMA units: 2 (every x86-64 core with FMA3 since Haswell and Zen 1 has
 * two); lanes: 8 (256-bit AVX2 FMA). AVX-512 cores are counted at 256 bits too: several run
 * 512-bit FMAs at half rate, so 8 lanes is their sustained width; the text says when the flag is
 * there. WebAssembly's 128-bit SIMD reaches at most half of this peak.
 */
import { readFileSync } from "node:fs";
import { cpus } from "node:os";

export interface CpuPeak {
  gflops: number;
  /** How it was computed, with every factor. */
  how: string;
}

const FMA_UNITS = 2;
const LANES = 8;

/** The peak, or null when the clock or the FMA flag cannot be read (a non-x86 machine). */
export function cpuPeak(): CpuPeak | null {
  let flags = "";
  let mhz = cpus()[0]?.speed ?? 0;
  try {
    const info = readFileSync("/proc/cpuinfo", "utf8");
    flags = /^flags\s*:(.*)$/m.exec(info)?.[1] ?? "";
    mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(info)?.[1] ?? mhz);
  } catch {
    return null;
  }
  const has = (f: string) => new RegExp(`\\b${f}\\b`).test(flags);
  if (!has("fma") || !(mhz > 0)) return null;
  const cores = cpus().length;
  const gflops = (cores * FMA_UNITS * LANES * 2 * mhz) / 1000;
  const avx512 = has("avx512f") ? "; avx512f present, counted at 256 bits" : "";
  return {
    gflops,
    how: `${cores} cores x ${FMA_UNITS} FMA units x ${LANES} f32 lanes (256-bit FMA3) x 2 flop x ${(mhz / 1000).toFixed(3)} GHz = ${gflops.toFixed(1)} GFLOP/s${avx512}`,
  };
}
