import { spawn } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cpuDevice } from "../src/kernels/devices.ts";
import { DOWNLOAD_MARKER, downloadCheckpoint } from "../src/model/hub.ts";
import { fetchClient } from "../src/model/hub_fetch.ts";
import { downloadModel, isHubName, nodeStore } from "../src/model/hub_node.ts";
import { loadModel } from "../src/model/load.ts";
import { noGrad } from "../src/tensor/autograd.ts";
import { tensor } from "../src/tensor/ops/create.ts";
import { serve, type Request } from "./helpers/browser.ts";
import { ROOT } from "./helpers/cli.ts";
import { fixtureDir, loadExpected, maxAbs, maxDiffAtTokens } from "./helpers/fixtures.ts";

/**
 * Hub downloads against a local server on 127.0.0.1 that serves the committed fixture
 * checkpoints in the Hub's URL layout (`/<org>/<name>/resolve/main/<file>`, a missing file
 * answered 404 with X-Error-Code EntryNotFound as the Hub does): nothing reaches the internet.
 */
const tmp = mkdtempSync(join(tmpdir(), "qalign-hub-"));
let hub: { origin: string; requests: Request[]; close: () => Promise<void> };

/** Where the server keeps a fixture: `/test-org/<name>/resolve/main/`, under several names so that each test downloads afresh. */
const resolveMain = (repo: string) => `/test-org/${repo}/resolve/main/`;
const WEIGHTS_DROPPED = `${resolveMain("llama-dropped")}model.safetensors`;

beforeAll(async () => {
  hub = await serve(
    // A gated repository, answered as the Hub answers an anonymous request for one.
    { [`${resolveMain("gated")}config.json`]: { status: 401, type: "application/json", body: JSON.stringify({ error: "Access to model test-org/gated is restricted." }) } },
    {
      [resolveMain("llama-untied")]: fixtureDir("llama-untied"),
      [resolveMain("llama-library")]: fixtureDir("llama-untied"),
      [resolveMain("llama-dropped")]: fixtureDir("llama-untied"),
      [resolveMain("llama-aborted")]: fixtureDir("llama-untied"),
      [resolveMain("qwen2-sharded")]: fixtureDir("qwen2-sharded"),
      [resolveMain("llama-own-store")]: fixtureDir("llama-untied"),
    },
    { dropOnce: [WEIGHTS_DROPPED] },
  );
});
afterAll(async () => {
  await hub.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** The checkpoint files of a fixture folder (what a download must bring: all but the golden file). */
const checkpointFiles = (name: string) => readdirSync(fixtureDir(name)).filter((f) => f !== "expected.safetensors");

describe("downloadModel", () => {
  it("fetches config.json, the index and every shard of a sharded checkpoint, byte for byte, with progress", async () => {
    const dir = join(tmp, "sharded");
    const done = new Map<string, number>();
    const got = await downloadModel("test-org/qwen2-sharded", { endpoint: hub.origin, dir, onDownload: (f, bytes, size) => bytes === size && done.set(f, size) });
    expect(got).toBe(dir);
    const files = checkpointFiles("qwen2-sharded");
    expect(files.length).toBeGreaterThan(2); // config, index, shards
    for (const f of files) expect(readFileSync(join(dir, f)).equals(readFileSync(join(fixtureDir("qwen2-sharded"), f))), f).toBe(true);
    for (const f of files) expect(done.get(f), f).toBe(readFileSync(join(dir, f)).byteLength);
    expect(readdirSync(dir).filter((f) => f.endsWith(".part"))).toEqual([]);
  });

  it("an aborted download resumes from its bytes with a range request for the rest only", async () => {
    const dir = join(tmp, "aborted");
    const weights = readFileSync(join(fixtureDir("llama-untied"), "model.safetensors"));
    const stop = new AbortController();
    // Abort once some weight bytes are on disk (the server sends them in 64 KiB writes or less).
    const aborted = downloadModel("test-org/llama-aborted", {
      endpoint: hub.origin,
      dir,
      signal: stop.signal,
      onDownload: (f, bytes) => void (f === "model.safetensors" && bytes > 0 && stop.abort()),
    });
    await expect(aborted).rejects.toMatchObject({ name: "AbortError" });
    const have = readFileSync(join(dir, "model.safetensors.part")).byteLength;
    expect(have).toBeGreaterThan(0);
    expect(have).toBeLessThan(weights.byteLength);
    expect(weights.subarray(0, have).equals(readFileSync(join(dir, "model.safetensors.part")))).toBe(true);
    const before = hub.requests.length;
    await downloadModel("test-org/llama-aborted", { endpoint: hub.origin, dir });
    expect(readFileSync(join(dir, "model.safetensors")).equals(weights)).toBe(true);
    const ranges = hub.requests.slice(before).filter((r) => r.path.endsWith("/model.safetensors") && r.range !== "bytes=0-0").map((r) => r.range);
    expect(ranges).toEqual([`bytes=${have}-${weights.byteLength - 1}`]);
    expect(readdirSync(dir).filter((f) => f.includes(".part"))).toEqual([]);
  });

  it("starts a .part over when its recorded ETag is not the Hub's (another version of the file)", async () => {
    const dir = join(tmp, "stale");
    mkdirSync(dir, { recursive: true });
    const weights = readFileSync(join(fixtureDir("llama-untied"), "model.safetensors"));
    writeFileSync(join(dir, "model.safetensors.part"), new Uint8Array(100).fill(7));
    writeFileSync(join(dir, "model.safetensors.part.json"), JSON.stringify({ etag: '"an older version"', size: weights.byteLength }));
    const before = hub.requests.length;
    await downloadModel("test-org/llama-untied", { endpoint: hub.origin, dir });
    expect(readFileSync(join(dir, "model.safetensors")).equals(weights)).toBe(true);
    const ranges = hub.requests.slice(before).filter((r) => r.path.endsWith("/model.safetensors") && r.range !== "bytes=0-0").map((r) => r.range);
    expect(ranges).toEqual([null]); // the whole file, from its first byte
  });

  it("a finished download is not asked for again: a second call makes no request", async () => {
    const dir = join(tmp, "sharded");
    expect(existsSync(join(dir, DOWNLOAD_MARKER))).toBe(true);
    const before = hub.requests.length;
    await downloadModel("test-org/qwen2-sharded", { endpoint: hub.origin, dir });
    expect(hub.requests.slice(before)).toEqual([]);
  });

  it("an unknown repository fails naming it and the missing file, and leaves no config", async () => {
    const dir = join(tmp, "missing");
    await expect(downloadModel("test-org/nothing-here", { endpoint: hub.origin, dir })).rejects.toThrow(`${hub.origin}/test-org/nothing-here: has no config.json (HTTP 404)`);
    expect(existsSync(join(dir, "config.json"))).toBe(false);
  });

  it("a gated repository fails naming it, the file and the HTTP status, with what to do", async () => {
    await expect(downloadModel("test-org/gated", { endpoint: hub.origin, dir: join(tmp, "gated") })).rejects.toThrow(
      `${hub.origin}/test-org/gated: config.json: HTTP 401: the repository is private or gated, or does not exist: set HF_TOKEN`,
    );
  });

  it("an unreachable Hub fails naming the repository and the file", async () => {
    // A port nothing listens on (the server's own, once closed, is not reused this soon).
    const closed = await serve({});
    await closed.close();
    await expect(downloadModel("test-org/llama-untied", { endpoint: closed.origin, dir: join(tmp, "unreachable") })).rejects.toThrow(`${closed.origin}/test-org/llama-untied: config.json: cannot reach the Hub`);
  });

  it("a web server that is not a Hub endpoint fails naming the URL and the headers it left out, on Node's client and the page's", async () => {
    // As `python3 -m http.server` answers: the whole file (HTTP 200, the Range header ignored),
    // Content-Length and Last-Modified, no ETag; /ranged/ honours the range but sends no ETag.
    const config = readFileSync(join(fixtureDir("llama-untied"), "config.json"));
    const server = createServer((req, res) => {
      const ranged = req.url!.startsWith("/ranged/") && req.headers.range === "bytes=0-0";
      res.writeHead(ranged ? 206 : 200, { "Content-Length": String(ranged ? 1 : config.length), "Last-Modified": new Date(0).toUTCString(), ...(ranged ? { "Content-Range": `bytes 0-0/${config.length}` } : {}) });
      res.end(ranged ? config.subarray(0, 1) : config);
    });
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const url = `${origin}/plain/model/resolve/main/config.json`;
      const plain = `${origin}/plain/model: config.json: ${url} answered HTTP 200 with no Content-Range (the file's size, in answer to Range: bytes=0-0) and no ETag or X-Linked-ETag (the file's version, which a resumed download checks): the server was reached, but it does not answer as a Hugging Face Hub endpoint (or mirror) does`;
      await expect(downloadModel("plain/model", { endpoint: origin, dir: join(tmp, "plain-node") })).rejects.toThrow(plain);
      await expect(downloadCheckpoint("plain/model", { ...nodeStore(), folder: () => join(tmp, "plain-page") }, { endpoint: origin, client: fetchClient })).rejects.toThrow(plain);
      const ranged = `${origin}/ranged/model: config.json: ${origin}/ranged/model/resolve/main/config.json answered HTTP 206 with no ETag or X-Linked-ETag (the file's version, which a resumed download checks): the server was reached, but it does not answer as a Hugging Face Hub endpoint (or mirror) does`;
      await expect(downloadModel("ranged/model", { endpoint: origin, dir: join(tmp, "ranged-node") })).rejects.toThrow(ranged);
      await expect(downloadCheckpoint("ranged/model", { ...nodeStore(), folder: () => join(tmp, "ranged-page") }, { endpoint: origin, client: fetchClient })).rejects.toThrow(ranged);
    } finally {
      await new Promise((done) => server.close(done));
    }
  });

  it("tells Hub names from local folders", () => {
    expect(isHubName("Qwen/Qwen2.5-0.5B")).toBe(true);
    expect(isHubName("test/fixtures")).toBe(false); // an existing folder wins
    expect(isHubName("./models/x")).toBe(false);
    expect(isHubName("/abs/path")).toBe(false);
  });
});

/** Runs `qalign <args>` (tsx) without blocking this process, whose Hub server must answer it. */
async function qalign(args: string[], env: Record<string, string>): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "src", "cli", "main.ts"), ...args], { cwd: ROOT, env: { ...process.env, ...env } });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const status = await new Promise<number | null>((resolve) => child.on("close", resolve));
  return { status, stdout, stderr };
}

/** Logits of `model` (cpu) on a fixture's golden inputs, with the largest difference from the golden logits and their scale. */
async function goldenCheck(model: Awaited<ReturnType<typeof loadModel>>, name: string): Promise<{ diff: number; scale: number; logits: Float32Array }> {
  const exp = await loadExpected(name);
  const ids = tensor(Int32Array.from(exp.inputIds.flat()), { device: cpuDevice(), shape: [exp.inputIds.length, exp.inputIds[0]!.length] });
  const logits = (await noGrad(() => model.forward(ids, { attentionMask: exp.attentionMask })).logits!.data()) as Float32Array;
  model.dispose();
  return { diff: maxDiffAtTokens(logits, exp.logits, exp.attentionMask, exp.V), scale: maxAbs(exp.logits), logits };
}

describe('loadModel("org/name")', () => {
  const cache = join(tmp, "library-cache");
  const withCache = async <T>(fn: () => Promise<T>): Promise<T> => {
    const saved = process.env["QALIGN_CACHE"];
    process.env["QALIGN_CACHE"] = cache;
    try {
      return await fn();
    } finally {
      if (saved === undefined) delete process.env["QALIGN_CACHE"];
      else process.env["QALIGN_CACHE"] = saved;
    }
  };

  it("downloads into the cache folder, its logits equal the golden file, and a second call makes no request", async () => {
    const before = hub.requests.length;
    const files = new Set<string>();
    const first = await withCache(() => loadModel("test-org/llama-library", { endpoint: hub.origin, device: cpuDevice(), onDownload: (f) => void files.add(f) }));
    expect(hub.requests.length).toBeGreaterThan(before);
    expect([...files].sort()).toEqual(["config.json", "model.safetensors"]);
    const local = join(cache, "hub", "test-org--llama-library", "main");
    expect(readFileSync(join(local, "model.safetensors")).equals(readFileSync(join(fixtureDir("llama-untied"), "model.safetensors")))).toBe(true);
    // As test/model_golden.test.ts: f32 through two small layers on cpu, 1e-4 of the logit scale.
    const a = await goldenCheck(first, "llama-untied");
    expect(a.diff).toBeLessThanOrEqual(1e-4 * a.scale);
    const after = hub.requests.length;
    const again = await withCache(() => loadModel("test-org/llama-library", { endpoint: hub.origin, device: cpuDevice() }));
    expect(hub.requests.slice(after)).toEqual([]);
    expect((await goldenCheck(again, "llama-untied")).logits).toEqual(a.logits);
  });

  it("a connection dropped mid-file is resumed from its bytes, and the model loads identically", async () => {
    const weights = readFileSync(join(fixtureDir("llama-untied"), "model.safetensors"));
    const before = hub.requests.length;
    const model = await withCache(() => loadModel("test-org/llama-dropped", { endpoint: hub.origin, device: cpuDevice() }));
    const gets = hub.requests.slice(before).filter((r) => r.path === WEIGHTS_DROPPED && r.range !== "bytes=0-0").map((r) => r.range);
    // The first request (the whole file) was cut after at most half its bytes; the second asked
    // for the rest only, from the bytes that had arrived.
    expect(gets).toHaveLength(2);
    expect(gets[0]).toBeNull();
    const from = Number(/^bytes=(\d+)-(\d+)$/.exec(gets[1]!)?.[1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(weights.byteLength / 2);
    expect(gets[1]).toBe(`bytes=${from}-${weights.byteLength - 1}`);
    const local = join(cache, "hub", "test-org--llama-dropped", "main", "model.safetensors");
    expect(readFileSync(local).equals(weights)).toBe(true);
    const r = await goldenCheck(model, "llama-untied");
    expect(r.diff).toBeLessThanOrEqual(1e-4 * r.scale);
  });

  it("a store of one's own (nodeStore, as transformers' cache_dir) holds the download", async () => {
    const own = join(tmp, "own-store");
    const r = await goldenCheck(await loadModel("test-org/llama-own-store", { endpoint: hub.origin, device: cpuDevice(), store: nodeStore(own) }), "llama-untied");
    expect(r.diff).toBeLessThanOrEqual(1e-4 * r.scale);
    const dir = join(own, "test-org--llama-own-store", "main");
    expect(readdirSync(dir).sort()).toEqual([DOWNLOAD_MARKER, "config.json", "model.safetensors"]);
    const marker = JSON.parse(readFileSync(join(dir, DOWNLOAD_MARKER), "utf8")) as { files: Record<string, { size: number }> };
    expect(marker.files["model.safetensors"]!.size).toBe(readFileSync(join(fixtureDir("llama-untied"), "model.safetensors")).byteLength);
  });

  it("a local folder written org/name is loaded from the folder, with no request", async () => {
    // A relative folder "test-org/llama-untied" (what a Hub id looks like) in a working directory of its own.
    const cwd = process.cwd();
    const work = join(tmp, "cwd");
    mkdirSync(join(work, "test-org"), { recursive: true });
    cpSync(fixtureDir("llama-untied"), join(work, "test-org", "llama-untied"), { recursive: true });
    const before = hub.requests.length;
    process.chdir(work);
    try {
      const r = await goldenCheck(await loadModel("test-org/llama-untied", { endpoint: hub.origin, device: cpuDevice() }), "llama-untied");
      expect(r.diff).toBeLessThanOrEqual(1e-4 * r.scale);
    } finally {
      process.chdir(cwd);
    }
    expect(hub.requests.slice(before)).toEqual([]);
  });
});

describe("qalign --model org/name", () => {
  it("downloads into $QALIGN_CACHE and prints the same logits as the local folder", async () => {
    const cache = join(tmp, "cache");
    const args = ["logits", "--ids", "1,5,9", "--device", "cpu"];
    const r = await qalign([...args, "--model", "test-org/llama-untied"], { HF_ENDPOINT: hub.origin, QALIGN_CACHE: cache });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain("qalign: test-org/llama-untied: config.json");
    const local = join(cache, "hub", "test-org--llama-untied", "main");
    expect(readFileSync(join(local, "model.safetensors")).equals(readFileSync(join(fixtureDir("llama-untied"), "model.safetensors")))).toBe(true);
    const fromFolder = await qalign([...args, "--model", fixtureDir("llama-untied")], {});
    expect(fromFolder.status, fromFolder.stderr).toBe(0);
    expect(r.stdout).toBe(fromFolder.stdout);
    expect((JSON.parse(r.stdout) as { logits: number[][] }).logits).toHaveLength(3);
  });
});
