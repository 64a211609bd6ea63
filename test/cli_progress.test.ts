import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { formatDuration, Progress, progressText } from "../src/cli/progress.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { runCli } from "./helpers/cli.ts";

/**
 * Progress on a stderr that is not a terminal (a pipe, a log file): plain lines with counts,
 * rates and ETA; `--quiet` draws none while notices and results still print.
 */
const TINY = await ensureTinyModel();

/** A non-TTY stream that keeps what is written. */
function sink(): { stream: NodeJS.WriteStream; text: () => string } {
  const chunks: string[] = [];
  const w = new Writable({ write: (c, _e, cb) => (chunks.push(String(c)), cb()) });
  return { stream: w as unknown as NodeJS.WriteStream, text: () => chunks.join("") };
}

/** Tensor-data bytes of a safetensors file: its size less the 8-byte length and the JSON header. */
function dataBytes(file: string): number {
  const bytes = readFileSync(file);
  return bytes.length - 8 - Number(bytes.readBigUInt64LE(0));
}

describe("progress text", () => {
  it("gives count, rate and ETA as (total - done) / rate", () => {
    expect(progressText(120, 600, "items", 4, "x")).toBe("120/600 items | 4.00 items/s | ETA 2m00s | x");
    expect(progressText(600, 600, "items", 40)).toBe("600/600 items | 40.0 items/s | done");
    expect(progressText(2e9, 14.5e9, "bytes", 250e6)).toBe("2.00/14.50 GB | 250.0 MB/s | ETA 50s");
    expect(progressText(0, 6, "steps", 0)).toBe("0/6 steps | 0.00 steps/s | ETA -");
    expect(formatDuration(3725)).toBe("1h02m");
  });

  it("prints plain lines on a non-terminal: not the starting report, then each update past the interval, then the last", () => {
    const out = sink();
    const p = new Progress({ stream: out.stream, intervalMs: 0 });
    const count = p.counter("eval en", "items");
    count(0, 3);
    count(2, 3);
    p.say("a notice");
    count(3, 3);
    const lines = out.text().trim().split("\n");
    expect(lines[0]).toMatch(/^eval en: 2\/3 items \| [\d.]+ items\/s \| ETA \S+$/);
    expect(lines[1]).toBe("a notice");
    expect(lines[2]).toMatch(/^eval en: 3\/3 items \| [\d.]+ items\/s \| done$/);
    expect(lines).toHaveLength(3);
  });

  it("with a long interval prints only the first update and the last", () => {
    const out = sink();
    const count = new Progress({ stream: out.stream, intervalMs: 1e9 }).counter("training", "steps");
    for (let s = 1; s <= 5; s++) count(s, 5, `loss ${s}`);
    const lines = out.text().trim().split("\n");
    expect(lines.map((l) => l.split(" | ")[0])).toEqual(["training: 2/5 steps", "training: 5/5 steps"]);
    expect(lines[1]).toMatch(/\| done \| loss 5$/);
  });

  it("--quiet draws nothing but notices", () => {
    const out = sink();
    const p = new Progress({ stream: out.stream, quiet: true, intervalMs: 0 });
    const count = p.counter("eval en", "items");
    count(0, 2);
    count(2, 2);
    p.say("kept");
    expect(out.text()).toBe("kept\n");
  });
});

describe("qalign eval on a piped stderr", () => {
  const args = ["eval", "--model", TINY, "--langs", "en", "--limit", "3", "--shots", "0", "--protocol", "qalign", "--data", "sample", "--device", "cpu"];

  it("shows the model's bytes read and the language's items", () => {
    const r = runCli(args);
    expect(r.status).toBe(0);
    const mb = (dataBytes(join(TINY, "model.safetensors")) / 1e6).toFixed(2);
    expect(r.stderr).toMatch(new RegExp(`^loading tiny-llama: ${mb}/${mb} MB \\| [\\d.]+ MB/s \\| done$`, "m"));
    expect(r.stderr).toMatch(/^eval en: 3\/3 items \| [\d.]+ items\/s \| done$/m);
  });

  it("--quiet leaves the notices and the result lines only", () => {
    const r = runCli([...args, "--quiet"]);
    expect(r.status).toBe(0);
    expect(r.stderr).not.toMatch(/loading|items\/s \|/);
    expect(r.stderr).toMatch(/^en: [\d.]+% of 3 /m);
    expect(r.stdout).toMatch(/^en +3 /m);
  });
});
