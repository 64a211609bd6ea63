import { DataError } from "../io/data_error.ts";
import { hostFiles, hostPath, joinSlash, type Files } from "../io/files.ts";
import { parseJson } from "../io/json.ts";

/**
 * Where evaluation data comes from: a folder in the layout of the paper's release
 * (`<dir>/snli/snli_en600_test.json`, ...; see ../shared/data/README.md), or the small built-in
 * sample (src/eval/sample_data.json), which maps the same relative paths to the same JSON
 * arrays. Readers address files by those relative paths and never see which one they read.
 * The Node defaults (the shared data folder, `--data`) are default_data.ts's.
 */
export interface DataSource {
  /** "folder <dir>" or "built-in sample": for reports. */
  readonly description: string;
  /** How a file is named in messages: its absolute path, or `sample:<path>`. */
  describe(path: string): string;
  has(path: string): Promise<boolean>;
  /**
   * The JSON content of a file.
   * @throws DataError naming the file when it is missing or not valid JSON.
   */
  readJson(path: string): Promise<unknown>;
}

/**
 * A folder in the release's layout, read through `files` (default: the host's, io/files.ts).
 * Its files are named `files.join(dir, path)`, or without `files` "<dir>/<path>" (which every
 * host's files read, Node's on Windows too).
 */
export class FolderSource implements DataSource {
  readonly description: string;
  constructor(
    readonly dir: string,
    private readonly files?: Files,
  ) {
    this.description = `folder ${dir}`;
  }
  describe(path: string): string {
    return (this.files?.join ?? joinSlash)(this.dir, path);
  }
  async has(path: string): Promise<boolean> {
    return (this.files ?? (await hostFiles())).exists(this.describe(path));
  }
  async readJson(path: string): Promise<unknown> {
    const file = this.describe(path);
    let text: string;
    try {
      text = await (this.files ?? (await hostFiles())).readText(file);
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
  has(path: string): Promise<boolean> {
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
  async has(path: string): Promise<boolean> {
    return Object.hasOwn(this.files, path);
  }
  async readJson(path: string): Promise<unknown> {
    if (!Object.hasOwn(this.files, path)) throw new DataError(this.describe(path), "missing file");
    return this.files[path];
  }
}

/** The built-in sample's file, beside this module ({@link hostPath} gives its path); typed as the global URL, as paper.ts's PAPER_PROMPTS_URL. */
export const SAMPLE_DATA_URL: URL = new URL("./sample_data.json", import.meta.url);

/**
 * The built-in sample: a few items per language for the three tasks in all 20 languages, and
 * question-translation pairs for de es it sw zh, written for this project (original texts, not
 * taken from the released data). Enough to run the whole pipeline offline; far too small for
 * meaningful accuracy.
 * @param files how to read it (default: the host's, io/files.ts)
 */
export async function sampleSource(files?: Files): Promise<MemorySource> {
  files ??= await hostFiles();
  const json = JSON.parse(await files.readText(await hostPath(SAMPLE_DATA_URL))) as { files: Record<string, unknown> };
  return new MemorySource(json.files, "built-in sample (src/eval/sample_data.json)");
}
