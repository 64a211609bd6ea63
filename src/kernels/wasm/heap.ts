import { DeviceLimitError } from "../../tensor/errors.ts";
import type { Local } from "./module.ts";
import { FunctionBuilder, T, buildModule, get, i32, memoryFill } from "./module.ts";

/**
 * The `wasm` device's allocator over one WebAssembly.Memory: every storage is a block of it, so
 * kernels on any thread address it by a byte pointer. Blocks are multiples of 64 bytes (a cache
 * line, and the alignment of every v128 access). Free blocks are kept sorted by address and merged
 * with free neighbours, and a request takes the smallest free block that fits (best fit), so
 * storages of slowly changing sizes (a growing KV cache) reuse memory instead of leaking it; past
 * the free blocks the heap grows the memory (a shared memory grows in place, visible to every
 * thread; a private one, without threads, is allocated at its maximum up front, since growing it
 * would detach the views storages hold). Blocks are zero-filled by bulk memory's memory.fill
 * (a memset), which is about 20x faster than TypedArray.fill on a shared memory.
 */

const PAGE = 65536;
const ALIGN = 64;
/** The smallest memory the heap settles for when the engine refuses a larger one. */
const MIN_BYTES = 256 * 2 ** 20;

interface Block {
  ptr: number;
  bytes: number;
}

export class WasmHeap {
  readonly memory!: WebAssembly.Memory;
  /** The memory's size limit in bytes. */
  readonly maxBytes!: number;
  private top = ALIGN; // address 0 stays unused, so a pointer is never 0
  private readonly free: Block[] = [];
  private readonly sizes = new Map<number, number>();
  /** zero(ptr, bytes): memory.fill over the heap's memory. */
  private readonly zero!: (ptr: number, bytes: number) => void;

  /**
   * @param shared a SharedArrayBuffer-backed memory (threads), else a private one
   * @param maxBytes the memory's maximum (at most 4 GiB, wasm32's address space)
   * @throws RangeError when not even MIN_BYTES can be reserved.
   */
  constructor(shared: boolean, maxBytes: number) {
    // An engine may refuse to reserve the whole maximum (a browser with little address space):
    // halve it down to MIN_BYTES before giving up.
    for (let maximum = Math.min(65536, Math.ceil(maxBytes / PAGE)); ; maximum = Math.floor(maximum / 2)) {
      try {
        this.memory = new WebAssembly.Memory({ initial: shared ? 16 : maximum, maximum, shared });
        this.maxBytes = maximum * PAGE;
        break;
      } catch (e) {
        if (!(e instanceof RangeError) || maximum * PAGE <= MIN_BYTES) throw e;
      }
    }
    const fn = new FunctionBuilder("zero", [T.i32, T.i32]);
    const [ptr, bytes] = fn.params as [Local, Local];
    const module = new WebAssembly.Module(buildModule(shared, [{ fn, body: memoryFill(get(ptr), i32.const(0), get(bytes)) }]));
    this.zero = new WebAssembly.Instance(module, { env: { memory: this.memory } }).exports["zero"] as (ptr: number, bytes: number) => void;
  }

  /** A zero-filled block of at least `bytes` bytes; returns its address. @throws DeviceLimitError past maxBytes. */
  alloc(bytes: number): number {
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const b = this.free[i]!;
      if (b.bytes >= size && (best < 0 || b.bytes < this.free[best]!.bytes)) best = i;
    }
    let ptr: number;
    if (best >= 0) {
      const b = this.free[best]!;
      ptr = b.ptr;
      if (b.bytes === size) this.free.splice(best, 1);
      else {
        b.ptr += size;
        b.bytes -= size;
      }
    } else {
      ptr = this.top;
      this.ensure(ptr + size);
      this.top = ptr + size;
    }
    this.sizes.set(ptr, size);
    this.zero(ptr, size);
    return ptr;
  }

  /** Returns a block to the heap. @throws Error when `ptr` is not a live block. */
  release(ptr: number): void {
    const size = this.sizes.get(ptr);
    if (size === undefined) throw new Error(`wasm heap: ${ptr} is not an allocated block`);
    this.sizes.delete(ptr);
    // Insert sorted by address, then merge with the neighbours it touches.
    let i = 0;
    while (i < this.free.length && this.free[i]!.ptr < ptr) i++;
    this.free.splice(i, 0, { ptr, bytes: size });
    const next = this.free[i + 1];
    if (next && ptr + size === next.ptr) {
      this.free[i]!.bytes += next.bytes;
      this.free.splice(i + 1, 1);
    }
    const prev = this.free[i - 1];
    if (prev && prev.ptr + prev.bytes === ptr) {
      prev.bytes += this.free[i]!.bytes;
      this.free.splice(i, 1);
      i--;
    }
    // A free block at the top goes back to the bump region.
    const last = this.free[this.free.length - 1];
    if (last && last.ptr + last.bytes === this.top) {
      this.top = last.ptr;
      this.free.pop();
    }
  }

  /** Grows the memory to hold `end` bytes. */
  private ensure(end: number): void {
    if (end > this.maxBytes) {
      throw new DeviceLimitError("wasm", `out of memory: ${end} bytes needed, the device's memory is limited to ${this.maxBytes} bytes`);
    }
    const have = this.memory.buffer.byteLength;
    if (end > have) this.memory.grow(Math.ceil((end - have) / PAGE));
  }
}
