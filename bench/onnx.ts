/**
 * A minimal ONNX writer for the benchmark's ONNX Runtime cases: the protobuf wire format
 * (varints and length-delimited fields, https://protobuf.dev/programming-guides/encoding/) and the
 * few messages of onnx/onnx.proto a one-node graph needs (ModelProto, GraphProto, NodeProto,
 * AttributeProto, ValueInfoProto, TensorProto). Field numbers are onnx.proto's.
 */

type Bytes = number[];

function varint(n: number): Bytes {
  const out: Bytes = [];
  let v = BigInt(n);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return out;
}

/** A varint field (wire type 0). */
const int = (field: number, n: number): Bytes => [...varint(field << 3), ...varint(n)];
/** A length-delimited field (wire type 2): bytes, a string or a nested message. */
function bytes(field: number, data: ArrayLike<number>): Bytes {
  return [...varint((field << 3) | 2), ...varint(data.length), ...Array.from(data)];
}
const str = (field: number, s: string): Bytes => bytes(field, new TextEncoder().encode(s));

const FLOAT = 1; // TensorProto.DataType.FLOAT

/** ValueInfoProto of an f32 tensor of fixed shape. */
function valueInfo(name: string, shape: readonly number[]): Bytes {
  const dims = shape.flatMap((d) => bytes(1, int(1, d)));
  const tensorType = [...int(1, FLOAT), ...bytes(2, dims)];
  return [...str(1, name), ...bytes(2, bytes(1, tensorType))];
}

/** TensorProto of f32 data (raw little-endian bytes). */
function initializer(name: string, shape: readonly number[], data: Float32Array): Bytes {
  return [...shape.flatMap((d) => int(1, d)), ...int(2, FLOAT), ...str(8, name), ...bytes(9, new Uint8Array(data.buffer, data.byteOffset, data.byteLength))];
}

/**
 * y [M, N] = x [M, K] @ w^T, w [N, K] an initializer (a Linear layer's weight, as an exported
 * model holds it): one Gemm node with transB = 1, opset 13.
 */
export function linearModel(M: number, N: number, K: number, w: Float32Array): Uint8Array {
  const node = [...str(1, "x"), ...str(1, "w"), ...str(2, "y"), ...str(3, "linear"), ...str(4, "Gemm"), ...bytes(5, [...str(1, "transB"), ...int(3, 1), ...int(20, 2)])];
  const graph = [...bytes(1, node), ...str(2, "linear"), ...bytes(5, initializer("w", [N, K], w)), ...bytes(11, valueInfo("x", [M, K])), ...bytes(12, valueInfo("y", [M, N]))];
  const model = [...int(1, 8), ...str(2, "qalign-bench"), ...bytes(7, graph), ...bytes(8, [...str(1, ""), ...int(2, 13)])];
  return new Uint8Array(model);
}
