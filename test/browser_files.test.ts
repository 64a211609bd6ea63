import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Page } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openQalign } from "./helpers/browser.ts";
import { ROOT } from "./helpers/cli.ts";
import type { Files } from "../src/io/files.ts";
import { nodeFiles } from "../src/io/node_files.ts";
import { mountedFiles } from "../src/io/mounted_files.ts";
import { blobFiles } from "../src/io/web_files.ts";

/**
 * Files in the browser (src/io/opfs_files.ts, mounted_files.ts) in headless Chromium: the same
 * operations on the Origin Private File System in the page and on Node's file system give the
 * same results, and a checkpoint read from URLs can be written beside OPFS files through one
 * mounted Files. The page is served from http://localhost, a secure context (OPFS needs one).
 */
let close: () => Promise<void> = async () => undefined;
let page: Page;

beforeAll(async () => {
  ({ page, close } = await openQalign({}, { "/models/": join(ROOT, "test", "fixtures", "models") }));
}, 120_000);

afterAll(() => close());

/** What the page's functions see: qalign as window.qa (loosely typed: the page runs plain JavaScript). */
type PageGlobals = { qa: any };

/**
 * One sequence of Files operations under folder `dir`, each outcome recorded (a value, or
 * "error" when it throws): run on Node's files in a temporary folder and on the OPFS in the
 * page, the two records must be equal. Self-contained, since its source runs in the page.
 */
async function scenario(files: Files, dir: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const record = async (key: string, op: () => Promise<unknown>) => {
    try {
      out[key] = (await op()) ?? "done";
    } catch {
      out[key] = "error";
    }
  };
  const bytes = (u: Uint8Array) => Array.from(u);
  const sub = files.join(dir, "sub");
  const a = files.join(sub, "a.txt");
  const b = files.join(files.join(sub, "deeper"), "b.bin");
  await record("exists before", () => files.exists(a));
  await record("list missing folder", () => files.list(sub));
  await record("readText missing", () => files.readText(a));
  await record("open missing", () => files.open(a));
  // Strings are UTF-8; a byte-order mark is kept by readText on both.
  await record("write new (parents created)", () => files.writeAtomic(a, ["\uFEFFhé", "llo ", new Uint8Array([0x77, 0x6f, 0x72, 0x6c, 0x64])]));
  await record("exists after", () => files.exists(a));
  await record("exists of a folder", () => files.exists(sub));
  await record("readText", () => files.readText(a));
  await record("open", async () => {
    const r = await files.open(a);
    const got = { size: r.size, middle: bytes(await r.read(3, 7)), all: bytes(await r.read(0, r.size)), empty: bytes(await r.read(5, 5)) };
    await r.close();
    return got;
  });
  // A generator that fails after its first chunk: the old content stays, no temporary file is left.
  await record("write that throws", () =>
    files.writeAtomic(
      a,
      (function* () {
        yield "partial";
        throw new Error("the source failed");
      })(),
    ),
  );
  await record("readText after a failed write", () => files.readText(a));
  await record("write from an async generator", () =>
    files.writeAtomic(
      b,
      (async function* () {
        for (let i = 0; i < 3; i++) yield Uint8Array.from({ length: 1000 }, (_, j) => (i * 7 + j) % 251);
      })(),
    ),
  );
  await record("open after async write", async () => {
    const r = await files.open(b);
    const got = { size: r.size, tail: bytes(await r.read(2995, 3000)) };
    await r.close();
    return got;
  });
  await record("replace", () => files.writeAtomic(a, ["new"]));
  await record("readText after replace", () => files.readText(a));
  await record("write empty", () => files.writeAtomic(files.join(sub, "empty"), []));
  await record("empty size", async () => (await files.open(files.join(sub, "empty"))).size);
  await record("list", () => files.list(sub));
  await record("list nested", () => files.list(files.join(sub, "deeper")));
  await record("list a file", () => files.list(a));
  return out;
}

describe("Files in headless Chromium", () => {
  it("OPFS files give the same results as Node's files on the same operations", async () => {
    const tmp = mkdtempSync(join(tmpdir(), "qalign-files-"));
    try {
      const node = await scenario(nodeFiles, tmp);
      const opfs = await page.evaluate(
        async (source: string) => {
          const qa = (globalThis as unknown as PageGlobals).qa;
          const run = (0, eval)(`(${source})`);
          const root = await (globalThis as unknown as { navigator: { storage: { getDirectory(): Promise<any> } } }).navigator.storage.getDirectory();
          // The same root with FileSystemFileHandle.move hidden, so writeAtomic takes its copy path.
          const noMove = (dir: any): any => ({
            kind: "directory",
            name: dir.name,
            getDirectoryHandle: async (n: string, o?: object) => noMove(await dir.getDirectoryHandle(n, o)),
            getFileHandle: async (n: string, o?: object) => {
              const h = await dir.getFileHandle(n, o);
              return { kind: "file", name: h.name, getFile: () => h.getFile(), createWritable: (w?: object) => h.createWritable(w) };
            },
            removeEntry: (n: string, o?: object) => dir.removeEntry(n, o),
            keys: () => dir.keys(),
          });
          for (const name of ["moved", "copied"]) await root.removeEntry(name, { recursive: true }).catch(() => undefined);
          const hasMove = typeof (await root.getFileHandle("probe", { create: true })).move === "function";
          await root.removeEntry("probe");
          return { hasMove, moved: await run(qa.opfsFiles(), "moved"), copied: await run(qa.opfsFiles(noMove(root)), "copied") };
        },
        scenario.toString(),
      );
      // The expected outcomes, written out, so that both implementations are checked against them too.
      expect(node["readText"]).toBe("\uFEFFhéllo world");
      expect(node["readText after a failed write"]).toBe("\uFEFFhéllo world");
      expect(node["list"]).toEqual(["a.txt", "deeper", "empty"]);
      expect(node["exists of a folder"]).toBe(false);
      expect(node["open missing"]).toBe("error");
      expect(opfs.hasMove).toBe(true); // Chromium has move: the first run renames, the second copies
      expect(opfs.moved).toEqual(node);
      expect(opfs.copied).toEqual(node);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it("a mounted Files reads a checkpoint over HTTP and writes to the OPFS, each path on its own source", async () => {
    const r = await page.evaluate(async () => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const files = qa.mountedFiles({ "": qa.urlFiles(), "opfs:": qa.opfsFiles() });
      const config = await files.readText(files.join("/models/llama-untied", "config.json"));
      const target = files.join("opfs:mounted", "config.json");
      await files.writeAtomic(target, [config]);
      const back = await qa.opfsFiles().readText("mounted/config.json");
      let httpWrite = "";
      await files.writeAtomic("/models/llama-untied/x.json", ["{}"]).catch((e: Error) => void (httpWrite = e.message));
      return { same: back === config, length: config.length, target, opfsList: await files.list("opfs:mounted"), httpWrite };
    });
    expect(r.length).toBeGreaterThan(0);
    expect(r.same).toBe(true);
    expect(r.target).toBe("opfs:mounted/config.json");
    expect(r.opfsList).toEqual(["config.json"]);
    expect(r.httpWrite).toMatch(/read-only/);
  });

  it("a file opened before an atomic replace is a snapshot: reading it after fails instead of mixing old and new bytes", async () => {
    // Node differs here (an open handle keeps reading the old file), as opfs_files.ts documents.
    const r = await page.evaluate(async () => {
      const files = (globalThis as unknown as PageGlobals).qa.opfsFiles();
      await files.writeAtomic("snapshot/f.bin", [new Uint8Array([1, 2, 3, 4])]);
      const reader = await files.open("snapshot/f.bin");
      const before = Array.from(await reader.read(0, 4));
      await files.writeAtomic("snapshot/f.bin", [new Uint8Array([5, 6, 7, 8])]);
      const after = await reader.read(0, 4).then((b: Uint8Array) => Array.from(b), (e: Error) => e.name);
      return { before, after, now: Array.from(await (await files.open("snapshot/f.bin")).read(0, 4)) };
    });
    expect(r).toEqual({ before: [1, 2, 3, 4], after: "NotReadableError", now: [5, 6, 7, 8] });
  });
});

describe("mountedFiles on Node", () => {
  it("routes each path to the mount with the longest prefix and strips it", async () => {
    const tmp = mkdtempSync(join(tmpdir(), "qalign-mount-"));
    try {
      const picked = blobFiles(new Map([["m/config.json", new Blob(['{"a":1}'])]]));
      const files = mountedFiles({ "": picked, "out:": nodeFiles, "out:x": picked });
      expect(await files.readText("m/config.json")).toBe('{"a":1}');
      const target = files.join(`out:${tmp}`, "c.json");
      expect(target).toBe(`out:${join(tmp, "c.json")}`);
      await files.writeAtomic(target, ["{}"]);
      expect(await nodeFiles.readText(join(tmp, "c.json"))).toBe("{}");
      // "out:x" is longer than "out:", so the picked files answer for "m/config.json".
      expect(await files.exists("out:xm/config.json")).toBe(true);
      await expect(mountedFiles({ "a:": picked }).readText("b:c")).rejects.toThrow(/no mounted source has a prefix of this path/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
