import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { downloadModel, isHubName } from "../src/model/hub.ts";
import { serve, type Request } from "./helpers/browser.ts";
import { ROOT } from "./helpers/cli.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

/**
 * Hub downloads against a local server on 127.0.0.1 that serves the committed fixture
 * checkpoints in the Hub's URL layout (`/<org>/<name>/resolve/main/<file>`, a missing file
 * answered 404 with X-Error-Code EntryNotFound as the Hub does): nothing reaches the internet.
 */
const tmp = mkdtempSync(join(tmpdir(), "qalign-hub-"));
let hub: { origin: string; requests: Request[]; close: () => Promise<void> };

beforeAll(async () => {
  hub = await serve({}, { "/test-org/llama-untied/resolve/main/": fixtureDir("llama-untied"), "/test-org/qwen2-sharded/resolve/main/": fixtureDir("qwen2-sharded") });
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
    const got = await downloadModel("test-org/qwen2-sharded", { hubUrl: hub.origin, dir, onProgress: (f, bytes, size) => bytes === size && done.set(f, size) });
    expect(got).toBe(dir);
    const files = checkpointFiles("qwen2-sharded");
    expect(files.length).toBeGreaterThan(2); // config, index, shards
    for (const f of files) expect(readFileSync(join(dir, f)).equals(readFileSync(join(fixtureDir("qwen2-sharded"), f))), f).toBe(true);
    for (const f of files) expect(done.get(f), f).toBe(readFileSync(join(dir, f)).byteLength);
    expect(readdirSync(dir).filter((f) => f.endsWith(".part"))).toEqual([]);
  });

  it("resumes a .part file with a range request for the missing bytes only", async () => {
    const dir = join(tmp, "resumed");
    mkdirSync(dir, { recursive: true });
    const weights = readFileSync(join(fixtureDir("llama-untied"), "model.safetensors"));
    const half = Math.floor(weights.byteLength / 2);
    writeFileSync(join(dir, "model.safetensors.part"), weights.subarray(0, half));
    const before = hub.requests.length;
    await downloadModel("test-org/llama-untied", { hubUrl: hub.origin, dir });
    expect(readFileSync(join(dir, "model.safetensors")).equals(weights)).toBe(true);
    const ranges = hub.requests.slice(before).filter((r) => r.path.endsWith("/model.safetensors") && r.range !== "bytes=0-0").map((r) => r.range);
    expect(ranges).toEqual([`bytes=${half}-${weights.byteLength - 1}`]);
  });

  it("keeps complete files: a second download fetches nothing", async () => {
    const dir = join(tmp, "sharded");
    const before = hub.requests.length;
    await downloadModel("test-org/qwen2-sharded", { hubUrl: hub.origin, dir });
    expect(hub.requests.slice(before).filter((r) => r.range !== "bytes=0-0")).toEqual([]);
  });

  it("an unknown repository fails naming it, and leaves no config", async () => {
    const dir = join(tmp, "missing");
    await expect(downloadModel("test-org/nothing-here", { hubUrl: hub.origin, dir })).rejects.toThrow(`${hub.origin}/test-org/nothing-here: has no config.json`);
    expect(existsSync(join(dir, "config.json"))).toBe(false);
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
