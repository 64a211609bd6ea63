import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { DataError } from "../io/data_error.ts";
import { parseJson } from "../io/json.ts";

/**
 * Where evaluation data comes from: a folder in the layout of the paper's release
 * (`<dir>/snli/snli_en600_test.json`, ...; see ../shared/data/README.md), or the small built-in
 * sample (src/eval/sample_data.json), which maps the same relative paths to the same JSON
 * arrays. Readers address files by those relative paths and never see which one they read.
 */
export interface DataSource {
  /** "folder <dir>" or "built-in sample": for reports. */
  readonly description: string;
  /** How a file is named in messages: its absolute path, or `sample:<path>`. */
  describe(path: string): string;
  has(path: string): boolean;
  /**
   * The JSON content of a file.
   * @throws DataError naming the file when it is missing or not valid JSON.
   */
  readJson(path: string): Promise<unknown>;
}

/**
 * The default data folder, `../shared/data/qalign`, resolved against the working directory when
 * qalign is loaded (in the checkout, whose root is the working directory of `npm start` and the
 * tests, the shared folder beside it). Never relative to qalign's own files, which an install
 * puts inside node_modules.
 */
export const SHARED_DATA_DIR = resolve("..", "shared", "data", "qalign");

/** A folder in the release's layout. */
export class FolderSource implements DataSource {
  readonly description: string;
  constructor(readonly dir: string) {
    this.description = `folder ${dir}`;
  }
  describe(path: string): string {
    return join(this.dir, path);
  }
  has(path: string): boolean {
    return existsSync(this.describe(path));
  }
  async readJson(path: string): Promise<unknown> {
    const file = this.describe(path);
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch {
      throw new DataError(file, "missing file");
    }
    try {
      return parseJson(text);
    } catch (e) {
      throw new DataError(file, `not valid JSON: ${(e as Error).message}`);
    }
  }
}

/** A source that remembers the path of every file read through it (for a results file's provenance). */
export class RecordingSource implements DataSource {
  readonly description: string;
  /** Relative paths read, in first-read order. */
  readonly read = new Set<string>();
  constructor(readonly inner: DataSource) {
    this.description = inner.description;
  }
  describe(path: string): string {
    return this.inner.describe(path);
  }
  has(path: string): boolean {
    return this.inner.has(path);
  }
  readJson(path: string): Promise<unknown> {
    this.read.add(path);
    return this.inner.readJson(path);
  }
}

/** In-memory files: the built-in sample, or hand-made data in tests. */
export class MemorySource implements DataSource {
  constructor(
    private readonly files: Readonly<Record<string, unknown>>,
    readonly description = "in-memory data",
  ) {}
  describe(path: string): string {
    return `sample:${path}`;
  }
  has(path: string): boolean {
    return Object.hasOwn(this.files, path);
  }
  async readJson(path: string): Promise<unknown> {
    if (!this.has(path)) throw new DataError(this.describe(path), "missing file");
    return this.files[path];
  }
}

/** The built-in sample's file. */
export const SAMPLE_DATA_FILE = join(dirname(fileURLToPath(import.meta.url)), "sample_data.json");

/**
 * The built-in sample: a few items per language for the three tasks in all 20 languages, and
 * question-translation pairs for de es it sw zh, written for this project (original texts, not
 * taken from the released data). Enough to run the whole pipeline offline; far too small for
 * meaningful accuracy.
 */
export async function sampleSource(): Promise<MemorySource> {
  const json = JSON.parse(await readFile(SAMPLE_DATA_FILE, "utf8")) as { files: Record<string, unknown> };
  return new MemorySource(json.files, "built-in sample (src/eval/sample_data.json)");
}

/**
 * The data to use: `dir` when given ("sample" names the built-in sample; write ./sample for a
 * folder of that name), else the shared folder `../shared/data/qalign` when it exists, else the
 * built-in sample.
 * @throws DataError when `dir` is given and is not a folder.
 */
export async function resolveDataSource(dir?: string): Promise<DataSource> {
  if (dir === "sample") return sampleSource();
  if (dir !== undefined) {
    if (!existsSync(dir)) throw new DataError(dir, "data folder not found");
    return new FolderSource(resolve(dir));
  }
  if (existsSync(SHARED_DATA_DIR)) return new FolderSource(SHARED_DATA_DIR);
  return sampleSource();
}
