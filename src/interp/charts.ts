/**
 * The pictures of the interpretability report (Zhang et al. 2024, Section 5), as Vega-Lite
 * specs with their data rows, for plot.ts. Each takes one or more reports (base, aligned, ...)
 * and draws the models with different line dashes, so before and after sit in one chart.
 */
import type { PlotRow, PlotSpec } from "../io/plot.ts";
import type { InterpReport } from "./report.ts";

/** A spec and the rows it draws. */
export interface Chart {
  /** File name without extension. */
  name: string;
  spec: PlotSpec;
  rows: PlotRow[];
}

/** Layers on x: whole numbers, 0 the embedding output, L the model's output. */
const LAYER_AXIS = { field: "layer", type: "quantitative", title: "layer (0 = embeddings)", axis: { tickMinStep: 1, format: "d" } } as const;

/** A chart title, with the run's description under it when given. */
function heading(text: string, subtitle: string | undefined) {
  return subtitle ? { text, subtitle } : text;
}

/**
 * The colour encoding of languages: the same colour for a language in every chart of a report
 * (the domain is every language of the reports, in their order), 10 distinct hues or 20 (in
 * light/dark pairs) for more; the legend lists only the languages drawn.
 */
function langColour(reports: readonly InterpReport[], rows: readonly PlotRow[]) {
  const domain = [...new Set(reports.flatMap((r) => r.languages))];
  const drawn = new Set(rows.map((r) => r.lang));
  return {
    field: "lang",
    type: "nominal",
    title: "prompt language",
    scale: { domain, scheme: domain.length <= 10 ? "tableau10" : "tableau20" },
    legend: { values: domain.filter((l) => drawn.has(l)) },
  } as const;
}

/**
 * Lines with a point at each layer, one dash per model (in report order: the first solid). The
 * points are a separate layer so that the model legend shows dashed strokes, not dots.
 */
function dashedLines(encoding: Record<string, unknown>, models: readonly string[]) {
  return {
    encoding,
    layer: [
      { mark: { type: "line" }, encoding: { strokeDash: { field: "model", type: "nominal", title: "model", sort: models } } },
      { mark: { type: "point", filled: true, size: 25 } },
    ],
  };
}

/**
 * Logit Lens curves: per language (one panel each), the mean probability mass of the answer
 * word in the prompt's language and of the English answer word, by layer.
 */
export function lensMassChart(reports: readonly InterpReport[], subtitle?: string): Chart {
  const rows: PlotRow[] = [];
  for (const r of reports) {
    for (const lang of r.lens ?? []) {
      for (const l of lang.layers) {
        rows.push({ model: r.label, lang: lang.lang, layer: l.layer, word: "in the prompt's language", mass: l.answerMass });
        rows.push({ model: r.label, lang: lang.lang, layer: l.layer, word: "in English (latent English)", mass: l.englishMass });
      }
    }
  }
  const langs = [...new Set(rows.map((r) => r.lang as string))];
  return {
    name: "lens_mass",
    rows,
    spec: {
      title: heading("Logit Lens: probability of the answer word by layer", subtitle),
      facet: { field: "lang", type: "nominal", title: "prompt language", sort: langs },
      columns: Math.min(langs.length, 4),
      spec: {
        width: 200,
        height: 140,
        ...dashedLines(
          {
            x: LAYER_AXIS,
            y: { field: "mass", type: "quantitative", title: "probability mass (0-1)" },
            color: { field: "word", type: "nominal", title: "answer word", legend: { labelLimit: 260 } },
          },
          reports.map((r) => r.label),
        ),
      },
    } as PlotSpec,
  };
}

/** Mean entropy of the lens distribution by layer, one line per language and model. */
export function lensEntropyChart(reports: readonly InterpReport[], subtitle?: string): Chart {
  const rows: PlotRow[] = reports.flatMap((r) =>
    (r.lens ?? []).flatMap((lang) => lang.layers.map((l) => ({ model: r.label, lang: lang.lang, layer: l.layer, entropy: l.entropy }))),
  );
  return {
    name: "lens_entropy",
    rows,
    spec: {
      title: heading("Logit Lens: entropy of the next-token distribution by layer", subtitle),
      width: 420,
      height: 260,
      ...dashedLines(
        {
          x: LAYER_AXIS,
          y: { field: "entropy", type: "quantitative", title: "entropy (nats)" },
          color: langColour(reports, rows),
        },
        reports.map((r) => r.label),
      ),
    } as PlotSpec,
  };
}

/**
 * PCA scatter of the last-token states at one layer: one panel per model (each has its own
 * PCA), points coloured by language.
 */
export function pcaChart(reports: readonly InterpReport[], layer: number, subtitle?: string): Chart {
  const fitted = reports.flatMap((r) => {
    const p = r.pca?.find((x) => x.layer === layer);
    return p ? [{ label: r.label, p }] : [];
  });
  const rows: PlotRow[] = fitted.flatMap(({ label, p }) =>
    p.points.map((pt) => ({ model: label, layer, lang: pt.lang, index: pt.index, pc1: pt.pc[0] ?? 0, pc2: pt.pc[1] ?? 0 })),
  );
  const panels = fitted.map(({ label, p }) => {
    const pct = (i: number) => {
      const ratio = p.explainedVarianceRatio[i];
      return ratio === undefined ? "no variance left" : `${(100 * ratio).toFixed(1)}% of variance`;
    };
    return {
      title: label,
      // Square, and tall enough for the rotated PC2 title (it would otherwise stretch the panel).
      width: 340,
      height: 340,
      transform: [{ filter: { field: "model", equal: label } }],
      mark: { type: "point", filled: true, opacity: 0.7, size: 40 },
      encoding: {
        x: { field: "pc1", type: "quantitative", title: `PC1 (residual-stream units; ${pct(0)})` },
        y: { field: "pc2", type: "quantitative", title: `PC2 (residual-stream units; ${pct(1)})` },
        color: langColour(reports, rows),
        tooltip: [{ field: "lang" }, { field: "index" }],
      },
    };
  });
  return {
    name: `pca_layer${layer}`,
    rows,
    spec: { title: heading(`PCA of last-token hidden states after layer ${layer}`, subtitle), hconcat: panels } as PlotSpec,
  };
}

/** Explained-variance ratio of each principal component, per layer and model. */
export function pcaVarianceChart(reports: readonly InterpReport[], subtitle?: string): Chart {
  const rows: PlotRow[] = reports.flatMap((r) =>
    (r.pca ?? []).flatMap((p) => p.explainedVarianceRatio.map((ratio, i) => ({ model: r.label, layer: p.layer, component: i + 1, percent: 100 * ratio }))),
  );
  return {
    name: "pca_variance",
    rows,
    spec: {
      title: heading("PCA: share of the variance along each principal component", subtitle),
      width: 360,
      height: 240,
      ...dashedLines(
        {
          x: { field: "component", type: "quantitative", title: "principal component (index)", axis: { tickMinStep: 1, format: "d" } },
          y: { field: "percent", type: "quantitative", title: "explained variance (% of total)" },
          color: { field: "layer", type: "ordinal", title: "layer", scale: { scheme: "tableau10" } },
        },
        reports.map((r) => r.label),
      ),
    } as PlotSpec,
  };
}

/** Pearson r between each language's mean representation and the reference's, by layer. */
export function correlationChart(reports: readonly InterpReport[], subtitle?: string): Chart {
  const rows: PlotRow[] = reports.flatMap((r) => (r.correlation ?? []).map((c) => ({ model: r.label, lang: c.lang, layer: c.layer, r: c.r })));
  const reference = reports.find((r) => r.correlation)?.reference ?? "en";
  return {
    name: "correlation",
    rows,
    spec: {
      title: heading(`Similarity to ${reference}: correlation of mean last-token representations by layer`, subtitle),
      width: 420,
      height: 260,
      ...dashedLines(
        {
          x: LAYER_AXIS,
          y: { field: "r", type: "quantitative", title: `Pearson r with ${reference} (unitless, -1 to 1)` },
          color: langColour(reports, rows),
        },
        reports.map((r) => r.label),
      ),
    } as PlotSpec,
  };
}
