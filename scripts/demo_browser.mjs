// `npm run demo:browser`: serves the demo page (examples/browser/) and qalign's browser entry,
// bundled from src/browser.ts by esbuild (browser_bundle.mjs), at http://localhost:PORT
// (default 8080; a secure context, so the page gets navigator.gpu and the Origin Private File
// System). Open the printed address in Chrome or Edge.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { bundleBrowser } from "./browser_bundle.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const page = join(root, "examples", "browser");
const bundle = await bundleBrowser();
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".json": "application/json" };
/** The page's own files (examples/browser/), by URL path. */
const PAGE_FILES = ["index.html", "main.js"];
const port = Number(process.env.PORT ?? 8080);
createServer((req, res) => {
  const path = new URL(req.url ?? "/", "http://localhost").pathname;
  if (path in bundle) return void res.writeHead(200, { "Content-Type": "text/javascript" }).end(bundle[path]);
  const name = path === "/" ? "index.html" : path.slice(1);
  if (!PAGE_FILES.includes(name)) return void res.writeHead(404).end();
  res.writeHead(200, { "Content-Type": TYPES[extname(name)] }).end(readFileSync(join(page, name)));
}).listen(port, "127.0.0.1", () => process.stdout.write(`qalign demo: http://localhost:${port}/\n`));
