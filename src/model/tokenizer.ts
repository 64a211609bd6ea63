/**
 * The tokenizer of a checkpoint folder (`tokenizer.json` + `tokenizer_config.json`), run by
 * `@huggingface/tokenizers` (a JS port of HF tokenizers: BPE, byte-level and sentencepiece-style
 * vocabularies). This wrapper adds what the rest of qalign needs: ids as plain arrays, bos/eos
 * ids, and how the vocabulary marks a leading space, for constrained decoding.
 */
import { hostFiles, type Files } from "../io/files.ts";
import { parseJson } from "../io/json.ts";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { CheckpointError } from "./safetensors.ts";

/**
 * How a vocabulary writes a leading space inside tokens: sentencepiece's "▁" (U+2581; Llama 2,
 * Mistral, Gemma), byte-level BPE's "Ġ" (U+0120, the GPT-2 byte map of 0x20; Qwen, Llama 3),
 * or null when neither is used.
 */
export type SpaceMarker = "▁" | "Ġ" | null;

async function readJson(file: string, files: Files): Promise<Record<string, unknown>> {
  let raw: unknown;
  try {
    raw = JSON.parse(await files.readText(file));
  } catch (e) {
    throw new CheckpointError(file, `cannot read as JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new CheckpointError(file, "must hold a JSON object");
  }
  return raw as Record<string, unknown>;
}

/** The normalizer, pre-tokenizer and decoder steps of a `tokenizer.json`, flattened. */
function pipelineSteps(json: Record<string, unknown>): Record<string, unknown>[] {
  const steps: Record<string, unknown>[] = [];
  const visit = (node: unknown): void => {
    if (typeof node !== "object" || node === null) return;
    const step = node as Record<string, unknown>;
    steps.push(step);
    for (const key of ["normalizers", "pretokenizers", "decoders"]) {
      if (Array.isArray(step[key])) (step[key] as unknown[]).forEach(visit);
    }
  };
  for (const key of ["normalizer", "pre_tokenizer", "decoder"]) visit(json[key]);
  return steps;
}

/**
 * Finds the space marker from the pipeline: a `ByteLevel` step means "Ġ"; a `Metaspace` step
 * (newer sentencepiece exports) or a `Replace` of " " by "▁" (Llama 2 / Mistral legacy) means "▁".
 */
function spaceMarkerOf(json: Record<string, unknown>): SpaceMarker {
  const steps = pipelineSteps(json);
  if (steps.some((s) => s["type"] === "ByteLevel")) return "Ġ";
  const sentencepiece = steps.some(
    (s) =>
      (s["type"] === "Metaspace" && (s["replacement"] ?? "▁") === "▁") ||
      (s["type"] === "Replace" && s["content"] === "▁"),
  );
  return sentencepiece ? "▁" : null;
}

/** A special token in `tokenizer_config.json`: a string, `{content}` (AddedToken), or null. */
function tokenContent(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (typeof v === "object" && v !== null && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return null;
}

/** A loaded tokenizer; see {@link loadTokenizer}. */
export class Tokenizer {
  /**
   * One more than the largest id, added tokens included (HF `len(tokenizer)` when ids are
   * dense). May be below `config.vocab_size`, which is often padded (Qwen: 151669 vs 151936).
   */
  readonly vocabSize: number;
  /** From `tokenizer_config.json` `bos_token`; null when unset (Qwen). */
  readonly bosId: number | null;
  /** From `tokenizer_config.json` `eos_token`; null when unset. */
  readonly eosId: number | null;
  readonly spaceMarker: SpaceMarker;
  /** The BPE model falls back to byte tokens `<0x00>`..`<0xFF>` for unknown characters. */
  readonly byteFallback: boolean;

  constructor(
    private readonly hf: HfTokenizer,
    json: Record<string, unknown>,
    config: Record<string, unknown>,
    file: string,
  ) {
    let max = -1;
    for (const id of hf.get_vocab(true).values()) max = Math.max(max, id);
    this.vocabSize = max + 1;
    const idOf = (field: string): number | null => {
      const content = tokenContent(config[field]);
      if (content === null) return null;
      const id = hf.token_to_id(content);
      if (id === undefined) throw new CheckpointError(file, `${field} "${content}" is not in the vocabulary`);
      return id;
    };
    this.bosId = idOf("bos_token");
    this.eosId = idOf("eos_token");
    this.spaceMarker = spaceMarkerOf(json);
    this.byteFallback = (json["model"] as { byte_fallback?: unknown } | undefined)?.byte_fallback === true;
  }

  /**
   * Token ids of `text`. With `addSpecialTokens` (default true) the tokenizer's post-processor
   * adds its template tokens, e.g. `<s>` for Llama 2 / Mistral, nothing for Qwen.
   */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    return this.hf.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
  }

  /** The text of `ids`; special tokens are kept unless `skipSpecialTokens`. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    return this.hf.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  /** The id of a vocabulary entry (in vocabulary form, e.g. "▁the" or "Ġthe"), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /** The vocabulary entry of `id`, or undefined when no token has it. */
  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }
}

/**
 * Checks that every id `tokenizer` can produce has a row in a checkpoint's embedding:
 * `tokenizer.vocabSize <= vocabSize` (config.json `vocab_size`). A larger vocab_size is fine:
 * checkpoints often pad their embedding (Qwen: ids up to 151668, vocab_size 151936). The check
 * belongs where a model and its tokenizer meet, because the webgpu embedding cannot report an
 * id outside [0, vocab_size) (it reads a zero row) and the model would silently emit garbage.
 * @param files the tokenizer's and the config's file names, for the message
 * @throws CheckpointError naming both files and both sizes.
 */
export function assertTokenizerFits(tokenizer: Tokenizer, vocabSize: number, files: { tokenizer: string; config: string }): void {
  if (tokenizer.vocabSize <= vocabSize) return;
  throw new CheckpointError(
    files.tokenizer,
    `has ids up to ${tokenizer.vocabSize - 1} but ${files.config} vocab_size is ${vocabSize}: the tokenizer does not belong to this checkpoint`,
  );
}

/** The `vocab_size` of a config.json, or null when the file is absent, not JSON, or lacks a positive integer there. */
async function configVocabSize(file: string, files: Files): Promise<number | null> {
  if (!(await files.exists(file))) return null;
  try {
    const v = (parseJson(await files.readText(file)) as { vocab_size?: unknown } | null)?.vocab_size;
    return typeof v === "number" && Number.isSafeInteger(v) && v > 0 ? v : null;
  } catch {
    return null; // loadModel reports a malformed config.json, naming it
  }
}

/**
 * Loads `<dir>/tokenizer.json` with `<dir>/tokenizer_config.json` (optional; without it bos/eos
 * are null). When `<dir>` is a checkpoint (its config.json has a vocab_size), also checks that
 * the tokenizer's ids fit that vocabulary (see assertTokenizerFits).
 * @returns null when the folder has no `tokenizer.json`
 * @throws CheckpointError naming the file when a file is not JSON, the tokenizer library
 *   rejects it, a configured bos/eos token is not in the vocabulary, or the tokenizer has ids at
 *   or above config.json's vocab_size.
 * @param files where `dir` is (default: the host's, io/files.ts)
 */
export async function loadTokenizer(dir: string, files?: Files): Promise<Tokenizer | null> {
  files ??= await hostFiles();
  const file = files.join(dir, "tokenizer.json");
  if (!(await files.exists(file))) return null;
  const json = await readJson(file, files);
  const configFile = files.join(dir, "tokenizer_config.json");
  const config = (await files.exists(configFile)) ? await readJson(configFile, files) : {};
  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(json, config);
  } catch (e) {
    throw new CheckpointError(file, `unsupported tokenizer: ${(e as Error).message}`);
  }
  const tokenizer = new Tokenizer(hf, json, config, configFile);
  const modelConfig = files.join(dir, "config.json");
  const vocabSize = await configVocabSize(modelConfig, files);
  if (vocabSize !== null) assertTokenizerFits(tokenizer, vocabSize, { tokenizer: file, config: modelConfig });
  return tokenizer;
}
