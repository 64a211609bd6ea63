/**
 * A minimal ONNX writer for the benchmark's ONNX Runtime cases: the protobuf wire format
 * (varints and length-delimited fields, https://protobuf.dev/programming-guides/encoding/) and the
 * few messages of onnx/onnx.proto a one-node graph needs (ModelProto, GraphProto, NodeProto,
 * AttributeProto, ValueInfoProto, TensorProto). Field numbers are onnx.proto's.
 */

/**
 * Encoded bytes as a list of chunks, so a weight of a gigabyte is one chunk (a view of its
 * Float32Array) and never a JS array of numbers.
 */
type Bytes = Uint8Array[];

const size = (b: Bytes) => b.reduce((n, c) => n + c.length, 0);

function varint(n: number): Uint8Array {
  const out: number[] = [];
  let v = BigInt(n);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return Uint8Array.from(out);
}

/** A varint field (wire type 0). */
const int = (field: number, n: number): Bytes => [varint(field << 3), varint(n)];
/** A length-delimited field (wire type 2): bytes, a string or a nested message. */
const bytes = (field: number, ...data: Bytes[]): Bytes => {
  const body = data.flat();
  return [varint((field << 3) | 2), varint(size(body)), ...body];
};
const str = (field: number, s: string): Bytes => bytes(field, [new TextEncoder().encode(s)]);

const FLOAT = 1; // TensorProto.DataType.FLOAT

/** ValueInfoProto of an f32 tensor of fixed shape. */
function valueInfo(name: string, shape: readonly number[]): Bytes {
  const dims = shape.map((d) => bytes(1, int(1, d)));
  const tensorType = bytes(1, int(1, FLOAT), bytes(2, ...dims));
  return [...str(1, name), ...bytes(2, tensorType)];
}

/** TensorProto of f32 data (raw little-endian bytes, not copied). */
function initializer(name: string, shape: readonly number[], data: Float32Array): Bytes {
  return [...shape.flatMap((d) => int(1, d)), ...int(2, FLOAT), ...str(8, name), ...bytes(9, [new Uint8Array(data.buffer, data.byteOffset, data.byteLength)])];
}

/**
 * y [M, N] = x [M, K] @ w^T, w [N, K] an initializer (a Linear layer's weight, as an exported
 * model holds it): one Gemm node with transB = 1, opset 13.
 */
export function linearModel(M: number, N: number, K: number, w: Float32Array): Uint8Array {
  const transB = bytes(5, str(1, "transB"), int(3, 1), int(20, 2));
  const node = bytes(1, str(1, "x"), str(1, "w"), str(2, "y"), str(3, "linear"), str(4, "Gemm"), transB);
  const graph = bytes(7, node, str(2, "linear"), bytes(5, initializer("w", [N, K], w)), bytes(11, valueInfo("x", [M, K])), bytes(12, valueInfo("y", [M, N])));
  const model = [...int(1, 8), ...str(2, "qalign-bench"), ...graph, ...bytes(8, str(1, ""), int(2, 13))];
  const out = new Uint8Array(size(model));
  let at = 0;
  for (const chunk of model) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}
