import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Page } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openQalign, pageAdapterOrSkip, pageLoraSteps } from "./helpers/browser.ts";
import { fixtureDir, maxAbs } from "./helpers/fixtures.ts";
import { ROOT } from "./helpers/cli.ts";
import type { Files } from "../src/io/files.ts";
import { nodeFiles } from "../src/io/node_files.ts";
import { mountedFiles } from "../src/io/mounted_files.ts";
import { blobFiles } from "../src/io/web_files.ts";
import { getDevice } from "../src/kernels/devices.ts";
import { loadModel } from "../src/model/load.ts";
import { applyLora } from "../src/lora/layer.ts";
import { saveAdapter, setAdapterWeights } from "../src/lora/peft.ts";
import { train } from "../src/lora/trainer.ts";
import { Rng } from "../src/tensor/random.ts";
import { tensor } from "../src/tensor/ops/create.ts";
import { noGrad } from "../src/tensor/autograd.ts";

/**
 * Files in the browser (src/io/opfs_files.ts, mounted_files.ts) in headless Chromium: the same
 * operations on the Origin Private File System in the page and on Node's file system give the
 * same results, and a checkpoint read from URLs can be written beside OPFS files through one
 * mounted Files. The page is served from http://localhost, a secure context (OPFS needs one).
 */
/** A file that starts with a UTF-8 byte-order mark, which Node's readText keeps. */
const BOM_TEXT = '\uFEFF{"a": 1}';

let close: () => Promise<void> = async () => undefined;
let page: Page;

beforeAll(async () => {
  ({ page, close } = await openQalign({ "/bom.json": { type: "application/json", body: BOM_TEXT } }, { "/models/": join(ROOT, "test", "fixtures", "models") }));
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
      const value = await op();
      out[key] = value === undefined ? "done" : value;
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
  await record("empty size", async () => {
    const r = await files.open(files.join(sub, "empty"));
    await r.close();
    return r.size;
  });
  await record("list", () => files.list(sub));
  await record("list nested", () => files.list(files.join(sub, "deeper")));
  await record("list a file", () => files.list(a));
  // A folder replaced as a whole: absent, built, a failed rebuild (the old one stays), rebuilt.
  const ck = files.join(dir, "ck");
  const fill = (names: string[]) => async (tmp: string) => {
    for (const n of names) await files.writeAtomic(files.join(tmp, n), [`${n} in a new folder`]);
  };
  await record("latestDir of none", () => files.latestDir(ck));
  await record("replaceDir new", () => files.replaceDir(ck, fill(["state.json", "weights.bin"])));
  await record("latestDir is the folder", async () => (await files.latestDir(ck)) === ck);
  await record("list replaced", () => files.list(ck));
  await record("replaceDir that fails", () =>
    files.replaceDir(ck, async (tmp) => {
      await files.writeAtomic(files.join(tmp, "state.json"), ["half"]);
      throw new Error("the writer failed");
    }),
  );
  await record("after a failed replaceDir", async () => ({ list: await files.list(ck), state: await files.readText(files.join(ck, "state.json")), beside: await files.list(dir) }));
  await record("replaceDir again", () => files.replaceDir(ck, fill(["other.json"])));
  await record("after replaceDir again", async () => ({ list: await files.list(ck), beside: await files.list(dir) }));
  await record("replaceDir with nothing written", () => files.replaceDir(files.join(dir, "empty-ck"), async () => undefined));
  await record("empty folder", () => files.list(files.join(dir, "empty-ck")));
  await record("remove a folder", () => files.remove(ck));
  await record("remove a file", () => files.remove(b));
  await record("remove nothing", () => files.remove(files.join(dir, "none")));
  await record("after removes", async () => ({ beside: await files.list(dir), deeper: await files.list(files.join(sub, "deeper")), latest: await files.latestDir(ck) }));
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
          const file = (h: any) => ({ kind: "file", name: h.name, getFile: () => h.getFile(), createWritable: (w?: object) => h.createWritable(w) });
          const noMove = (dir: any): any => ({
            kind: "directory",
            name: dir.name,
            getDirectoryHandle: async (n: string, o?: object) => noMove(await dir.getDirectoryHandle(n, o)),
            getFileHandle: async (n: string, o?: object) => file(await dir.getFileHandle(n, o)),
            removeEntry: (n: string, o?: object) => dir.removeEntry(n, o),
            keys: () => dir.keys(),
            entries: async function* () {
              for await (const [n, h] of dir.entries()) yield [n, h.kind === "directory" ? noMove(h) : file(h)];
            },
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

  it("OPFS replaceDir stopped at any step leaves latestDir a complete folder, and the next one cleans up", async () => {
    const r = await page.evaluate(async () => {
      const files = (globalThis as unknown as PageGlobals).qa.opfsFiles();
      await files.remove("crash");
      await files.replaceDir("crash/ck", async (tmp: string) => void (await files.writeAtomic(`${tmp}/state.json`, ["1"])));
      // Stopped mid-fill: a temporary folder with no marker beside the complete folder.
      await files.writeAtomic("crash/ck.tmp-0000000000aaaa/state.json", ["half"]);
      const midFill = await files.latestDir("crash/ck");
      // Stopped mid-copy: a marked, complete temporary folder and a partial ck.
      await files.writeAtomic("crash/ck.tmp-0000000000bbbb/state.json", ["2"]);
      await files.writeAtomic("crash/ck.tmp-0000000000bbbb/weights.bin", ["w2"]);
      await files.writeAtomic("crash/ck.tmp-0000000000bbbb.complete", []);
      await files.remove("crash/ck/state.json");
      const midCopy = await files.latestDir("crash/ck");
      const readBack = await files.readText(`${midCopy}/state.json`);
      await files.replaceDir("crash/ck", async (tmp: string) => void (await files.writeAtomic(`${tmp}/state.json`, ["3"])));
      return { midFill, midCopy, readBack, after: await files.latestDir("crash/ck"), state: await files.readText("crash/ck/state.json"), beside: await files.list("crash") };
    });
    expect(r).toEqual({ midFill: "crash/ck", midCopy: "crash/ck.tmp-0000000000bbbb", readBack: "2", after: "crash/ck", state: "3", beside: ["ck"] });
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
      const bom = { url: await files.readText("/bom.json"), blob: await qa.blobFiles(new Map([["b", await (await fetch("/bom.json")).blob()]])).readText("b") };
      return { same: back === config, length: config.length, target, opfsList: await files.list("opfs:mounted"), httpWrite, bom };
    });
    expect(r.length).toBeGreaterThan(0);
    expect(r.same).toBe(true);
    expect(r.target).toBe("opfs:mounted/config.json");
    expect(r.opfsList).toEqual(["config.json"]);
    expect(r.httpWrite).toMatch(/read-only/);
    // Every source decodes as Node's readFile(path, "utf8") does: the byte-order mark stays.
    const tmp = mkdtempSync(join(tmpdir(), "qalign-bom-"));
    try {
      await nodeFiles.writeAtomic(join(tmp, "bom.json"), [BOM_TEXT]);
      const node = await nodeFiles.readText(join(tmp, "bom.json"));
      expect(node).toBe(BOM_TEXT);
      expect(r.bom).toEqual({ url: node, blob: node });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
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

describe("a PEFT adapter trained in the page, through the OPFS", () => {
  it("saved to the OPFS and loaded back gives the in-memory model's logits, in the files Node writes", async (ctx) => {
    await pageAdapterOrSkip(page, ctx);
    const inputIds = [1, 17, 42, 99, 5, 230, 64, 8];
    const r = await page.evaluate(async (ids: number[], loraSteps: string) => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const device = await qa.getDevice("webgpu");
      const opfs = qa.opfsFiles();
      const model = await qa.loadModel("/models/llama-untied", { device });
      const adapter = qa.applyLora(model, { r: 4, lora_alpha: 8, seed: 0 });
      // Three AdamW steps (as browser.test.ts's LoRA test), so lora_B is no longer zero.
      await (0, eval)(`(${loraSteps})`)(qa, model, adapter, device, 3);
      const input = qa.tensor(Int32Array.from(ids), { device, shape: [1, ids.length] });
      const logitsOf = async (m: any) => Array.from(await qa.noGrad(() => m.forward(input)).logits.data()) as number[];
      const trained = await logitsOf(model);
      await qa.saveAdapter(adapter, "peft/trained", "/models/llama-untied", opfs);
      const weights: Record<string, number[]> = {};
      for (const [key, p] of adapter.namedParams()) weights[key] = Array.from(await p.data()) as number[];
      model.dispose();
      const fresh = await qa.loadModel("/models/llama-untied", { device });
      const base = await logitsOf(fresh);
      await qa.loadAdapter(fresh, "peft/trained", opfs);
      const reloaded = await logitsOf(fresh);
      fresh.dispose();
      const bytes = async (name: string) => {
        const f = await opfs.open(`peft/trained/${name}`);
        return Array.from(await f.read(0, f.size)) as number[];
      };
      return { trained, base, reloaded, weights, listed: await opfs.list("peft/trained"), config: await bytes("adapter_config.json"), safetensors: await bytes("adapter_model.safetensors") };
    }, inputIds, pageLoraSteps.toString());
    expect(r.listed).toEqual(["adapter_config.json", "adapter_model.safetensors"]);
    // The same device, the same kernels and bit-identical f32 weights (safetensors stores the
    // f32 bytes as they are): the reloaded model computes exactly the in-memory one's logits.
    expect(r.reloaded).toEqual(r.trained);
    expect(maxAbs(r.trained.map((v, i) => v - r.base[i]!))).toBeGreaterThan(0); // the adapter changes the output

    // Node, from the page's weights: the same two files byte for byte, and on the cpu device
    // (float32 in another summation order than webgpu's) the same logits within 1e-4 of their
    // scale, as test/model_golden.test.ts allows.
    const tmp = mkdtempSync(join(tmpdir(), "qalign-peft-"));
    try {
      const cpu = await getDevice("cpu");
      const model = await loadModel(fixtureDir("llama-untied"), { device: cpu });
      const adapter = applyLora(model, { r: 4, lora_alpha: 8, seed: 0 });
      setAdapterWeights(adapter, new Map(Object.entries(r.weights).map(([k, v]) => [k, Float32Array.from(v)])));
      await saveAdapter(adapter, tmp, "/models/llama-untied", nodeFiles);
      const read = async (name: string) => {
        const f = await nodeFiles.open(join(tmp, name));
        try {
          return Array.from(await f.read(0, f.size));
        } finally {
          await f.close();
        }
      };
      expect(r.config).toEqual(await read("adapter_config.json"));
      expect(r.safetensors).toEqual(await read("adapter_model.safetensors"));
      const ids = tensor(Int32Array.from(inputIds), { device: cpu, shape: [1, inputIds.length] });
      const logits = Array.from(await noGrad(() => model.forward(ids)).logits!.data());
      model.dispose();
      expect(maxAbs(logits.map((v, i) => v - r.reloaded[i]!))).toBeLessThanOrEqual(1e-4 * maxAbs(logits));
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe("merging in the page, from URLs into the OPFS", () => {
  it("a model merged with its trained adapter, written to the OPFS and loaded back, gives the LoRA model's logits", async () => {
    const r = await page.evaluate(async (loraSteps: string) => {
      const qa = (globalThis as unknown as PageGlobals).qa;
      const files = qa.mountedFiles({ "": qa.urlFiles(), "opfs:": qa.opfsFiles() });
      await files.remove("opfs:merged");
      const device = await qa.getDevice("cpu");
      const model = await qa.loadModel("/models/llama-untied", { device });
      const adapter = qa.applyLora(model, { r: 4, lora_alpha: 8, seed: 0 });
      await (0, eval)(`(${loraSteps})`)(qa, model, adapter, device, 3);
      const input = qa.tensor(Int32Array.from([1, 17, 42, 99, 5, 230]), { device, shape: [1, 6] });
      const logitsOf = async (m: any) => Array.from(await qa.noGrad(() => m.forward(input)).logits.data()) as number[];
      const withLora = await logitsOf(model);
      const merged = qa.mergeLora(model);
      const dtype = await qa.saveMergedModel(model, "/models/llama-untied", "opfs:merged", files);
      model.dispose();
      const back = await qa.loadModel("opfs:merged", { device, files });
      const reloaded = await logitsOf(back);
      const refused = await qa.saveMergedModel(back, "/models/llama-untied", "opfs:merged", files).catch((e: Error) => e.message);
      back.dispose();
      return { withLora, reloaded, merged, dtype, listed: await files.list("opfs:merged"), refused };
    }, pageLoraSteps.toString());
    expect(r.merged).toBe(4); // q_proj and v_proj of 2 layers
    expect(r.dtype).toBe("F32");
    expect(r.listed).toEqual(["config.json", "model.safetensors"]); // the fixture has no tokenizer files to copy
    expect(r.refused).toMatch(/exists and is not empty; refusing to overwrite/);
    // W + scaling B A in f32 against x W^T + scaling (x A^T) B^T: other roundings of the same
    // sums, within 1e-4 of the logit scale as test/model_golden.test.ts allows.
    expect(maxAbs(r.reloaded.map((v, i) => v - r.withLora[i]!))).toBeLessThanOrEqual(1e-4 * maxAbs(r.withLora));
  });
});

describe("the trainer in the page, its checkpoints on the OPFS", () => {
  it("a run stopped after step 5 and resumed from its OPFS checkpoint writes the adapter an unstopped run writes, as Node does", async () => {
    // As test/lora_train.test.ts's checkpoint test, on the cpu device (bit-for-bit resume):
    // 10 examples, batch 2, accumulation 2, 2 epochs = 6 steps, a checkpoint every 2.
    const synthetic = (n: number, seed: number) => {
      const rng = new Rng(seed);
      return Array.from({ length: n }, () => {
        const len = 5 + rng.int(7);
        return { ids: Array.from({ length: len }, () => 3 + rng.int(300)), promptLen: 1 + rng.int(len - 2) };
      });
    };
    const data = { train: synthetic(10, 7), val: synthetic(3, 8) };
    const opts = { lr: 1e-2, epochs: 2, batchSize: 2, gradAccum: 2, saveSteps: 2, seed: 3 };
    const lora = { target_modules: ["q_proj", "v_proj", "down_proj"], lora_dropout: 0.1, seed: 5 };
    const r = await page.evaluate(
      async (data: unknown, opts: Record<string, number>, lora: Record<string, unknown>) => {
        const qa = (globalThis as unknown as PageGlobals).qa;
        const files = qa.opfsFiles();
        await files.remove("train");
        const device = await qa.getDevice("cpu");
        const run = async (outDir: string, extra: Record<string, unknown> = {}) => {
          const model = await qa.loadModel("/models/llama-untied", { device });
          const adapter = qa.applyLora(model, lora);
          try {
            return await qa.train(model, adapter, data, { ...opts, outDir, files, ...extra });
          } finally {
            model.dispose();
          }
        };
        const bytes = async (file: string) => {
          const f = await files.open(file);
          return Array.from(await f.read(0, f.size)) as number[];
        };
        const whole = await run("train/whole");
        const stopped = await run("train/split", { onStep: (s: { step: number }) => { if (s.step === 5) throw new Error("stopped"); } }).catch((e: Error) => e.message);
        const checkpoint = await files.list("train/split/checkpoint");
        const state = JSON.parse(await files.readText("train/split/checkpoint/trainer_state.json"));
        const refused = await run("train/split").catch((e: Error) => e.name);
        const resumed = await run("train/split", { resume: true });
        return {
          stopped,
          checkpoint,
          state: { step: state.step, adamStep: state.adamStep },
          refused,
          historyEqual: JSON.stringify(resumed.history) === JSON.stringify(whole.history),
          wholeFolder: await files.list("train/whole"),
          whole: await bytes("train/whole/adapter_model.safetensors"),
          split: await bytes("train/split/adapter_model.safetensors"),
        };
      },
      data,
      opts,
      lora,
    );
    expect(r.stopped).toBe("stopped");
    expect(r.checkpoint).toEqual(["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"]);
    expect(r.state).toEqual({ step: 4, adamStep: 4 });
    expect(r.refused).toBe("CheckpointError"); // no resume: the checkpoint is not clobbered
    expect(r.historyEqual).toBe(true);
    expect(r.wholeFolder).toEqual(["adapter_config.json", "adapter_model.safetensors"]); // the checkpoint is removed at the end
    expect(r.split).toEqual(r.whole);
    // The same run on Node's cpu device and files: the same adapter bytes (the same TypeScript
    // arithmetic in float32/float64, on V8 in both hosts).
    const tmp = mkdtempSync(join(tmpdir(), "qalign-train-"));
    try {
      const model = await loadModel(fixtureDir("llama-untied"), { device: await getDevice("cpu") });
      await train(model, applyLora(model, lora), data, { ...opts, outDir: tmp, files: nodeFiles });
      model.dispose();
      const f = await nodeFiles.open(join(tmp, "adapter_model.safetensors"));
      const node = Array.from(await f.read(0, f.size));
      await f.close();
      expect(r.whole).toEqual(node);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
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
      // Folder operations keep the prefix on the paths they hand back.
      const ck = `out:${join(tmp, "ck")}`;
      const given: string[] = [];
      await files.replaceDir(ck, async (t) => {
        given.push(t);
        await files.writeAtomic(files.join(t, "state.json"), ["{}"]);
      });
      expect(given[0]!.startsWith(`out:${join(tmp, "ck.tmp-")}`)).toBe(true);
      expect(await files.latestDir(ck)).toBe(ck);
      expect(await nodeFiles.list(join(tmp, "ck"))).toEqual(["state.json"]);
      await files.remove(ck);
      expect(await files.latestDir(ck)).toBeNull();
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
