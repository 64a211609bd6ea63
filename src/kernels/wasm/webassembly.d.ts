/**
 * The part of the WebAssembly JavaScript API (https://webassembly.github.io/spec/js-api/) and of
 * the browser's Worker that the wasm device uses. TypeScript declares them only in its DOM
 * library, which this Node-typed project does not load; the engines (V8 in Node and browsers)
 * provide them at run time.
 */
declare namespace WebAssembly {
  interface MemoryDescriptor {
    initial: number;
    maximum?: number;
    shared?: boolean;
  }
  class Memory {
    constructor(descriptor: MemoryDescriptor);
    readonly buffer: ArrayBuffer | SharedArrayBuffer;
    grow(delta: number): number;
  }
  class Module {
    constructor(bytes: Uint8Array);
  }
  type Exports = Record<string, unknown>;
  class Instance {
    constructor(module: Module, imports: Record<string, Record<string, unknown>>);
    readonly exports: Exports;
  }
  function compile(bytes: Uint8Array): Promise<Module>;
  function validate(bytes: Uint8Array): boolean;
}

/** A browser's dedicated worker (only what the wasm device's pool uses). */
declare class Worker {
  constructor(url: string);
  postMessage(data: unknown): void;
  terminate(): void;
  onmessage: ((e: { data: unknown }) => void) | null;
  onerror: ((e: { message: string }) => void) | null;
}
