import type { ProbeSet } from "../interp/probe.ts";
import { CliError, int, stderrLine, type OptionTable, type Values } from "./args.ts";
import { INTERP_OPTIONS, runInterp } from "./lens.ts";

/**
 * Parses --layers: comma-separated layer indices in [0, L], or "last" for L (the model's
 * output); default "0,<L/2 rounded>,last".
 * @throws CliError naming the first entry that is not a layer.
 */
export function parseLayers(text: string | undefined, L: number): number[] {
  const parts = (text ?? `0,${Math.round(L / 2)},last`).split(",").map((s) => s.trim());
  const layers = parts.map((p) => (p === "last" ? L : /^\d+$/.test(p) ? Number(p) : NaN));
  const bad = layers.findIndex((l) => !(l >= 0 && l <= L));
  if (bad >= 0) throw new CliError(`pca: --layers entry "${parts[bad]}" is not a layer in [0, ${L}] or "last"`);
  return [...new Set(layers)].sort((a, b) => a - b);
}

/**
 * The number of components PCA can give for `sets` (fit on all languages' items together):
 * at most min(N - 1, D) for N items of hidden size D. Warns on stderr when --components asks
 * for more.
 * @throws CliError when the sets hold fewer than 2 items in all.
 */
export function pcaComponents(wanted: number, sets: readonly Pick<ProbeSet, "lang" | "prompts">[], D: number, warn: (line: string) => void): number {
  const N = sets.reduce((sum, s) => sum + s.prompts.length, 0);
  const counts = sets.map((s) => `${s.lang} ${s.prompts.length}`).join(", ");
  if (N < 2) throw new CliError(`pca: PCA needs at least 2 items in all languages together, got ${N} (${counts}); raise --limit or add languages to --langs`);
  const k = Math.min(wanted, N - 1, D);
  if (k < wanted) {
    const why = k === D ? `the hidden size is ${D}` : `PCA of ${N} items (${counts}) has at most N - 1 = ${N - 1} components`;
    warn(`pca: --components ${wanted} reduced to ${k}: ${why}`);
  }
  return k;
}

/** Principal components when --components is not given. */
const COMPONENTS = 4;

export const options = {
  ...INTERP_OPTIONS,
  layers: { type: "string", arg: "0,8,16,last", help: "layers whose last-token states are projected: indices in [0, L] (0 the embeddings), last the final layer", default: "0,<half the layers>,last" },
  components: { type: "string", arg: "K", help: "principal components computed (at least 2)", default: `${COMPONENTS} (at most the number of items - 1)` },
} as const satisfies OptionTable;

/**
 * `qalign pca --model DIR --task T --langs L --out DIR [options]`: PCA scatter of the last-token states at each layer, coloured by
 * language, and the correlation of every language's mean state with English's by layer (English
 * is added to --langs when missing), base and, with --adapter, aligned. See runInterp in lens.ts.
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const components = int("pca", v, "components", COMPONENTS, 2);
  await runInterp(
    {
      name: "pca",
      required: { lang: "en", why: "the correlation compares every language with English" },
      probes: (config, sets) => ({
        lens: false,
        correlation: true,
        pcaLayers: parseLayers(typeof v.layers === "string" ? v.layers : undefined, config.num_hidden_layers),
        components: pcaComponents(components, sets, config.hidden_size, stderrLine),
      }),
    },
    v,
  );
}
