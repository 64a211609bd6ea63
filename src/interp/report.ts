/**
 * The interpretability report of one model (Zhang et al. 2024, Section 5): Logit Lens, PCA of
 * the last-token states at chosen layers, and the correlation of each language's mean state with
 * English's. `interpret` measures one model; `writeInterpReport` draws one or several (base and
 * aligned) into one folder of SVG charts with their numbers as JSON and CSV.
 */
import type { Provenance } from "../io/provenance.ts";
import { cpuDevice } from "../kernels/devices.ts";
import type { LlamaModel } from "../model/llama.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { tensor } from "../tensor/ops/create.ts";
import { correlationChart, lensEntropyChart, lensMassChart, pcaChart, pcaVarianceChart, type Chart } from "./charts.ts";
import { correlationByLayer, type CorrelationPoint } from "./correlation.ts";
import { pca } from "./pca.ts";
import { toCsv, writePlot, type PlotRow } from "../io/plot.ts";
import { hostFiles, type Files } from "../io/files.ts";
import { probe, type LensLanguage, type ProbeSet } from "./probe.ts";

/** What {@link interpret} measures; `label` names the model. */
export interface InterpOptions {
  /** Names the model in charts and tables ("base", "aligned"). */
  label: string;
  /** Compute the Logit Lens (default true). */
  lens?: boolean;
  /** Layers (0..L) to run PCA on (default none). */
  pcaLayers?: readonly number[];
  /** Principal components per layer (default 4; the scatter shows the first two). */
  components?: number;
  /**
   * Correlate each language's mean state with the reference's (default true; needs a set in
   * the reference language).
   */
  correlation?: boolean;
  /** The language compared against (default "en"). */
  reference?: string;
  /** Tokens listed per item and layer by the lens (default 5). */
  topK?: number;
  /** Prompts per forward pass (default 8). */
  batchSize?: number;
  /** Called after each batch. */
  onProgress?: (lang: string, done: number, total: number) => void;
}

/** PCA of one layer's last-token states over all languages' items. */
export interface PcaLayer {
  layer: number;
  /** Fraction of the total variance along each component, [0, 1]. */
  explainedVarianceRatio: number[];
  /** Variance along each component, squared residual-stream units. */
  variances: number[];
  /** Sum of the variances of all D dimensions, squared residual-stream units. */
  totalVariance: number;
  /** Per component: whether power iteration met its tolerance, and its steps. */
  converged: boolean[];
  iterations: number[];
  /** Each item's coordinates on the components (residual-stream units). */
  points: { lang: string; index: number; pc: number[] }[];
}

/** What {@link interpret} measured on one model. */
export interface InterpReport {
  label: string;
  /** L; layers are indexed 0 (embeddings) .. L (model output). */
  numLayers: number;
  /** D, the hidden size. */
  hiddenSize: number;
  /** The languages, in set order. */
  languages: string[];
  /** Items per language. */
  items: Record<string, number>;
  lens: LensLanguage[] | null;
  pca: PcaLayer[] | null;
  /** Reference language of `correlation`. */
  reference: string;
  correlation: CorrelationPoint[] | null;
}

/**
 * Measures one model on the probe sets (one forward pass over every prompt; see probe.ts):
 * the Logit Lens, PCA at `pcaLayers` (float64, on the cpu device, over all languages' items
 * together), and the correlation of each language's mean state with the reference's.
 * @throws RangeError for invalid sets or layers (see probe), or when `correlation` is wanted
 *   and no set is in the reference language.
 */
export async function interpret(model: LlamaModel, tokenizer: Pick<Tokenizer, "idToToken">, sets: readonly ProbeSet[], opts: InterpOptions): Promise<InterpReport> {
  const reference = opts.reference ?? "en";
  const wantCorrelation = opts.correlation ?? true;
  if (wantCorrelation && !sets.some((s) => s.lang === reference)) {
    throw new RangeError(`interpret: the correlation needs prompts in the reference language "${reference}"`);
  }
  const pcaLayers = opts.pcaLayers ?? [];
  const probed = await probe(model, tokenizer, sets, {
    lens: opts.lens ?? true,
    topK: opts.topK,
    keepLayers: pcaLayers,
    batchSize: opts.batchSize,
    onProgress: opts.onProgress,
  });
  const D = probed.hiddenSize;
  const pcaResults: PcaLayer[] = [];
  for (const kept of probed.kept) {
    const N = kept.rows.length;
    const x = tensor(Float64Array.from(kept.data), { device: cpuDevice(), shape: [N, D] });
    try {
      const r = await pca(x, { components: opts.components ?? 4 });
      const k = r.components.length;
      pcaResults.push({
        layer: kept.layer,
        explainedVarianceRatio: r.explainedVarianceRatio,
        variances: r.variances,
        totalVariance: r.totalVariance,
        converged: r.converged,
        iterations: r.iterations,
        points: kept.rows.map((row, n) => ({ ...row, pc: Array.from(r.projections.subarray(n * k, (n + 1) * k)) })),
      });
    } finally {
      x.dispose();
    }
  }
  return {
    label: opts.label,
    numLayers: probed.numLayers,
    hiddenSize: D,
    languages: sets.map((s) => s.lang),
    items: Object.fromEntries(sets.map((s) => [s.lang, s.prompts.length])),
    lens: opts.lens ?? true ? probed.lens : null,
    pca: pcaLayers.length ? pcaResults : null,
    reference,
    correlation: wantCorrelation ? correlationByLayer(probed.means, reference) : null,
  };
}

/** An {@link InterpReport} without its per-item data. */
export type InterpSummary = Omit<InterpReport, "lens" | "pca"> & {
  lens: Omit<LensLanguage, "items">[] | null;
  pca: Omit<PcaLayer, "points">[] | null;
};

/**
 * The report without per-item data (lens items, PCA points): what fits in a results table or
 * a larger JSON report, e.g. that of `qalign align --interp`.
 */
export function summarize(report: InterpReport): InterpSummary {
  return {
    ...report,
    lens: report.lens?.map(({ lang, layers }) => ({ lang, layers })) ?? null,
    pca: report.pca?.map(({ points: _points, ...rest }) => rest) ?? null,
  };
}

/** The file of writeInterpReport that lists the others: what a rerun into the folder replaces. */
export const INTERP_SUMMARY = "summary.json";

/**
 * Writes the charts and numbers of one or more reports (e.g. base and aligned) into `dir`:
 * `lens_mass`, `lens_entropy`, `pca_layer<l>` per PCA layer, `pca_variance` and `correlation`
 * as .svg + .json + .csv (each where some report has the data); `lens_top_tokens.{json,csv}`
 * (the top tokens of each language's mean lens distribution per layer); `lens_items.jsonl`
 * (one line per model, language and item); `summary.json` ({@link summarize} of each report,
 * and the list of files).
 * @param subtitle shown under every chart's title, e.g. "SNLI, 6-shot, 50 items per language"
 * @param provenance what ran, on what, from which files: recorded in summary.json
 * @param command the command that measured (lens, pca): recorded in summary.json, so that a
 *   rerun into `dir` knows the files as its own
 * @param files where to write, each file atomically (default: the host's, io/files.ts)
 * @returns the paths written
 * @throws PlotSpecError (a bug) or the files' write errors.
 */
export async function writeInterpReport(
  dir: string,
  reports: readonly InterpReport[],
  subtitle?: string,
  provenance?: Provenance,
  command?: string,
  files?: Files,
): Promise<string[]> {
  const host = files ?? (await hostFiles());
  const join = (name: string) => host.join(dir, name);
  const charts: Chart[] = [];
  const withLens = reports.filter((r) => r.lens);
  if (withLens.length) charts.push(lensMassChart(withLens, subtitle), lensEntropyChart(withLens, subtitle));
  const layers = [...new Set(reports.flatMap((r) => r.pca?.map((p) => p.layer) ?? []))].sort((a, b) => a - b);
  for (const layer of layers) charts.push(pcaChart(reports, layer, subtitle));
  if (layers.length) charts.push(pcaVarianceChart(reports, subtitle));
  if (reports.some((r) => r.correlation)) charts.push(correlationChart(reports, subtitle));

  const written: string[] = [];
  for (const c of charts) {
    const plot = await writePlot(join(`${c.name}.svg`), c.spec, c.rows, host);
    written.push(plot.svg, plot.json, plot.csv);
  }
  if (withLens.length) {
    const top: PlotRow[] = withLens.flatMap((r) =>
      r.lens!.flatMap((lang) =>
        lang.layers.flatMap((l) => l.top.map((t, i) => ({ model: r.label, lang: lang.lang, layer: l.layer, rank: i + 1, id: t.id, token: t.token, p: t.p }))),
      ),
    );
    const items = withLens.flatMap((r) => r.lens!.flatMap((lang) => lang.items.map((it) => JSON.stringify({ model: r.label, lang: lang.lang, ...it }))));
    const out = { json: join("lens_top_tokens.json"), csv: join("lens_top_tokens.csv"), items: join("lens_items.jsonl") };
    await host.writeAtomic(out.json, [JSON.stringify(top, null, 1) + "\n"]);
    await host.writeAtomic(out.csv, [toCsv(top)]);
    await host.writeAtomic(out.items, [items.join("\n") + "\n"]);
    written.push(out.json, out.csv, out.items);
  }
  const summary = join(INTERP_SUMMARY);
  written.push(summary);
  await host.writeAtomic(summary, [JSON.stringify({ command: command ?? null, subtitle: subtitle ?? null, provenance: provenance ?? null, files: written, reports: reports.map(summarize) }, null, 1) + "\n"]);
  return written;
}
