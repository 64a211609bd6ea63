/**
 * NaN in WGSL, propagated as PyTorch does (`torch.max`, `softmax`, `maximum`, `relu`: a NaN input
 * gives NaN where it reaches).
 *
 * WGSL's `max` and `min` builtins may return the other operand for a NaN one (IEEE-754 maxNum:
 * `max(1.0, NaN)` is 1.0 on SwiftShader), and the spec lets implementations assume no NaN at all,
 * so `x != x` may be folded to false. The test here reads the bits instead (exponent all ones,
 * mantissa nonzero), which no compiler may assume away; the NaN result is `a + b`, NaN whenever
 * either operand is.
 */

/** WGSL bool expression: whether the f32 expression `x` is NaN. */
export const isNanWgsl = (x: string): string => `((bitcast<u32>(${x}) & 0x7fffffffu) > 0x7f800000u)`;

/** WGSL vec4<bool> expression: which lanes of the vec4<f32> expression `x` are NaN. */
export const isNanVec4Wgsl = (x: string): string => `((bitcast<vec4<u32>>(${x}) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u))`;

/** WGSL f32 expression: max(a, b), NaN when either is NaN. `a` and `b` should be plain names. */
const maxNanWgsl = (a: string, b: string): string => `select(max(${a}, ${b}), ${a} + ${b}, ${isNanWgsl(a)} || ${isNanWgsl(b)})`;

/** WGSL `fn max_nan(a: f32, b: f32) -> f32`, for kernels that fold many values into a maximum. */
export const MAX_NAN_FN = `fn max_nan(a: f32, b: f32) -> f32 { return ${maxNanWgsl("a", "b")}; }`;
