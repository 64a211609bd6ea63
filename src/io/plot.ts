/**
 * Charts as files: Vega-Lite specs rendered to SVG headlessly, with the numbers beside them.
 *
 * Rendering: `vega-lite` compiles a Vega-Lite spec to a Vega spec, and `vega`'s `View` with
 * `renderer: "none"` lays it out and serialises the scenegraph to SVG text. Nothing needs a
 * browser, a DOM or node-canvas (without canvas, Vega estimates text widths from font size).
 * Every chart must be readable on its own, so specs are checked before rendering: a title, a
 * title on every encoded axis and legend (with units), and no hidden legends.
 * vega and vega-lite (most of qalign's installed code) are imported when the first chart is
 * drawn, not when qalign is: a program that draws none never loads them.
 */
import type { TopLevelSpec } from "vega-lite";
import { hostFiles, type Files } from "./files.ts";

/** A complete Vega-Lite spec (v6), data included; see https://vega.github.io/vega-lite/docs/. */
export type FullSpec = TopLevelSpec;

/** A Vega-Lite spec without its `data`, which {@link writePlot} fills in. */
export type PlotSpec = TopLevelSpec extends infer S ? (S extends unknown ? Omit<S, "data"> : never) : never;

/** One flat record of a chart's data: the same row goes to the spec, the JSON and the CSV. */
export type PlotRow = Readonly<Record<string, string | number | boolean | null>>;

/** A spec that would render an unreadable chart (no title, an untitled axis or legend). */
export class PlotSpecError extends Error {
  override name = "PlotSpecError";
}

/** Channels drawn as an axis, a legend or a facet header: each needs a title. */
const TITLED_CHANNELS = ["x", "y", "color", "fill", "stroke", "shape", "size", "strokeDash", "opacity", "row", "column", "facet"];
/** Channels whose scale is shown as a legend, which must not be switched off. */
const LEGEND_CHANNELS = ["color", "fill", "stroke", "shape", "size", "strokeDash", "opacity"];

/**
 * Checks the labelling rules on a spec and every view nested in it (layer, concat, facet).
 * @throws PlotSpecError naming the first offending channel.
 */
function assertLabelled(spec: FullSpec): void {
  const title = (spec as { title?: unknown }).title;
  const text = typeof title === "object" && title !== null ? (title as { text?: unknown }).text : title;
  if (typeof text !== "string" && !Array.isArray(text)) throw new PlotSpecError("plot: the spec needs a title");
  const visit = (node: unknown, path: string): void => {
    if (typeof node !== "object" || node === null) return;
    if (Array.isArray(node)) return node.forEach((n, i) => visit(n, `${path}[${i}]`));
    for (const [key, value] of Object.entries(node)) {
      if (key === "data" || key === "datasets") continue;
      if (key === "encoding" && typeof value === "object" && value !== null) {
        for (const ch of TITLED_CHANNELS) {
          const def = (value as Record<string, unknown>)[ch] as { field?: unknown; aggregate?: unknown; title?: unknown; legend?: unknown } | undefined;
          if (!def || (def.field === undefined && def.aggregate === undefined)) continue;
          if (typeof def.title !== "string" || def.title === "") throw new PlotSpecError(`plot: ${path}.encoding.${ch} needs a title (with units)`);
          if (LEGEND_CHANNELS.includes(ch) && def.legend === null) throw new PlotSpecError(`plot: ${path}.encoding.${ch} must keep its legend`);
        }
      }
      visit(value, `${path}.${key}`);
    }
  };
  visit(spec, "spec");
}

/**
 * Renders a Vega-Lite spec (with its data inline) to SVG text. The spec is copied first: Vega
 * tags the data rows it ingests, and the caller's rows stay untouched.
 * @returns a standalone `<svg>` document with a white background
 * @throws PlotSpecError when the spec lacks a title or an encoded channel lacks a title;
 *   whatever vega-lite or vega throw for an invalid spec.
 */
export async function renderSvg(spec: FullSpec): Promise<string> {
  assertLabelled(spec);
  const [{ parse, View }, { compile }] = await Promise.all([import("vega"), import("vega-lite")]);
  const view = new View(parse(compile(structuredClone(spec)).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break. */
function csvField(v: PlotRow[string] | undefined): string {
  if (v === null || v === undefined || (typeof v === "number" && !Number.isFinite(v))) return "";
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/** Rows as CSV: a header of every key in order of first appearance, then one line per row. */
export function toCsv(rows: readonly PlotRow[]): string {
  const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const lines = [columns.map(csvField), ...rows.map((r) => columns.map((c) => csvField(r[c])))];
  return lines.map((l) => l.join(",")).join("\n") + "\n";
}

/** The files written by {@link writePlot}. */
export interface PlotFiles {
  svg: string;
  json: string;
  csv: string;
}

/**
 * Renders `spec` over `data` (set as the spec's inline `data.values`) and writes three files
 * side by side: `<base>.svg` (the chart), `<base>.json` (the rows, as a JSON array) and
 * `<base>.csv` (the same rows), each atomically. Creates the folder when needed.
 * @param file the SVG's path; `.svg` is appended when it has another extension or none
 * @param files where to write (default: the host's, io/files.ts)
 * @returns the three paths, and `svgText`, the SVG written (for a caller that inlines it)
 * @throws PlotSpecError for an unlabelled spec (see {@link renderSvg}); the files' write errors.
 */
export async function writePlot(file: string, spec: PlotSpec, data: readonly PlotRow[], files?: Files): Promise<PlotFiles & { svgText: string }> {
  files ??= await hostFiles();
  // node:path's extname: ".svg" after at least one character of the file's name (".svg" alone is a name).
  const base = /[^/\\]\.svg$/.test(file) ? file.slice(0, -4) : file;
  const out: PlotFiles = { svg: `${base}.svg`, json: `${base}.json`, csv: `${base}.csv` };
  const svg = await renderSvg({ ...spec, data: { values: data as PlotRow[] } } as FullSpec);
  await files.writeAtomic(out.svg, [svg]);
  await files.writeAtomic(out.json, [JSON.stringify(data, null, 1) + "\n"]);
  await files.writeAtomic(out.csv, [toCsv(data)]);
  return { ...out, svgText: svg };
}
