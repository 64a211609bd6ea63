/**
 * Deterministic memory release, like TensorFlow.js's `tf.tidy`: every tensor created inside
 * `tidy(fn)` is disposed when `fn` returns, except the tensors it returns (and those passed to
 * `keep`). Scopes nest. Gradients accumulated into a leaf's `.grad` are never tracked, so they
 * outlive the scope in which `backward()` ran.
 */
export interface Disposable {
  dispose(): void;
  readonly disposed: boolean;
}

const scopes: Set<Disposable>[] = [];

/** Registers a freshly created tensor with the innermost scope (no-op outside any scope). */
export function track<T extends Disposable>(t: T): T {
  scopes[scopes.length - 1]?.add(t);
  return t;
}

/** Removes `t` from every open scope, so that no scope will dispose it. Returns `t`. */
export function keep<T extends Disposable>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

/** Tensors found in a scope's result: a tensor, an array or a plain object of them, nested. */
function collect(result: unknown, into: Set<Disposable>): void {
  if (result === null || typeof result !== "object") return;
  if ("dispose" in result && "disposed" in result) {
    into.add(result as Disposable);
    return;
  }
  const values = Array.isArray(result) ? result : Object.values(result);
  for (const v of values) collect(v, into);
}

/**
 * Runs `fn`, then disposes every tensor created during it that is not part of its result.
 * The result's tensors move to the enclosing scope. Not for async functions: a scope must not
 * span an `await` (other work could interleave); read results after `tidy` returns.
 */
export function tidy<R>(fn: () => R): R {
  const scope = new Set<Disposable>();
  scopes.push(scope);
  let result: R;
  try {
    result = fn();
  } catch (err) {
    scopes.pop();
    for (const t of scope) if (!t.disposed) t.dispose();
    throw err;
  }
  scopes.pop();
  if (result instanceof Promise) throw new Error("tidy: the function must be synchronous (it returned a Promise)");
  const survivors = new Set<Disposable>();
  collect(result, survivors);
  for (const t of scope) {
    if (survivors.has(t)) track(t);
    else if (!t.disposed) t.dispose();
  }
  return result;
}
