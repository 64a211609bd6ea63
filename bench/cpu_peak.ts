/**
 * The CPU's FP32 peak, the yardstick for every device's matmul on a machine where all of them
 * (wasm, SwiftShader's webgpu, the peers) run on the same cores:
 *   cores x FMA units per core x f32 lanes per FMA x 2 flop per FMA x clock.
 * Cores: logical CPUs (os.cpus()); clock: the model's nominal MHz as /proc/cpuinfo or os.cpus()
 * report it (no boost: a boosting core beats this figure); FMA units: 2 (every x86-64 core with
 * FMA3 since Haswell and Zen 1 has two). Lanes, by the widest FMA the core runs at full rate:
 * - AMD family >= 26 (Zen 5) with avx512f: 16 (its two FMA pipes are 512 bits wide);
 * - AMD family 25 (Zen 4) with avx512f: 8 (it splits a 512-bit FMA into two 256-bit halves);
 * - Intel with avx512f: 16. Since Alder Lake only server parts (Xeon) keep AVX-512, and most of
 *   them (Skylake-SP Gold/Platinum, Ice Lake-SP, Sapphire Rapids) have two 512-bit FMA units;
 *   a part with one (Xeon Bronze/Silver, client Ice/Tiger Lake) and AVX-512's lower licence
 *   clock make this an upper bound there;
 * - otherwise (AVX2 + FMA3): 8.
 * The text says which rule applied. WebAssembly's 128-bit SIMD cannot reach this peak (4 lanes,
 * and without relaxed SIMD a separate multiply and add): wasm_simd_ceiling.ts measures what it
 * can reach on the same cores.
 */
import { readFileSync } from "node:fs";
import { cpus } from "node:os";

export interface CpuPeak {
  gflops: number;
  /** How it was computed, with every factor. */
  how: string;
}

const FMA_UNITS = 2;

/** f32 lanes of one full-rate FMA, and why, from the vendor, family and flags. */
function fmaLanes(vendor: string, family: number, has: (flag: string) => boolean): { lanes: number; why: string } {
  if (!has("avx512f")) return { lanes: 8, why: "256-bit FMA3" };
  if (vendor === "AuthenticAMD") {
    return family >= 26
      ? { lanes: 16, why: `512-bit AVX-512 FMA (AMD family ${family}, Zen 5 or later: full-width 512-bit FMA pipes)` }
      : { lanes: 8, why: `avx512f present, counted at 256 bits (AMD family ${family}, Zen 4: 512-bit FMAs run as two 256-bit halves)` };
  }
  if (vendor === "GenuineIntel") return { lanes: 16, why: "512-bit AVX-512 FMA (Intel: two 512-bit FMA units on most AVX-512 Xeons; an upper bound on parts with one)" };
  return { lanes: 8, why: `avx512f present on an unknown vendor (${vendor || "none"}), counted at 256 bits` };
}

/** The peak, or null when the clock or the FMA flag cannot be read (a non-x86 machine). */
export function cpuPeak(): CpuPeak | null {
  let info: string;
  try {
    info = readFileSync("/proc/cpuinfo", "utf8");
  } catch {
    return null;
  }
  const field = (name: string) => new RegExp(`^${name}\\s*:(.*)$`, "m").exec(info)?.[1]?.trim() ?? "";
  const flags = field("flags");
  const mhz = Number(field("cpu MHz") || cpus()[0]?.speed || 0);
  const has = (f: string) => new RegExp(`\\b${f}\\b`).test(flags);
  if (!has("fma") || !(mhz > 0)) return null;
  const { lanes, why } = fmaLanes(field("vendor_id"), Number(field("cpu family")), has);
  const cores = cpus().length;
  const gflops = (cores * FMA_UNITS * lanes * 2 * mhz) / 1000;
  return {
    gflops,
    how: `${cores} cores x ${FMA_UNITS} FMA units x ${lanes} f32 lanes (${why}) x 2 flop x ${(mhz / 1000).toFixed(3)} GHz nominal = ${gflops.toFixed(1)} GFLOP/s`,
  };
}
