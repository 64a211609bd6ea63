// The demo page's logic: plain JavaScript on qalign's browser entry and its charts (served as
// /qalign.js and /qalign-plot.js by `npm run demo:browser`, bundles of src/browser.ts and
// src/io/plot.ts, the package's `qalign` and `qalign/plot`). `window.demo` holds the page's state
// (model, tokenizer, adapter, the run's record) for the browser console.
import * as qa from "/qalign.js";
import { renderSvg } from "/qalign-plot.js"; // qalign/plot: charts (vega), loaded with the page here

const $ = (id) => document.getElementById(id);
const status = (text) => ($("status").textContent = text);
const showProgress = (id, done, total) => Object.assign($(id), { value: done, max: Math.max(total, 1) });
const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;
/** Where the page writes what it offers for download: its Origin Private File System. */
const OUT = "qalign-demo";
/** Tokens per pair at most (prompt and target together), as `qalign train --max-length`. */
const MAX_LENGTH = 256;

const demo = (window.demo = { device: null, model: null, tokenizer: null, adapter: null, run: null });

/** Runs `fn` for a button, showing its error (a DataError or CheckpointError names the file) instead of throwing. */
const action = (fn) => async () => {
  try {
    await fn();
  } catch (e) {
    status(`error: ${e.message}`);
  }
};

/** Where the checkpoint is: picked files, or a URL folder / Hub name resolved by loadModel (Hub names download into the OPFS). */
function source() {
  const picked = [...$("folder").files];
  if (picked.length > 0) {
    const dir = picked[0].webkitRelativePath.split("/")[0];
    return { name: dir, files: qa.blobFiles(new Map(picked.map((f) => [f.webkitRelativePath, f]))) };
  }
  const name = $("source").value.trim();
  return { name: qa.isHubId(name) ? name : new URL(name.replace(/\/?$/, "/"), location.href).href };
}

$("load").onclick = action(async () => {
  status("loading...");
  demo.device ??= await qa.init("webgpu");
  demo.model?.dispose();
  const { name, files } = source();
  const where = await qa.resolveModel(name, {
    files,
    endpoint: $("endpoint").value.trim(),
    onDownload: (file, bytes, size) => {
      showProgress("loadProgress", bytes, size);
      status(`downloading ${file}: ${mb(bytes)} of ${mb(size)}`);
    },
  });
  demo.model = await qa.loadModel(where.dir, {
    device: demo.device,
    files: where.files,
    onProgress: (done, total) => {
      showProgress("loadProgress", done, total);
      status(`loading: ${((100 * done) / Math.max(total, 1)).toFixed(0)}%`);
    },
  });
  demo.tokenizer = await qa.loadTokenizer(where.dir, where.files);
  demo.adapter = null;
  demo.run = { model: name, losses: [], lens: null };
  for (const b of ["generate", "align", "lens"]) $(b).disabled = demo.tokenizer === null;
  $("save").disabled = true;
  const c = demo.model.config;
  status(`loaded: ${c.model_type}, ${c.num_hidden_layers} layers, hidden_size ${c.hidden_size}${demo.tokenizer ? "" : " (no tokenizer.json: generation needs one)"}`);
});

$("generate").onclick = action(async () => {
  const { model, tokenizer } = demo;
  status("generating...");
  const prompt = tokenizer.encode($("prompt").value);
  const ids = await qa.generate(model, prompt, { maxNewTokens: 8 }); // the new tokens
  $("generated").textContent = tokenizer.decode([...prompt.filter((id) => id !== tokenizer.bosId), ...ids]);
  status("generated 8 tokens (greedy)");
});

/**
 * The question pairs to train on, read and validated by qalign's reader (readQuestionPairs: a
 * bad file is a DataError naming it; malformed items are skipped and listed), and a seeded
 * slice of them (splitPairs, as `qalign train --max-samples`).
 */
async function questionPairs() {
  const file = $("pairsFile").files[0];
  const mine = $("useFile").checked;
  if (mine && file === undefined) throw new Error("choose a question-pairs file, or the bundled sample");
  const [name, blob] = mine ? [file.name, file] : ["sample_pairs.json", await (await fetch("./sample_pairs.json")).blob()];
  const { pairs, issues } = await qa.readQuestionPairs([name], { files: qa.blobFiles(new Map([[name, blob]])) });
  const { train } = qa.splitPairs(pairs, { maxSamples: Number($("maxPairs").value), valSize: 0, seed: 0 });
  const skipped = issues.length === 0 ? "" : `\nskipped ${issues.length} malformed item(s):\n${issues.map((i) => `  ${qa.formatIssue(i)}`).join("\n")}`;
  $("data").textContent = `${name}: ${pairs.length} pairs, training on ${train.length}${skipped}`;
  return { name, pairs: train, total: pairs.length, skipped: issues.length };
}

$("align").onclick = action(async () => {
  const { model, tokenizer, device } = demo;
  status("reading the question pairs...");
  $("data").textContent = "";
  const data = await questionPairs();
  const { examples, truncated } = qa.encodePairs(data.pairs, tokenizer, { eosId: tokenizer.eosId ?? 0, maxLength: MAX_LENGTH });
  const lora = { r: Number($("rank").value), lora_alpha: Number($("alpha").value), seed: 0 };
  const lr = Number($("lr").value);
  const steps = Number($("steps").value);
  // LoRA goes on once per loaded model (applyLora refuses a second): one run per load.
  $("align").disabled = true;
  demo.adapter = qa.applyLora(model, lora);
  const opt = new qa.AdamW(demo.adapter.params, { lr });
  const losses = [(await qa.meanTargetLoss(model, examples, examples.length)).loss];
  const show = () => ($("losses").textContent = losses.map((l, i) => `step ${i}: loss ${l.toFixed(4)}`).join("\n"));
  show();
  for (let s = 0; s < steps; s++) {
    status(`aligning: step ${s + 1} of ${steps}`);
    qa.tidy(() => {
      const batch = qa.collate(examples, device);
      qa.targetNllSum(model, batch).div(batch.targetCount).backward();
    });
    opt.step();
    qa.zeroGrad(demo.adapter.params);
    losses.push((await qa.meanTargetLoss(model, examples, examples.length)).loss);
    showProgress("trainProgress", s + 1, steps);
    show();
  }
  demo.run = { ...demo.run, data: { ...data, pairs: data.pairs.length, truncated }, lora: { ...demo.adapter.config, lr, steps, batch: examples.length, max_length: MAX_LENGTH }, losses };
  $("save").disabled = false;
  status(`aligned: ${losses.length - 1} LoRA steps`); // load the checkpoint again to align anew
});

$("lens").onclick = action(async () => {
  const { model, tokenizer, device } = demo;
  status("running the Logit Lens...");
  const ids = tokenizer.encode($("prompt").value);
  const input = qa.tensor(Int32Array.from(ids), { device, shape: [1, ids.length] });
  const rows = [];
  const out = qa.noGrad(() => model.forward(input, { logits: "none", outputHiddenStates: true }));
  for (const [layer, h] of out.hiddenStates.entries()) {
    const last = h.slice(1, ids.length - 1, ids.length).reshape([1, -1]);
    const p = qa.softmaxRow(await qa.noGrad(() => qa.lensLogits(model, last)).data(), 0, model.config.vocab_size);
    const [[id, prob]] = qa.topK(p, 1);
    rows.push({ layer, token: tokenizer.decode([id]), p: prob });
  }
  const escape = (s) => s.replaceAll("&", "&amp;").replaceAll("<", "&lt;");
  $("lensTable").innerHTML = `<tr><th>layer</th><th>top token</th><th>p</th></tr>${rows.map((r) => `<tr><td>${r.layer}</td><td>${escape(r.token)}</td><td>${r.p.toPrecision(3)}</td></tr>`).join("")}`;
  demo.run = { ...demo.run, lens: { prompt: $("prompt").value, rows } };
  status("Logit Lens: lm_head(norm(h_layer)) at the last token");
});

/** The session's report as Markdown (rendered by the same reportHtml as `qalign align`'s report.html), and its chart's file name. */
function reportMarkdown(run) {
  const cell = (s) => String(s).replaceAll("|", "\\|").replaceAll("\n", " ");
  const lines = [
    `# Question alignment in the browser: ${run.model}`,
    "",
    `LoRA on ${run.data.pairs} question pairs of \`${run.data.name}\` (${run.data.total} usable, ${run.data.skipped} skipped, ${run.data.truncated} truncated to ${run.lora.max_length} tokens), ${run.lora.steps} AdamW steps at lr ${run.lora.lr}, r ${run.lora.r}, lora_alpha ${run.lora.lora_alpha}, on ${run.lora.target_modules.join(", ")}. The loss is the mean cross-entropy of the English question's tokens.`,
    "",
    "| step | loss |",
    "|---|---|",
    ...run.losses.map((l, i) => `| ${i} | ${l.toFixed(4)} |`),
    "",
    "![training loss per step](loss.svg)",
  ];
  if (run.lens) {
    lines.push("", `## Logit Lens at the last token of "${cell(run.lens.prompt)}"`, "", "| layer | top token | p |", "|---|---|---|");
    lines.push(...run.lens.rows.map((r) => `| ${r.layer} | ${cell(JSON.stringify(r.token))} | ${r.p.toPrecision(3)} |`));
  }
  lines.push("", "## Settings", "", "```json", JSON.stringify({ model: run.model, data: run.data, lora: run.lora }, null, 2), "```", "");
  return lines.join("\n");
}

/** The training loss chart (Vega-Lite, rendered to SVG by qalign's renderSvg). */
function lossChart(losses) {
  return renderSvg({
    title: "training loss per LoRA step",
    data: { values: losses.map((loss, step) => ({ step, loss })) },
    mark: { type: "line", point: true },
    encoding: { x: { field: "step", type: "quantitative", title: "optimizer step", axis: { tickMinStep: 1 } }, y: { field: "loss", type: "quantitative", title: "mean target cross-entropy (nats)", scale: { zero: false } } },
  });
}

$("save").onclick = action(async () => {
  const { adapter, run } = demo;
  const opfs = qa.opfsFiles();
  showProgress("saveProgress", 0, 3);
  status("saving the adapter...");
  // PEFT's two files, written by qalign's saveAdapter into the OPFS, then offered from there.
  await qa.saveAdapter(adapter, `${OUT}/adapter`, run.model, opfs);
  showProgress("saveProgress", 1, 3);
  const links = [];
  for (const file of [qa.ADAPTER_CONFIG_FILE, qa.ADAPTER_WEIGHTS_FILE]) {
    const reader = await opfs.open(`${OUT}/adapter/${file}`);
    links.push({ file, blob: new Blob([await reader.read(0, reader.size)]) });
  }
  showProgress("saveProgress", 2, 3);
  status("rendering the report...");
  const html = qa.reportHtml(`Question alignment in the browser: ${run.model}`, reportMarkdown(run), { "loss.svg": await lossChart(run.losses) });
  links.push({ file: "report.html", blob: new Blob([html], { type: "text/html" }) });
  showProgress("saveProgress", 3, 3);
  for (const a of $("downloads").querySelectorAll("a")) URL.revokeObjectURL(a.href);
  $("downloads").replaceChildren(...links.map(({ file, blob }) => Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: file, textContent: `${file} (${blob.size} bytes)` })));
  status("downloads ready: the adapter's two files and the report");
});
