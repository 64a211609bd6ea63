import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { DataError } from "../io/data_error.ts";
import { nodeFiles } from "../io/node_files.ts";
import { PAPER_PROMPTS_URL } from "./paper.ts";
import { FolderSource, SAMPLE_DATA_URL, sampleSource, type DataSource } from "./source.ts";

/**
 * Evaluation data's defaults on Node, where a working directory and a file system give them
 * meaning (the sources themselves are host-neutral: source.ts).
 */

/**
 * The default data folder, `../shared/data/qalign`, resolved against the working directory when
 * qalign is loaded (in the checkout, whose root is the working directory of `npm start` and the
 * tests, the shared folder beside it). Never relative to qalign's own files, which an install
 * puts inside node_modules.
 */
export const SHARED_DATA_DIR = resolve("..", "shared", "data", "qalign");

/** The built-in sample's file on disk (source.ts's SAMPLE_DATA_URL). */
export const SAMPLE_DATA_FILE = fileURLToPath(SAMPLE_DATA_URL);

/** The package's copy of the authors' prompts on disk (paper.ts's PAPER_PROMPTS_URL). */
export const PAPER_PROMPTS_FILE = fileURLToPath(PAPER_PROMPTS_URL);

/**
 * The data to use: `dir` when given ("sample" names the built-in sample; write ./sample for a
 * folder of that name), else the shared folder `../shared/data/qalign` when it exists, else the
 * built-in sample.
 * @throws DataError when `dir` is given and is not a folder.
 */
export async function resolveDataSource(dir?: string): Promise<DataSource> {
  if (dir === "sample") return sampleSource(nodeFiles);
  if (dir !== undefined) {
    if (!existsSync(dir)) throw new DataError(dir, "data folder not found");
    return new FolderSource(resolve(dir), nodeFiles);
  }
  if (existsSync(SHARED_DATA_DIR)) return new FolderSource(SHARED_DATA_DIR, nodeFiles);
  return sampleSource(nodeFiles);
}
