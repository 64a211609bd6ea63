import { mkdtempSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { makeDirs } from "../src/io/make_dirs.ts";

describe("makeDirs (mkdir -p, one level at a time)", () => {
  const tmp = mkdtempSync(join(tmpdir(), "qalign-make-dirs-"));

  it("creates every missing level and accepts an existing folder", async () => {
    const deep = join(tmp, "a", "b", "c");
    await makeDirs(deep);
    expect(statSync(deep).isDirectory()).toBe(true);
    await makeDirs(deep); // already there: nothing to do, no error
    await makeDirs(tmp);
  });

  it("refuses a path through a file with ENOTDIR, creating nothing", async () => {
    const file = join(tmp, "a-file");
    writeFileSync(file, "not a folder");
    await expect(makeDirs(join(file, "x", "y"))).rejects.toMatchObject({ code: "ENOTDIR" });
    await expect(makeDirs(file)).rejects.toMatchObject({ code: "ENOTDIR" });
  });

  // Linux: Node 20's mkdir(..., { recursive: true }) never returns here; one level gets ENOENT.
  it("fails at once under /proc, where recursive mkdir loops", async () => {
    await expect(makeDirs("/proc/qalign-out/run")).rejects.toMatchObject({ code: "ENOENT" });
  });
});
