// A result: the layers stacked (visibility toggles), the global layer, each layer on its
// own (foregrounds over a checkerboard), downloads; and runs compared side by side.

import { el } from "./api.js";

function layerFiles(result) {
  const scene = result.scene;
  const fgs = (scene.layers || []).map((l, i) => ({
    name: l.file || `layer_${String(i + 1).padStart(2, "0")}.png`, label: `${i + 1} ${l.prompt}`,
  }));
  return { background: { name: "background.png", label: `background: ${scene.background.prompt}` }, fgs };
}

function stack(result, cls = "stack") {
  const { background, fgs } = layerFiles(result);
  const box = el("div", { class: `${cls} checker` });
  const imgs = [background, ...fgs].map((f, i) => el("img", {
    src: result.base + f.name, alt: f.label, class: i ? "layer-img fg" : "layer-img bg", "data-file": f.name,
  }));
  box.append(...imgs);
  return { box, imgs };
}

function meta(scene) {
  const parts = [scene.mode || "generate", `${scene.steps} steps`, `guidance ${scene.guidance_scale}`,
    `seed ${Array.isArray(scene.seed) ? scene.seed[0] : scene.seed}`, scene.scheduler,
    `CACA ${scene.caca ? "on" : "off"}`, `LSSA ${scene.lssa ? "on" : "off"}`, `IRH ${scene.irh ? "on" : "off"}`];
  return parts.filter((p) => p !== undefined).join(" \u00b7 ");
}

function tile(src, caption, checker, file) {
  return el("div", { class: "tile" },
    el("div", { class: `pic ${checker ? "checker" : ""}` }, el("img", { src, alt: caption, class: "tile-img", "data-file": file })),
    el("div", { class: "cap", text: caption, title: caption }));
}

export function renderResult(root, result, { onEdit, onCompose }) {
  const { background, fgs } = layerFiles(result);
  const { box, imgs } = stack(result);
  const toggles = el("div", { class: "visibility" }, el("strong", { text: "Visible layers" }));
  [background, ...fgs].forEach((f, i) => {
    const check = el("input", { type: "checkbox", checked: true, "data-file": f.name });
    check.addEventListener("change", () => { imgs[i].style.visibility = check.checked ? "visible" : "hidden"; });
    toggles.append(el("label", {}, check, ` ${f.label}`));
  });
  const dl = (name, text) => el("a", { href: `${result.base}${name}?download=1`, download: "", text, "data-download": name });
  const downloads = el("div", { class: "downloads" },
    dl("layers.psd", "PSD"), dl("layers.ora", "ORA"), dl("scene.json", "scene.json"),
    dl("composite.png", "global PNG"), dl("background.png", "background PNG"),
    ...fgs.map((f, i) => dl(f.name, `layer ${i + 1} PNG`)),
    el("a", { href: `/api/results/${result.id}/zip`, download: "", text: "all (.zip)", "data-download": "zip" }));
  const buttons = el("div", { class: "row" },
    el("button", { type: "button", class: "primary", text: "Edit this", onclick: () => onEdit(result) }),
    el("button", { type: "button", text: "Compose from this", onclick: () => onCompose(result) }));
  root.replaceChildren(
    el("h2", { text: result.scene.prompt }),
    el("div", { class: "meta", text: meta(result.scene) }),
    buttons, downloads,
    el("div", { class: "result-main" },
      el("div", { class: "figure" }, el("strong", { text: "Layers composited" }), box),
      el("div", { class: "figure" }, el("strong", { text: "Global layer" }),
        el("div", { class: "stack" }, el("img", { src: `${result.base}composite.png`, alt: "global layer", class: "global-img" }))),
      toggles),
    el("div", { class: "tiles" },
      tile(result.base + background.name, background.label, false, background.name),
      ...fgs.map((f) => tile(result.base + f.name, f.label, true, f.name)),
      tile(`${result.base}composite.png`, "global layer", false, "composite.png")));
  root.dataset.result = result.id;
}

export function renderCompare(root, results) {
  if (!results.length) {
    root.replaceChildren(el("p", { class: "empty", text: "Tick two or more runs in the history to see them side by side." }));
    return;
  }
  root.replaceChildren(...results.map((r) => el("div", { class: "run", "data-result": r.id },
    el("div", { class: "stack" }, el("img", { src: `${r.base}composite.png`, alt: "global layer" })),
    stack(r).box,
    el("div", { class: "cap", text: r.scene.prompt }),
    el("div", { class: "meta", text: meta(r.scene) }))));
}
