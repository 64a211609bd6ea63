// `npm run demo:browser [-- --model DIR ...]`: serves the demo page (examples/browser/) and
// qalign's browser entry, bundled from src/browser.ts by esbuild (both from browser_bundle.mjs),
// at http://localhost:PORT (default 8080; a secure context, so the page gets navigator.gpu and
// the Origin Private File System), and each checkpoint folder given by --model at
// /models/<folder's name>/ (by byte ranges, as the page loads a checkpoint; by default the tiny
// checkpoint when `qalign` has generated it). Open the printed address in Chrome or Edge.
// Run by tsx (package.json), for the tiny checkpoint's folder from src/model/tiny.ts.
import { existsSync } from "node:fs";
import { createServer } from "node:http";
import { basename, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { generatedTinyModel } from "../src/model/tiny.ts";
import { bundleBrowser, demoFiles } from "./browser_bundle.mjs";
import { fileAnswer } from "./serve_files.mjs";

/** Prints one line on stderr and exits 1: the demo's only way to fail on bad input. */
function fail(line) {
  process.stderr.write(`qalign demo: ${line}\n`);
  process.exit(1);
}

let args;
try {
  args = parseArgs({ options: { model: { type: "string", multiple: true } } }).values;
} catch (e) {
  fail(`${e.message}; usage: npm run demo:browser [-- --model DIR ...]`);
}
const portText = process.env.PORT ?? "8080";
const port = /^\d+$/.test(portText) ? Number(portText) : NaN;
if (!(port >= 1 && port <= 65535)) fail(`PORT=${portText} is not a port number: an integer in [1, 65535]`);

// URL prefix -> checkpoint folder.
const models = new Map();
const tiny = generatedTinyModel();
for (const dir of args.model ?? (tiny === null ? [] : [tiny])) {
  if (!existsSync(join(dir, "config.json"))) fail(`--model ${dir}: no config.json there, so not a checkpoint folder in Hugging Face layout`);
  const prefix = `/models/${basename(resolve(dir))}/`;
  if (models.has(prefix)) fail(`--model ${dir}: another folder named ${basename(resolve(dir))} is already served at ${prefix}`);
  models.set(prefix, dir);
}
const urls = [...models.keys()].map((p) => p.slice(0, -1));

const served = { ...demoFiles("/", urls) };
for (const [path, body] of Object.entries(await bundleBrowser())) served[path] = { type: "text/javascript", body };
const server = createServer((req, res) => {
  const path = new URL(req.url ?? "/", "http://localhost").pathname;
  const file = served[path];
  if (file !== undefined) return void res.writeHead(200, { "Content-Type": file.type }).end(file.body);
  const prefix = [...models.keys()].find((p) => path.startsWith(p));
  // Only files inside the folder: no ".." segment once decoded.
  let rest = null;
  try {
    if (prefix !== undefined) rest = decodeURIComponent(path.slice(prefix.length));
  } catch {
    return void res.writeHead(400).end(); // a malformed %-escape
  }
  const answer = rest === null || rest.split(/[\\/]/).includes("..") ? null : fileAnswer(join(models.get(prefix), rest), req.headers.range);
  if (answer === null) return void res.writeHead(404).end();
  res.writeHead(answer.status, answer.headers).end(req.method === "HEAD" ? undefined : answer.body);
});
server.on("error", (e) => {
  if (e.code === "EADDRINUSE") fail(`port ${port} is in use: set PORT to a free one (PORT=8081 npm run demo:browser)`);
  fail(`cannot listen on 127.0.0.1:${port}: ${e.message}`);
});
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`qalign demo: http://localhost:${port}/\n`);
  for (const [prefix, dir] of models) process.stdout.write(`qalign demo: ${dir} at ${prefix}\n`);
  if (models.size === 0) process.stdout.write("qalign demo: no checkpoint served (--model DIR serves one at /models/<its name>/; `npx qalign align` generates the tiny one)\n");
});
