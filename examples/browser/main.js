// The demo page's logic: plain JavaScript on qalign's browser entry (served as /qalign.js by
// `npm run demo:browser`, a bundle of src/browser.ts).
import * as qa from "/qalign.js";

const $ = (id) => document.getElementById(id);
const status = (text) => ($("status").textContent = text);
const HUB = "https://huggingface.co";
let device, model, tokenizer, adapter;

/** Where the checkpoint is: picked files, a Hub name (its resolve/main/ URLs) or a folder URL. */
function source() {
  const picked = [...$("folder").files];
  if (picked.length > 0) {
    const dir = picked[0].webkitRelativePath.split("/")[0];
    return { dir, files: qa.blobFiles(new Map(picked.map((f) => [f.webkitRelativePath, f]))) };
  }
  const name = $("source").value.trim();
  if (/^[\w.-]+\/[\w.-]+$/.test(name)) return { dir: ".", files: qa.urlFiles(`${HUB}/${name}/resolve/main/`) };
  return { dir: ".", files: qa.urlFiles(new URL(name.replace(/\/?$/, "/"), location.href).href) };
}

$("load").onclick = async () => {
  try {
    status("loading...");
    device ??= await qa.init("webgpu");
    model?.dispose();
    const { dir, files } = source();
    model = await qa.loadModel(dir, { device, files, onProgress: (done, total) => status(`loading: ${((100 * done) / total).toFixed(0)}%`) });
    tokenizer = await qa.loadTokenizer(dir, files);
    adapter = null;
    for (const b of ["generate", "align", "lens"]) $(b).disabled = tokenizer === null;
    status(`loaded: ${model.config.model_type}, ${model.config.num_hidden_layers} layers, hidden_size ${model.config.hidden_size}${tokenizer ? "" : " (no tokenizer.json: generation needs one)"}`);
  } catch (e) {
    status(`error: ${e.message}`);
  }
};

$("generate").onclick = async () => {
  status("generating...");
  const prompt = tokenizer.encode($("prompt").value);
  const ids = await qa.generate(model, prompt, { maxNewTokens: 8 }); // the new tokens
  $("generated").textContent = tokenizer.decode([...prompt.filter((id) => id !== tokenizer.bosId), ...ids]);
  status("generated 8 tokens (greedy)");
};

$("align").onclick = async () => {
  // Question alignment's examples: the prompt is the foreign question, the target its English translation.
  const examples = $("pairs").value.split("\n").filter((l) => l.includes("\t")).map((l) => {
    const [src, en] = l.split("\t");
    const prompt = tokenizer.encode(src);
    return { ids: [...prompt, ...tokenizer.encode(` ${en}`).filter((id) => id !== tokenizer.bosId)], promptLen: prompt.length };
  });
  if (examples.length === 0) return status("no pairs: one a line, the two questions separated by a tab");
  adapter ??= qa.applyLora(model, { r: 8, lora_alpha: 16, seed: 0 });
  const opt = new qa.AdamW(adapter.params, { lr: 1e-3 });
  const losses = [(await qa.meanTargetLoss(model, examples, examples.length)).loss];
  for (let s = 0; s < Number($("steps").value); s++) {
    qa.tidy(() => {
      const batch = qa.collate(examples, device);
      qa.targetNllSum(model, batch).div(batch.targetCount).backward();
    });
    opt.step();
    qa.zeroGrad(adapter.params);
    losses.push((await qa.meanTargetLoss(model, examples, examples.length)).loss);
    $("losses").textContent = losses.map((l, i) => `step ${i}: loss ${l.toFixed(4)}`).join("\n");
  }
  status(`aligned: ${losses.length - 1} LoRA steps`);
};

$("lens").onclick = async () => {
  const ids = tokenizer.encode($("prompt").value);
  const input = qa.tensor(Int32Array.from(ids), { device, shape: [1, ids.length] });
  const rows = [];
  const out = qa.noGrad(() => model.forward(input, { logits: "none", outputHiddenStates: true }));
  for (const [layer, h] of out.hiddenStates.entries()) {
    const last = h.slice(1, ids.length - 1, ids.length).reshape([1, -1]);
    const p = qa.softmaxRow(await qa.noGrad(() => qa.lensLogits(model, last)).data(), 0, model.config.vocab_size);
    const [[id, prob]] = qa.topK(p, 1);
    rows.push(`<tr><td>${layer}</td><td>${tokenizer.decode([id]).replaceAll("<", "&lt;")}</td><td>${prob.toFixed(3)}</td></tr>`);
  }
  $("lensTable").innerHTML = `<tr><th>layer</th><th>top token</th><th>p</th></tr>${rows.join("")}`;
  status("Logit Lens: lm_head(norm(h_layer)) at the last token");
};
