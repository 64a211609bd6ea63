/**
 * The 20 evaluation languages of the paper (Zhang et al. 2024), in the order of the released
 * data's README.
 */
export const LANGUAGES = ["en", "zh", "de", "fr", "es", "it", "nl", "ja", "ru", "sv", "sl", "pl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn"] as const;

/** An ISO 639-1 code of one of the 20 languages. */
export type Lang = (typeof LANGUAGES)[number];

/**
 * English names, as the question files write them in their instruction line
 * ("Translate the input from Chinese to English:").
 */
export const LANGUAGE_NAMES: Record<Lang, string> = {
  en: "English",
  zh: "Chinese",
  de: "German",
  fr: "French",
  es: "Spanish",
  it: "Italian",
  nl: "Dutch",
  ja: "Japanese",
  ru: "Russian",
  sv: "Swedish",
  sl: "Slovenian",
  pl: "Polish",
  bg: "Bulgarian",
  no: "Norwegian",
  ms: "Malay",
  is: "Icelandic",
  hi: "Hindi",
  th: "Thai",
  sw: "Swahili",
  bn: "Bengali",
};

/** Whether `code` is one of the 20 languages. */
export function isLang(code: string): code is Lang {
  return (LANGUAGES as readonly string[]).includes(code);
}

/**
 * Parses a language list: "all" or comma-separated codes ("en,zh,sw"), duplicates removed, in
 * the order given.
 * @throws RangeError naming an unknown code and listing the known ones.
 */
export function parseLangs(text: string): Lang[] {
  if (text.trim() === "all") return [...LANGUAGES];
  const codes = [...new Set(text.split(",").map((s) => s.trim()).filter((s) => s !== ""))];
  const bad = codes.find((c) => !isLang(c));
  if (bad !== undefined || codes.length === 0) {
    throw new RangeError(`unknown language "${bad ?? text}"; use "all" or codes from: ${LANGUAGES.join(" ")}`);
  }
  return codes as Lang[];
}
