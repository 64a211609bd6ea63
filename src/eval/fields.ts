import { DataError } from "../io/data_error.ts";
import type { Lang } from "./languages.ts";
import type { DataSource } from "./source.ts";

/**
 * The words a k-shot prompt writes before each field, in the language of the item
 * ("前提: ...\n假设: ...\n答案: \"" for Chinese SNLI).
 *
 * Where the data shows them, they come from the data: the SNLI question-translation files
 * (`snli/snli_{lang}10k_train_question.json`, for de es it sw zh) begin every input with the
 * premise, hypothesis and answer labels that question alignment trains on, so evaluation uses
 * exactly those (Swahili keeps the English "Hypothesis" there, and so here). For the other
 * languages and fields the table below is the source; it was written for this project (common
 * dictionary translations) and agrees with the question files where both exist (checked in
 * test/eval_prompt.test.ts).
 */
export interface FieldWords {
  /** SNLI premise. */
  premise: string;
  /** SNLI hypothesis. */
  hypothesis: string;
  /** PAWS "Sentence", followed by " 1" / " 2". */
  sentence: string;
  /** Amazon review text. */
  review: string;
  /** The answer field of the sentiment task (the paper's prompts say "Emotion"). */
  emotion: string;
  /** The answer field of SNLI and PAWS. */
  answer: string;
}

/** The documented fallback table (see {@link FieldWords}). */
export const FIELD_WORDS: Record<Lang, FieldWords> = {
  en: { premise: "Premise", hypothesis: "Hypothesis", sentence: "Sentence", review: "Review", emotion: "Emotion", answer: "Answer" },
  zh: { premise: "前提", hypothesis: "假设", sentence: "句子", review: "评论", emotion: "情感", answer: "答案" },
  de: { premise: "Prämisse", hypothesis: "Hypothese", sentence: "Satz", review: "Rezension", emotion: "Emotion", answer: "Antwort" },
  fr: { premise: "Prémisse", hypothesis: "Hypothèse", sentence: "Phrase", review: "Avis", emotion: "Émotion", answer: "Réponse" },
  es: { premise: "Premisa", hypothesis: "Hipótesis", sentence: "Oración", review: "Reseña", emotion: "Emoción", answer: "Respuesta" },
  it: { premise: "Premessa", hypothesis: "Ipotesi", sentence: "Frase", review: "Recensione", emotion: "Emozione", answer: "Risposta" },
  nl: { premise: "Premisse", hypothesis: "Hypothese", sentence: "Zin", review: "Recensie", emotion: "Emotie", answer: "Antwoord" },
  ja: { premise: "前提", hypothesis: "仮説", sentence: "文", review: "レビュー", emotion: "感情", answer: "答え" },
  ru: { premise: "Посылка", hypothesis: "Гипотеза", sentence: "Предложение", review: "Отзыв", emotion: "Эмоция", answer: "Ответ" },
  sv: { premise: "Premiss", hypothesis: "Hypotes", sentence: "Mening", review: "Recension", emotion: "Känsla", answer: "Svar" },
  sl: { premise: "Premisa", hypothesis: "Hipoteza", sentence: "Stavek", review: "Mnenje", emotion: "Čustvo", answer: "Odgovor" },
  pl: { premise: "Przesłanka", hypothesis: "Hipoteza", sentence: "Zdanie", review: "Recenzja", emotion: "Emocja", answer: "Odpowiedź" },
  bg: { premise: "Предпоставка", hypothesis: "Хипотеза", sentence: "Изречение", review: "Отзив", emotion: "Емоция", answer: "Отговор" },
  no: { premise: "Premiss", hypothesis: "Hypotese", sentence: "Setning", review: "Anmeldelse", emotion: "Følelse", answer: "Svar" },
  ms: { premise: "Premis", hypothesis: "Hipotesis", sentence: "Ayat", review: "Ulasan", emotion: "Emosi", answer: "Jawapan" },
  is: { premise: "Forsenda", hypothesis: "Tilgáta", sentence: "Setning", review: "Umsögn", emotion: "Tilfinning", answer: "Svar" },
  hi: { premise: "आधार", hypothesis: "परिकल्पना", sentence: "वाक्य", review: "समीक्षा", emotion: "भावना", answer: "उत्तर" },
  th: { premise: "ข้อตั้ง", hypothesis: "สมมติฐาน", sentence: "ประโยค", review: "รีวิว", emotion: "อารมณ์", answer: "คำตอบ" },
  sw: { premise: "Nguzo", hypothesis: "Hypothesis", sentence: "Sentensi", review: "Maoni", emotion: "Hisia", answer: "Jibu" },
  bn: { premise: "ভিত্তি", hypothesis: "অনুমান", sentence: "বাক্য", review: "পর্যালোচনা", emotion: "আবেগ", answer: "উত্তর" },
};

/** The SNLI question-translation file of a language (present for de es it sw zh in the release). */
export function questionFile(lang: Lang): string {
  return `snli/snli_${lang}10k_train_question.json`;
}

/**
 * The labels of the first three lines of a question input: `<premise>: ...\n<hypothesis>: ...\n
 * <answer>: "`. Accepts the full-width colon too.
 * @returns null when the text does not have that shape
 */
export function parseQuestionLabels(input: string): { premise: string; hypothesis: string; answer: string } | null {
  const labels = input.split("\n").slice(0, 3).map((line) => /^([^:：\n]+)[:：] ?/.exec(line)?.[1]?.trim());
  const [premise, hypothesis, answer] = labels;
  if (!premise || !hypothesis || !answer) return null;
  return { premise, hypothesis, answer };
}

const memo = new WeakMap<DataSource, Map<Lang, FieldWords>>();

/**
 * The field words for `lang`: the table, with the premise / hypothesis / answer labels taken
 * from the language's question file when the source has one. Memoised per source, as a
 * question file is 10,000 items long and only its first is read.
 * @throws DataError when the question file exists but its first input has no such labels.
 */
export async function fieldWords(source: DataSource, lang: Lang): Promise<FieldWords> {
  let byLang = memo.get(source);
  if (!byLang) memo.set(source, (byLang = new Map()));
  const known = byLang.get(lang);
  if (known) return known;
  let words = { ...FIELD_WORDS[lang] };
  const path = questionFile(lang);
  if (await source.has(path)) {
    const data = await source.readJson(path);
    const input = Array.isArray(data) ? (data[0] as { input?: unknown } | undefined)?.input : undefined;
    const labels = typeof input === "string" ? parseQuestionLabels(input) : null;
    if (!labels) throw new DataError(source.describe(path), 'expected an input "<premise>: ...\\n<hypothesis>: ...\\n<answer>: \\"..."', 0, "input");
    words = { ...words, ...labels };
  }
  byLang.set(lang, words);
  return words;
}
