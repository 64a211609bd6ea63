import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PlotSpecError, renderSvg, toCsv, writePlot, type FullSpec, type PlotSpec } from "../src/io/plot.ts";

const encoding = {
  x: { field: "layer", type: "quantitative", title: "layer (0 = embedding)" },
  y: { field: "p", type: "quantitative", title: "probability mass (0-1)" },
  color: { field: "lang", type: "nominal", title: "prompt language" },
} as const;
const spec: PlotSpec = { title: "Answer mass by layer", mark: "line", encoding };
const rows = [
  { layer: 0, p: 0.1, lang: "de" },
  { layer: 1, p: 0.4, lang: "de" },
  { layer: 0, p: 0.2, lang: 'zh, "quoted"' },
  { layer: 1, p: 0.3, lang: 'zh, "quoted"' },
];

describe("plot", () => {
  it("renders an SVG with the title, the axis titles and the legend", async () => {
    const svg = await renderSvg({ ...spec, data: { values: rows } } as FullSpec);
    expect(svg.startsWith("<svg")).toBe(true);
    for (const text of ["Answer mass by layer", "layer (0 = embedding)", "probability mass (0-1)", "prompt language", "de"]) {
      expect(svg).toContain(text);
    }
  });

  it("rejects a spec without a title or with an untitled axis or a hidden legend", async () => {
    const data = { values: rows };
    await expect(renderSvg({ data, mark: "line", encoding } as FullSpec)).rejects.toThrow(PlotSpecError);
    const untitled = { ...spec, data, encoding: { ...encoding, y: { field: "p", type: "quantitative" } } } as FullSpec;
    await expect(renderSvg(untitled)).rejects.toThrow(/encoding\.y needs a title/);
    const hidden = { ...spec, data, encoding: { ...encoding, color: { ...encoding.color, legend: null } } } as FullSpec;
    await expect(renderSvg(hidden)).rejects.toThrow(/keep its legend/);
  });

  it("writes the SVG with its rows as JSON and CSV", async () => {
    const dir = await mkdtemp(join(tmpdir(), "qalign-plot-"));
    try {
      const files = await writePlot(join(dir, "sub", "lens"), spec, rows);
      expect(files.svg).toBe(join(dir, "sub", "lens.svg"));
      expect(await readFile(files.svg, "utf8")).toContain("Answer mass by layer");
      expect(JSON.parse(await readFile(files.json, "utf8"))).toEqual(rows);
      expect(await readFile(files.csv, "utf8")).toBe(toCsv(rows));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("quotes CSV fields per RFC 4180 and leaves missing values empty", () => {
    expect(toCsv([{ a: 1, b: 'x, "y"' }, { a: null, c: "line\nbreak" }])).toBe('a,b,c\n1,"x, ""y""",\n,,"line\nbreak"\n');
  });
});
