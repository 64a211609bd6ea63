import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "./helpers/cli.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

/**
 * `npm run demo:browser` (scripts/demo_browser.mjs) as a user starts it: a checkpoint folder
 * given by --model is served at /models/<its name>/ by byte ranges (the bytes equal the file's)
 * and the page's placeholder names it; a bad PORT or a port in use ends with one line and exit
 * status 1. The server runs as a child process with the package script's command line.
 */

/** Runs the demo server with `env` and `args`; resolves once it prints its address (then `stop` ends it) or exits. */
function demo(args: string[], env: Record<string, string>): Promise<{ status: number | null; stdout: string; stderr: string; stop: () => void }> {
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "scripts", "demo_browser.mjs"), ...args], { cwd: ROOT, env: { ...process.env, ...env } });
  let stdout = "";
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d));
  return new Promise((resolve) => {
    const stop = () => void child.kill();
    child.stdout.on("data", (d: Buffer) => {
      stdout += d;
      if (stdout.split("\n").length > 2) resolve({ status: null, stdout, stderr, stop });
    });
    child.on("exit", (status) => resolve({ status, stdout, stderr, stop }));
  });
}

/** A port that something listens on, and a function that frees it. */
async function takenPort(): Promise<{ port: number; free: () => Promise<void> }> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  return { port: (server.address() as AddressInfo).port, free: () => new Promise((done) => server.close(() => done())) };
}

describe("npm run demo:browser", () => {
  it("serves --model DIR at /models/<name>/ by byte ranges and names it in the page's placeholder", async () => {
    const taken = await takenPort();
    await taken.free(); // a free port, just released
    const dir = fixtureDir("llama-untied");
    const r = await demo(["--model", dir], { PORT: String(taken.port) });
    try {
      expect(r.stdout).toBe(`qalign demo: http://localhost:${taken.port}/\nqalign demo: ${dir} at /models/llama-untied/\n`);
      const origin = `http://localhost:${taken.port}`;
      const page = await (await fetch(`${origin}/`)).text();
      expect(page).toContain('placeholder="Qwen/Qwen2.5-0.5B or /models/llama-untied"');
      const res = await fetch(`${origin}/models/llama-untied/model.safetensors`, { headers: { Range: "bytes=8-99" } });
      expect(res.status).toBe(206);
      expect(new Uint8Array(await res.arrayBuffer())).toEqual(new Uint8Array(readFileSync(join(dir, "model.safetensors")).subarray(8, 100)));
      expect((await fetch(`${origin}/models/llama-untied/%2e%2e/qwen2-tied/config.json`)).status).toBe(404);
    } finally {
      r.stop();
    }
  }, 60_000);

  it("a PORT that is not a port number, or one in use, ends with one line and status 1", async () => {
    const bad = await demo([], { PORT: "abc" });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toBe("qalign demo: PORT=abc is not a port number: an integer in [1, 65535]\n");
    const taken = await takenPort();
    try {
      const busy = await demo([], { PORT: String(taken.port) });
      expect(busy.status).toBe(1);
      expect(busy.stderr).toBe(`qalign demo: port ${taken.port} is in use: set PORT to a free one (PORT=8081 npm run demo:browser)\n`);
    } finally {
      await taken.free();
    }
  }, 60_000);
});
