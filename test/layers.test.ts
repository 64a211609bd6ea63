import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

/**
 * Folders are layers and imports go one way. The layer order is written once, as the table of
 * the README's "Layout" section (lowest first); this test reads it from there and checks every
 * import under src/ (static, type-only, re-exports and dynamic `import()`, as TypeScript's
 * pre-processor lists them, comments excluded) against it: a file may import from its own layer
 * and from layers listed before it, never from one listed after it. The files directly in src/
 * (the entries: core.ts, index.ts, browser.ts) stand above every layer.
 */
const ROOT = resolve(import.meta.dirname, "..");
const SRC = join(ROOT, "src");

/** One row of the README's Layout table: the layer and the layers its "imports from" cell names. */
interface LayerRow {
  layer: string;
  importsFrom: string[];
}

/** The rows of the README's Layout table (`| \`src/<name>\` | imports from | contents |`), in order. */
function readmeLayers(): LayerRow[] {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const section = readme.split(/^## /m).find((s) => s.startsWith("Layout\n"));
  if (!section) throw new Error("README.md has no ## Layout section");
  return [...section.matchAll(/^\| `src\/([a-z_]+)` \| ([^|]*) \|/gm)].map((m) => ({
    layer: m[1]!,
    importsFrom: m[2]!.trim() === "nothing of qalign" ? [] : m[2]!.split(",").map((l) => l.trim()),
  }));
}

/** Every .ts file under `dir`, as paths relative to the repository root. */
function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sources(path);
    return e.name.endsWith(".ts") ? [relative(ROOT, path)] : [];
  });
}

/** The layer of a path under src/: its first folder, or null for a file directly in src/. */
function layerOf(path: string): string | null {
  const parts = relative(SRC, join(ROOT, path)).split("/");
  return parts.length > 1 ? parts[0]! : null;
}

/** Every relative import of `file`: [importing file, imported file], both relative to the root. */
function importsOf(file: string): [string, string][] {
  const info = ts.preProcessFile(readFileSync(join(ROOT, file), "utf8"), true, true);
  return info.importedFiles.filter((f) => f.fileName.startsWith(".")).map((f) => [file, relative(ROOT, resolve(ROOT, dirname(file), f.fileName))]);
}

/**
 * Above `kernels`, code reaches the kernels only through device selection (`devices.ts`): a
 * concrete backend is an implementation detail behind the `Backend` interface of src/tensor.
 */
const KERNELS_ENTRY = "src/kernels/devices.ts";

/**
 * Library code reports through callbacks and return values; only the command line (src/cli)
 * writes to the process's stdout and stderr. Files that still do, each with its reason; an
 * allowance that no longer matches fails, so it goes when the write does.
 */
const WRITES_STREAMS = [
  // QALIGN_DEBUG_WGSL=1 prints each compiled shader: a debugging switch, not a report.
  "src/kernels/webgpu/pipelines.ts",
];

/**
 * Outside src/cli, the files that import a `node:` module statically (what a bundle would have
 * to resolve); everything else reaches files through io/files.ts's Files. The README's Layout
 * section names each; an entry whose import is gone fails, so it goes when the import does.
 */
const NODE_ONLY = [
  "src/io/atomic.ts", // Node's Files: crash-safe file writes
  "src/io/atomic_dir.ts", // Node's Files: crash-safe folder writes
  "src/io/make_dirs.ts", // Node's Files: mkdir -p
  "src/io/node_files.ts", // Node's Files
  "src/io/package.ts", // the package's version, from its package.json on disk
  "src/io/provenance.ts", // git commit and file hashes of a results file
  "src/model/hub_node.ts", // the Hub download cache folder
  "src/model/tiny.ts", // the tiny checkpoint: the tokenizer package in node_modules, the OS cache folder
  "src/eval/default_data.ts", // the default data folder, against the working directory
];

const ROWS = readmeLayers();
const LAYERS = ROWS.map((r) => r.layer);
const FILES = sources(SRC);
const IMPORTS = FILES.flatMap(importsOf);

describe("layers", () => {
  it("the README's Layout table lists every folder of src/ once", () => {
    expect(LAYERS.length).toBeGreaterThan(0);
    expect(new Set(LAYERS).size, `duplicates in ${LAYERS.join(", ")}`).toBe(LAYERS.length);
    const folders = [...new Set(FILES.map(layerOf).filter((l) => l !== null))].sort();
    expect(folders).toEqual([...LAYERS].sort());
  });

  it("every import goes to the importer's layer or one below it", () => {
    const rank = (path: string) => {
      const layer = layerOf(path);
      return layer === null ? Infinity : LAYERS.indexOf(layer);
    };
    const upward = IMPORTS.filter(([from, to]) => rank(to) > rank(from)).map(([from, to]) => `${from} -> ${to}`);
    expect(upward, `imports against the layer order ${LAYERS.join(" -> ")}`).toEqual([]);
  });

  it("each layer imports from exactly the layers its \"imports from\" cell names", () => {
    const used = new Map<string, Set<string>>(LAYERS.map((l) => [l, new Set()]));
    for (const [from, to] of IMPORTS) {
      const [a, b] = [layerOf(from), layerOf(to)];
      if (a !== null && b !== null && a !== b) used.get(a)?.add(b);
    }
    for (const { layer, importsFrom } of ROWS) {
      const actual = LAYERS.filter((l) => used.get(layer)!.has(l)); // in table order, as the cell lists them
      expect(actual, `README Layout table, src/${layer}: update its "imports from" cell to what the code imports`).toEqual(importsFrom);
    }
  });

  it(`above kernels, only ${KERNELS_ENTRY} is imported from kernels`, () => {
    const reaching = IMPORTS.filter(([from, to]) => layerOf(from) !== "kernels" && layerOf(to) === "kernels" && to !== KERNELS_ENTRY).map(([from, to]) => `${from} -> ${to}`);
    expect(reaching).toEqual([]);
  });

  it("outside src/cli, only the Node-only files import node: modules, and the README names them", () => {
    // Static imports and re-exports only: a module named at run time (io/host.ts's importNodeOnly, on Node only) is not bundled.
    const importers = FILES.filter((f) => layerOf(f) !== "cli" && /^(?:import|export)\b[^;]*?\bfrom "node:|^import "node:/m.test(readFileSync(join(ROOT, f), "utf8")));
    expect(importers.filter((f) => !NODE_ONLY.includes(f)), "import through io/files.ts's Files instead, or add the file here and to the README's Layout").toEqual([]);
    expect(NODE_ONLY.filter((f) => !importers.includes(f)), "allowances whose node: import is gone: remove them").toEqual([]);
    const layout = readFileSync(join(ROOT, "README.md"), "utf8").split(/^## /m).find((s) => s.startsWith("Layout\n"))!;
    expect(NODE_ONLY.filter((f) => !layout.includes(`\`${f.slice("src/".length)}\``)), "README Layout: name these Node-only files").toEqual([]);
  });

  it("only src/cli writes to stdout or stderr", () => {
    const writers = FILES.filter((f) => layerOf(f) !== "cli" && /\bprocess\.(stdout|stderr)\b|\bconsole\.\w+\(/.test(readFileSync(join(ROOT, f), "utf8")));
    expect(writers.filter((f) => !WRITES_STREAMS.includes(f))).toEqual([]);
    expect(WRITES_STREAMS.filter((f) => !writers.includes(f)), "allowances whose write is gone: remove them").toEqual([]);
  });
});
