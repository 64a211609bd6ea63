// `npm run demo:browser`: serves the demo page (examples/browser/) and qalign's browser entry,
// bundled from src/browser.ts by esbuild, at http://localhost:PORT (default 8080; a secure
// context, so the page gets navigator.gpu). Open the printed address in Chrome or Edge.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const page = join(root, "examples", "browser");
const bundle = (await build({ entryPoints: [join(root, "src", "browser.ts")], bundle: true, format: "esm", platform: "browser", target: "es2022", write: false, logLevel: "error" })).outputFiles[0].text;
const TYPES = { ".html": "text/html", ".js": "text/javascript" };
const port = Number(process.env.PORT ?? 8080);
createServer((req, res) => {
  const path = new URL(req.url ?? "/", "http://localhost").pathname;
  if (path === "/qalign.js") return void res.writeHead(200, { "Content-Type": "text/javascript" }).end(bundle);
  const name = path === "/" ? "index.html" : path.slice(1);
  if (!(name in { "index.html": 1, "main.js": 1 })) return void res.writeHead(404).end();
  res.writeHead(200, { "Content-Type": TYPES[extname(name)] }).end(readFileSync(join(page, name)));
}).listen(port, "127.0.0.1", () => process.stdout.write(`qalign demo: http://localhost:${port}/\n`));
