// `npm run demo:browser`: serves the demo page (examples/browser/) and qalign's browser entry,
// bundled from src/browser.ts by esbuild (both from browser_bundle.mjs), at
// http://localhost:PORT (default 8080; a secure context, so the page gets navigator.gpu and the
// Origin Private File System). Open the printed address in Chrome or Edge.
import { createServer } from "node:http";
import { bundleBrowser, demoFiles } from "./browser_bundle.mjs";

const served = { ...demoFiles("/") };
for (const [path, body] of Object.entries(await bundleBrowser())) served[path] = { type: "text/javascript", body };
const port = Number(process.env.PORT ?? 8080);
createServer((req, res) => {
  const file = served[new URL(req.url ?? "/", "http://localhost").pathname];
  if (file === undefined) return void res.writeHead(404).end();
  res.writeHead(200, { "Content-Type": file.type }).end(file.body);
}).listen(port, "127.0.0.1", () => process.stdout.write(`qalign demo: http://localhost:${port}/\n`));
