// What `npm run demo:browser` serves and the browser tests load: qalign's browser entry
// (src/browser.ts) bundled by esbuild for a page (platform "browser" fails on any `node:` import
// reachable from the entry, so a bundle that builds has none), and the demo page's files.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/**
 * The bundle as files to serve side by side: `/qalign.js` (the package's `qalign` under the
 * browser condition), `/qalign-plot.js` (`qalign/plot`: charts, with vega) and the chunks they
 * share or import when first needed (code splitting).
 * @returns URL path -> JavaScript text
 * @throws esbuild's error naming an unresolvable import.
 */
export async function bundleBrowser() {
  const out = await build({
    entryPoints: { qalign: join(root, "src", "browser.ts"), "qalign-plot": join(root, "src", "io", "plot.ts") },
    bundle: true,
    splitting: true,
    outdir: "/",
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    logLevel: "silent",
  });
  return Object.fromEntries(out.outputFiles.map((f) => [f.path, f.text]));
}

/** The built-in sample's question files that the demo page bundles: the paper's training mixture, Chinese and Spanish. */
const SAMPLE_QUESTIONS = ["snli/snli_zh10k_train_question.json", "snli/snli_es10k_train_question.json"];

/** The checkpoint field's placeholder in examples/browser/index.html: a Hub name, which any page can load. */
const PLACEHOLDER = 'placeholder="Qwen/Qwen2.5-0.5B"';

/**
 * The demo page (examples/browser/) under URL folder `base`: index.html, main.js and
 * sample_pairs.json, the question pairs of qalign's built-in sample (src/eval/sample_data.json)
 * in the format `qalign train` reads. The page imports the bundle from /qalign.js.
 * @param models URL paths of the checkpoint folders served beside it, which the checkpoint
 *   field's placeholder then names after the Hub example
 * @returns URL path -> { type, body }
 */
export function demoFiles(base = "/", models = []) {
  const page = (name) => readFileSync(join(root, "examples", "browser", name), "utf8");
  const sample = JSON.parse(readFileSync(join(root, "src", "eval", "sample_data.json"), "utf8")).files;
  const html = page("index.html");
  if (!html.includes(PLACEHOLDER)) throw new Error(`examples/browser/index.html has no ${PLACEHOLDER}`);
  return {
    [base]: { type: "text/html", body: html.replace(PLACEHOLDER, PLACEHOLDER.slice(0, -1) + models.map((m) => ` or ${m}`).join("") + '"') },
    [`${base}main.js`]: { type: "text/javascript", body: page("main.js") },
    [`${base}sample_pairs.json`]: { type: "application/json", body: JSON.stringify(SAMPLE_QUESTIONS.flatMap((f) => sample[f]), null, 1) },
  };
}
