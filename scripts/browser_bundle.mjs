// qalign's browser entry (src/browser.ts) bundled by esbuild as one ES module for a page: what
// `npm run demo:browser` serves and the browser tests load. platform "browser" fails on any
// `node:` import reachable from the entry, so a bundle that builds has none.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/**
 * @huggingface/hub names its browser build in package.json's `browser` field, which webpack
 * and Vite apply; esbuild ignores it once a package has an `exports` map, so it is named here.
 */
const HUB_BROWSER = join(root, "node_modules", "@huggingface", "hub", "dist", "browser", "index.mjs");

/**
 * The bundle as files to serve side by side: `/qalign.js`, the entry, and the chunks it imports
 * when first needed (code splitting: @huggingface/hub loads only when a Hub id is downloaded).
 * @returns URL path -> JavaScript text
 * @throws esbuild's error naming an unresolvable import.
 */
export async function bundleBrowser() {
  const out = await build({
    entryPoints: { qalign: join(root, "src", "browser.ts") },
    bundle: true,
    splitting: true,
    outdir: "/",
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    logLevel: "silent",
    alias: { "@huggingface/hub": HUB_BROWSER },
  });
  return Object.fromEntries(out.outputFiles.map((f) => [f.path, f.text]));
}
