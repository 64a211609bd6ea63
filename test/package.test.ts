import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { build } from "esbuild";
import ts from "typescript";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "./helpers/cli.ts";
import { exampleClosedForm, readmeExample, readmePrinted } from "./helpers/readme.ts";

/**
 * qalign as another project gets it: `npm pack` (which builds dist/ through prepack), the
 * tarball installed into a fresh project that has neither tsx nor TypeScript, then plain Node
 * imports it, runs its `qalign` bin, and a consumer's TypeScript compiler reads its types.
 * Dependencies come from npm's cache (--prefer-offline); nothing of the checkout is linked in.
 */
const PKG = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string; dependencies: Record<string, string>; devDependencies: Record<string, string> };
const TSC = join(ROOT, "node_modules", "typescript", "bin", "tsc");
const tmp = mkdtempSync(join(tmpdir(), "qalign-pack-"));
const project = join(tmp, "consumer");
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Runs a command to completion; a non-zero status fails the test with its output. */
function sh(cmd: string, args: string[], cwd: string): { stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", timeout: 240_000, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} (in ${cwd}) exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  return { stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  sh("npm", ["pack", "--pack-destination", tmp, "--silent"], ROOT);
  const tarball = readdirSync(tmp).find((f) => f.endsWith(".tgz"));
  if (!tarball) throw new Error(`npm pack wrote no tarball into ${tmp}`);
  sh("mkdir", [project], tmp);
  // @types/node: a Node consumer's own dev dependency, for the consumer checks below that use it
  // (qalign's own declarations need none: the last test).
  const manifest = { name: "consumer", private: true, type: "module", dependencies: { qalign: `file:../${tarball}`, "@types/node": PKG.devDependencies["@types/node"] } };
  writeFileSync(join(project, "package.json"), JSON.stringify(manifest, null, 2));
  sh("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], project);
}, 600_000);

describe("the packed tarball in a fresh project", () => {
  it("ships compiled JavaScript and declarations, not sources, tests or fixtures", () => {
    const installed = join(project, "node_modules", "qalign");
    expect(existsSync(join(installed, "dist", "index.js"))).toBe(true);
    expect(existsSync(join(installed, "dist", "index.d.ts"))).toBe(true);
    expect(existsSync(join(installed, "dist", "eval", "sample_data.json"))).toBe(true);
    expect(existsSync(join(installed, "dist", "eval", "paper_prompts.json"))).toBe(true); // the paper protocol's prompts
    for (const absent of ["src", "test", "scripts", "bench"]) expect(existsSync(join(installed, absent)), absent).toBe(false);
    // Neither a TypeScript runtime nor the compiler came along.
    for (const absent of ["tsx", "typescript"]) expect(existsSync(join(project, "node_modules", absent)), absent).toBe(false);
    // The tiny model's 14 MB tokenizer is an optional peer: not installed unless asked for.
    expect(existsSync(join(project, "node_modules", "@lenml", "tokenizer-llama2"))).toBe(false);
  });

  it("plain Node runs the README example and prints the README's numbers", () => {
    // The example is TypeScript; the checkout's compiler strips its types (`w.grad!`) here, so
    // the consumer project runs plain JavaScript.
    const source = `${readmeExample()}\nconsole.log(JSON.stringify(Array.from(await w.data())));\n`;
    const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
    writeFileSync(join(project, "example.mjs"), js);
    // A resolve hook that fails on vega or vega-lite: importing qalign and computing never loads them.
    writeFileSync(join(project, "no-vega.mjs"), 'export async function resolve(s, c, next) { if (/^vega(-lite)?$/.test(s)) throw new Error(`${s} loaded`); return next(s, c); }\n');
    writeFileSync(join(project, "register.mjs"), 'import { register } from "node:module";\nregister("./no-vega.mjs", import.meta.url);\n');
    const lines = sh(process.execPath, ["--import", "./register.mjs", "example.mjs"], project).stdout.trim().split("\n");
    const { loss, grads } = readmePrinted();
    expect(lines[0]).toBe(loss);
    expect(lines[1]).toBe(grads);
    // And the closed form in float64 from w (f32 compute: equal to the 4 printed decimals).
    const exact = exampleClosedForm(JSON.parse(lines[2]!) as number[]);
    expect(Number(loss)).toBeCloseTo(exact.loss, 4);
    expect(grads).toBe(`[ ${exact.grad.map((g) => `'${g.toFixed(4)}'`).join(", ")} ]`);
  });

  it("qalign/plot loads vega when a chart is drawn", () => {
    const chart = 'import { renderSvg } from "qalign/plot";\nconst spec = { title: "t", data: { values: [{ a: 1 }] }, mark: "point", encoding: { x: { field: "a", type: "quantitative", title: "a (units)" } } };\nprocess.stdout.write(await renderSvg(spec));\n';
    writeFileSync(join(project, "chart.mjs"), chart);
    expect(sh(process.execPath, ["chart.mjs"], project).stdout).toMatch(/^<svg[^>]*>[\s\S]*<\/svg>$/);
  });

  it("under the browser condition, qalign bundles for a page with no Node module in it", async () => {
    writeFileSync(join(project, "page.mjs"), 'import * as qa from "qalign";\nexport const loss = qa.randn([3, 2], { seed: 0 }).silu().sum();\n');
    // platform "browser" sets the browser condition, and the build fails on any node: import it
    // meets (a Node-only module is reached only through a name computed at run time).
    const out = await build({ entryPoints: [join(project, "page.mjs")], absWorkingDir: project, bundle: true, format: "esm", platform: "browser", write: false, logLevel: "silent", metafile: true });
    const inputs = Object.keys(out.metafile.inputs);
    expect(inputs).toContain("node_modules/qalign/dist/browser.js");
    // Not the Node entry, nor the charts' vega (which a page would have to carry).
    expect(inputs.filter((f) => f.endsWith("qalign/dist/index.js") || f.includes("node_modules/vega"))).toEqual([]);
  });

  it("npx qalign --help and --version run the compiled CLI", () => {
    const help = sh("npx", ["--no-install", "qalign", "--help"], project).stdout;
    expect(help).toMatch(/^usage: qalign <command> \[options\]/);
    expect(help).toMatch(/^ {2}align +/m);
    expect(sh("npx", ["--no-install", "qalign", "--version"], project).stdout).toBe(`${PKG.version}\n`);
  });

  for (const moduleResolution of ["nodenext", "bundler"] as const) {
    it(`a consumer's tsc --noEmit passes with moduleResolution ${moduleResolution}`, () => {
      const dir = join(project, moduleResolution);
      sh("mkdir", [dir], project);
      writeFileSync(
        join(dir, "use.ts"),
        [
          'import * as qa from "qalign";',
          'import { renderSvg } from "qalign/plot";',
          "const t: qa.Tensor = qa.tensor([[1, 2]]);",
          "const n: Promise<number> = t.sum().item();",
          "// @ts-expect-error a string is not tensor data (fails if qalign's types were `any`)",
          'qa.tensor("1");',
          'const svg: Promise<string> = renderSvg({ title: "t", data: { values: [] }, mark: "point" });',
          "export { n, svg };",
          "",
        ].join("\n"),
      );
      const module = moduleResolution === "nodenext" ? "nodenext" : "esnext";
      // skipLibCheck: nodenext rejects the extensionless relative imports in the declarations of
      // @huggingface/tokenizers 0.2.0 (a dependency), so there only the consumer's file is
      // checked, as with tsc --init's defaults; with bundler every declaration is checked.
      const skipLibCheck = moduleResolution === "nodenext";
      const compilerOptions = { strict: true, noEmit: true, skipLibCheck, target: "es2022", module, moduleResolution, types: ["node"], typeRoots: [join(project, "node_modules", "@types")] };
      writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({ compilerOptions, files: ["use.ts"] }));
      sh(process.execPath, [TSC, "-p", "tsconfig.json"], dir);
    });
  }

  it("qalign's own declarations need no Node types: tsc with skipLibCheck false and no @types/node reports nothing in them", () => {
    const dir = join(project, "no-node-types");
    sh("mkdir", ["-p", join(dir, "no-types")], project);
    writeFileSync(join(dir, "use.ts"), 'import * as qa from "qalign";\nexport const n: Promise<number> = qa.tensor([[1, 2]]).sum().item();\n');
    // types [] and an empty typeRoots: @types/node, installed beside, is not read.
    const compilerOptions = { strict: true, noEmit: true, skipLibCheck: false, target: "es2022", module: "nodenext", moduleResolution: "nodenext", types: [], typeRoots: [join(dir, "no-types")] };
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({ compilerOptions, files: ["use.ts"] }));
    const r = spawnSync(process.execPath, [TSC, "-p", "tsconfig.json"], { cwd: dir, encoding: "utf8", timeout: 240_000 });
    expect(r.status).not.toBe(null); // it ran to the end
    // Errors in other packages' declarations are theirs (@huggingface/tokenizers' extensionless
    // imports under nodenext, see above); none may be in qalign's.
    const ours = r.stdout.split("\n").filter((line) => line.includes("node_modules/qalign/"));
    expect(ours).toEqual([]);
  });
});
