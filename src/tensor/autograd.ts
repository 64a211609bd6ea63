import { assertSameDevice } from "./device.ts";
import { AutogradError, fmt } from "./errors.ts";
import { keep, tidy } from "./scope.ts";
import type { Tensor } from "./tensor.ts";

/**
 * Reverse-mode automatic differentiation over a recorded graph, as in micrograd: every op whose
 * inputs require gradients records a node with its inputs and a closure that maps the gradient
 * of its output to the gradients of its inputs; `backward` visits nodes in reverse topological
 * order. Backward rules are written with tensor ops, once, for every device.
 */
export interface GradNode {
  /** Op name, for error messages. */
  op: string;
  inputs: Tensor[];
  /** Maps d loss / d output to d loss / d input for each input (null: no gradient). */
  backward: (grad: Tensor) => (Tensor | null)[];
  /** Temporaries (scalars made from number operands) that live and die with this node. */
  owned?: Tensor[];
}

/** Drops `t`'s node, disposing the temporaries it owns. */
export function releaseNode(t: Tensor): void {
  for (const o of t.node?.owned ?? []) o.dispose();
  t.node = null;
}

let gradEnabled = true;

/** Whether ops currently record the graph. */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs `fn` with recording switched to `on`, restoring the previous mode after. */
function withGradMode<R>(on: boolean, fn: () => R): R {
  const prev = gradEnabled;
  gradEnabled = on;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** Runs `fn` without recording any graph (inference, optimizer updates). Scopes nest. */
export function noGrad<R>(fn: () => R): R {
  return withGradMode(false, fn);
}

/** Runs `fn` recording the graph even inside `noGrad` (a backward rule that recomputes a forward, checkpoint.ts). */
export function withGrad<R>(fn: () => R): R {
  return withGradMode(true, fn);
}

/**
 * Attaches a grad node to `out` when recording is on and some input requires a gradient.
 * Returns `out`. Ops call this once after computing their forward value.
 */
export function record(out: Tensor, op: string, inputs: Tensor[], backward: GradNode["backward"]): Tensor {
  if (gradEnabled && inputs.some((t) => t.requiresGrad)) {
    out.requiresGrad = true;
    out.node = { op, inputs, backward };
  }
  return out;
}

/** Tensors reachable from `root` through grad nodes, inputs before outputs. */
function topoSort(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  // Iterative DFS: deep graphs (many layers x many ops) would overflow the JS stack.
  const stack: [Tensor, boolean][] = [[root, false]];
  while (stack.length > 0) {
    const [t, expanded] = stack.pop()!;
    if (expanded) {
      order.push(t);
      continue;
    }
    if (seen.has(t)) continue;
    seen.add(t);
    stack.push([t, true]);
    for (const inp of t.node?.inputs ?? []) if (inp.requiresGrad && !seen.has(inp)) stack.push([inp, false]);
  }
  return order;
}

/**
 * Back-propagates from `root`. Without `grad`, `root` must hold one element (a loss) and its
 * gradient is 1. Gradients of leaves (tensors with requiresGrad and no node, i.e. parameters)
 * are added into their `.grad`, which no scope disposes; intermediate gradients are disposed
 * as soon as they are used, and the graph is released (backward twice through it throws).
 *
 * @throws AutogradError when root does not require grad, when root is not a scalar and no
 *   grad is given, when grad's shape differs from root's, or when the graph was released;
 *   DeviceError when grad is on another device than root.
 */
export function backward(root: Tensor, grad?: Tensor): void {
  if (!root.requiresGrad) throw new AutogradError("backward", "tensor does not require grad");
  if (grad === undefined && root.size !== 1) {
    throw new AutogradError("backward", `called on a non-scalar tensor of shape ${fmt(root.shape)} without a gradient`);
  }
  if (grad !== undefined && grad.shape.join() !== root.shape.join()) {
    throw new AutogradError("backward", `gradient shape ${fmt(grad.shape)} differs from tensor shape ${fmt(root.shape)}`);
  }
  assertSameDevice("backward", root, grad);
  const order = topoSort(root);
  const grads = new Map<Tensor, Tensor>();
  noGrad(() => {
    grads.set(root, grad ?? root.onesLike());
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i]!;
      const g = grads.get(t);
      if (g === undefined) continue;
      grads.delete(t);
      if (t.node === null) {
        if (t.graphReleased) {
          throw new AutogradError(
            "backward",
            `the graph through a ${fmt(t.shape)} tensor was released: it was disposed (or freed by tidy) or an earlier ` +
              "backward() went through it; call backward() inside the tidy that computed the loss",
          );
        }
        accumulateLeaf(t, g === grad ? g.contiguous(true) : g);
        continue;
      }
      const node = t.node;
      // Temporaries of the rule are freed at once; only the input gradients survive.
      const inGrads = tidy(() => node.backward(g));
      const used = new Set<Tensor>([g]);
      for (let j = 0; j < node.inputs.length; j++) {
        const inp = node.inputs[j]!;
        const ig = inGrads[j];
        if (!inp.requiresGrad || ig === null || ig === undefined) continue;
        if (ig.shape.join() !== inp.shape.join()) {
          throw new AutogradError(node.op, `backward produced ${fmt(ig.shape)} for an input of shape ${fmt(inp.shape)}`);
        }
        // A rule may pass `g` through or give two inputs the same tensor (add): each gets its own view.
        const own = used.has(ig) ? ig.detach() : ig;
        used.add(ig);
        const prev = grads.get(inp);
        if (prev === undefined) grads.set(inp, own);
        else {
          grads.set(inp, prev.add(own));
          prev.dispose();
          own.dispose();
        }
      }
      // Gradients computed for inputs that do not need them.
      for (const ig of inGrads) if (ig && !used.has(ig)) ig.dispose();
      if (g !== grad) g.dispose();
      releaseNode(t);
      t.graphReleased = true;
    }
  });
}

/** Adds `g` into leaf `t`'s `.grad`, keeping the result alive beyond any scope. */
function accumulateLeaf(t: Tensor, g: Tensor): void {
  if (t.grad === null) {
    // The incoming gradient may be a strided view (an expand or a slice); store it dense.
    t.grad = keep(g.isDense() ? g : g.contiguous());
    if (t.grad !== g) g.dispose();
  } else {
    const sum = keep(t.grad.add(g));
    t.grad.dispose();
    g.dispose();
    t.grad = sum;
  }
}
