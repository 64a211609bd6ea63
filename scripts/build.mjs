// `npm run build`: compiles src/ to dist/ (ESM JavaScript, .d.ts and source maps, with the
// relative `.ts` imports rewritten to `.js`) and copies the data files src/ reads at run time
// (JSON assets) beside the compiled modules, so dist/ mirrors src/. Plain Node: it runs
// before tsx or a build exists (npm's prepare step, also for installs from a git URL).
import { execFileSync } from "node:child_process";
import { cpSync, rmSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
rmSync(join(root, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], { stdio: "inherit" });
cpSync(join(root, "src"), join(root, "dist"), {
  recursive: true,
  filter: (path) => statSync(path).isDirectory() || !path.endsWith(".ts"),
});
