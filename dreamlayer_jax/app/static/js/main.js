// The page: tabs, the Compose and Decompose forms, opening saved scenes, and the wiring
// between the queue, the results and the editor.

import { getJSON, postJSON, postFiles, guarded, showMessage, clearMessage } from "./api.js";
import { LayerEditor } from "./layers.js";
import { Jobs } from "./jobs.js";
import { renderResult, renderCompare } from "./results.js";
import { EditTab } from "./edit.js";

const $ = (id) => document.getElementById(id);

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${name}`;
}

function settings() {
  return {
    steps: Number($("steps").value), guidance: Number($("guidance").value), seed: Number($("seed").value),
    scheduler: $("scheduler").value, caca: $("caca").checked, lssa: $("lssa").checked, irh: $("irh").checked,
  };
}

async function main() {
  const info = await getJSON("/api/info");
  $("model-info").textContent = `model ${info.model} (${info.variant} variant, ${info.resolution}\u00d7${info.resolution}, up to ${info.max_foregrounds} foregrounds)`;
  for (const name of info.schedulers) {
    $("scheduler").append(new Option(name + (name === info.scheduler ? " (model's)" : ""), name, false, name === info.scheduler));
  }
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));

  const compose = new LayerEditor({ list: $("compose-layers"), stage: $("compose-stage"), addButton: $("add-layer"), max: info.max_foregrounds, name: "compose" });
  compose.stage.setPictures([]);
  compose.render();
  const dec = new LayerEditor({ list: $("decompose-layers"), stage: $("decompose-stage"), addButton: $("dec-add-layer"), max: info.max_foregrounds, name: "decompose" });
  let upload = null;

  const view = $("result-view");
  const editor = new EditTab({
    stage: $("edit-stage"), list: $("edit-layers"), source: $("edit-source"), prompt: $("edit-prompt"),
    steps: $("edit-steps"), apply: $("edit-apply"), reset: $("edit-reset"), submit: (job) => jobs.track(job),
  });
  const loadScene = (scene) => {
    $("bg-prompt").value = scene.background ? (scene.background.prompt ?? scene.background) : "";
    $("global-prompt").value = scene.prompt || "";
    compose.load(scene);
    if (scene.steps) $("steps").value = scene.steps;
    if (scene.guidance_scale !== undefined) $("guidance").value = scene.guidance_scale;
    if (scene.seed !== undefined) $("seed").value = Array.isArray(scene.seed) ? scene.seed[0] : scene.seed;
    for (const key of ["caca", "lssa", "irh"]) if (scene[key] !== undefined) $(key).checked = !!scene[key];
    if (scene.scheduler) $("scheduler").value = scene.scheduler;
  };
  const openResult = async (id) => {
    const result = await guarded(() => getJSON(`/api/results/${id}`));
    if (!result) return;
    jobs.current = id;
    jobs.renderHistory();
    renderResult(view, result, {
      onEdit: (r) => { editor.open(r); showTab("edit"); },
      onCompose: (r) => { loadScene(r.scene); showTab("compose"); },
    });
    showTab("results");
  };
  const jobs = new Jobs({
    queue: $("queue"), history: $("history"),
    onResult: (id, job) => { openResult(id); showMessage(`done: ${job.label}`, "info"); },
    onOpen: openResult,
    onCompare: (runs) => { renderCompare($("compare"), runs); showTab("results"); },
  });
  renderCompare($("compare"), []);
  jobs.start();

  $("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });
  $("generate").addEventListener("click", () => guarded(async () => {
    const scene = compose.scene($("bg-prompt").value, $("global-prompt").value);
    jobs.track(await postJSON("/api/generate", { scene, ...settings() }));
  }));

  const openFiles = (input) => guarded(async () => {
    const files = [...input.files];
    input.value = "";
    if (!files.length) return;
    const opened = await postFiles("/api/open", "files", files);
    loadScene(opened.scene);
    if (opened.result) {
      await jobs.refreshHistory();
      await openResult(opened.result);
      showMessage("opened the result: edit it, or compose from it", "info");
    } else {
      showTab("compose");
      showMessage("opened the scene: generate it, or change it first", "info");
    }
  });
  $("open-files").addEventListener("change", (e) => openFiles(e.target));
  $("open-folder").addEventListener("change", (e) => openFiles(e.target));

  $("decompose-file").addEventListener("change", (e) => guarded(async () => {
    const files = [...e.target.files];
    e.target.value = "";
    if (!files.length) return;
    upload = await postFiles("/api/uploads", "file", files);
    dec.stage.setPictures([{ src: upload.url, alt: "uploaded picture" }]);
    clearMessage();
  }));
  $("decompose-run").addEventListener("click", () => guarded(async () => {
    if (!upload) throw new Error("error: upload a picture first");
    const scene = dec.scene($("dec-bg-prompt").value);
    jobs.track(await postJSON("/api/decompose", { upload: upload.id, scene, steps: Number($("dec-steps").value) }));
  }));
}

main().catch((err) => showMessage(`error: the page could not start: ${err.message}`));
