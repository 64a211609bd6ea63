import { record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { assertSameDevice } from "../device.ts";
import { DTypeError, ShapeError, fmt } from "../errors.ts";
import { Tensor } from "../tensor.ts";
import { PackedWeight } from "../weight.ts";
import { assertFloat, release } from "./operands.ts";
import { packedEmbedding, type WeightLike } from "./weights.ts";

/**
 * The embedding lookup, which reads i32 index tensors: the device ops (`gatherOp` and its
 * transpose `scatterAddOp`) and their geometry are declared here; their kernels are in
 * src/kernels (embedding.ts, embedding.wgsl.ts). A packed table goes to weights.ts.
 */

/** Geometry of an embedding table [V, D]: V rows (the vocabulary), D columns (the hidden size). */
export interface EmbeddingGeometry {
  V: number;
  D: number;
}

/**
 * out [N, D] = table[ids[n]] for table [V, D] and i32 ids [N]. Ids outside [0, V) throw (cpu,
 * wasm) or give zero rows (webgpu). Kernels: src/kernels/embedding.ts, embedding.wgsl.ts,
 * wasm/embedding.wasm.ts.
 */
export const gatherOp = deviceOp<[table: Storage, ids: Storage, g: EmbeddingGeometry], Storage>("gather");

/** out [V, D] = sum over n of onehot(ids[n]) grad[n] for grad [N, D]: the transpose of gather. */
export const scatterAddOp = deviceOp<[grad: Storage, ids: Storage, g: EmbeddingGeometry], Storage>("scatterAdd");

/**
 * Embedding lookup: table [V, D], ids i32 [...] -> [..., D] (HF nn.Embedding).
 * Gradient w.r.t. the table: scatter-add of the output gradient rows into the ids' rows.
 * Ids outside [0, V): the cpu and wasm devices throw a RangeError; the webgpu device cannot check
 * without a readback and yields zero rows, so validate ids on the host where they come from.
 * @throws ShapeError when the table is not 2-D; DeviceError when table and ids are on different devices.
 */
export function embedding(table: WeightLike, ids: Tensor): Tensor {
  if (table instanceof PackedWeight) return packedEmbedding(table, ids);
  assertFloat("embedding", table);
  ids.assertAlive("embedding");
  assertSameDevice("embedding", table, ids);
  if (table.rank !== 2) throw new ShapeError("embedding", `table must be [V, D], got ${fmt(table.shape)}`);
  if (ids.dtype !== "i32") throw new DTypeError("embedding", `ids must be i32, got ${ids.dtype}`);
  const [V, D] = table.shape as [number, number];
  const tb = table.isDense() ? table : table.contiguous(true);
  const idd = ids.isDense() ? ids : ids.contiguous(true);
  const be = table.backend;
  const y = Tensor.fromStorage(be, be.run(gatherOp, tb.storage, idd.storage, { V, D }), [...ids.shape, D]);
  release(tb, table);
  record(y, "embedding", [table], (g) => {
    const gd = g.isDense() ? g : g.contiguous(true);
    const dt = be.run(scatterAddOp, gd.storage, idd.storage, { V, D });
    release(gd, g);
    return [Tensor.fromStorage(be, dt, table.shape)];
  });
  if (y.node && idd !== ids) y.node.owned = [idd];
  else if (idd !== ids) idd.dispose();
  return y;
}
