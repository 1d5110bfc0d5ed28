// Editing a result in latent space: move / scale a layer by its box on the canvas,
// flip, delete, reorder or re-prompt it; "Apply" sends the operations (indices of the
// saved scene, from 1) and the server re-harmonizes the global layer.

import { el, COLORS, postJSON, guarded, showMessage } from "./api.js";
import { BoxStage, fmtBox } from "./boxes.js";

const EPS = 1e-4;

export class EditTab {
  constructor({ stage, list, source, prompt, steps, apply, reset, submit }) {
    this.list = list;
    this.sourceEl = source;
    this.promptEl = prompt;
    this.stepsEl = steps;
    this.submit = submit;
    this.result = null;
    this.stage = new BoxStage(stage, {
      allowDraw: false, uniform: true,
      onChange: (index, box, how) => this.changed(index, box, how),
      onSelect: (index) => { this.selected = index; this.render(); },
    });
    apply.addEventListener("click", () => this.apply());
    reset.addEventListener("click", () => this.result && this.open(this.result));
  }

  open(result) {
    this.result = result;
    this.layers = (result.scene.layers || []).map((l, i) => ({
      index: i + 1, prompt: l.prompt, newPrompt: l.prompt, box: l.box || null,
      file: l.file || `layer_${String(i + 1).padStart(2, "0")}.png`,
      dx: 0, dy: 0, factor: 1, flip: false, deleted: false,
    }));
    this.order = this.layers.map((l) => l.index);
    this.selected = null;
    this.sourceEl.textContent = `Editing: ${result.scene.prompt}`;
    this.sourceEl.className = "";
    this.promptEl.value = "";
    this.render();
  }

  layer(index) { return this.layers.find((l) => l.index === index); }

  current(l) {
    if (!l.box) return null;
    const [x0, y0, x1, y1] = l.box;
    const cx = (x0 + x1) / 2 + l.dx, cy = (y0 + y1) / 2 + l.dy;
    const hw = ((x1 - x0) / 2) * l.factor, hh = ((y1 - y0) / 2) * l.factor;
    return [cx - hw, cy - hh, cx + hw, cy + hh];
  }

  changed(index, box, how) {
    const l = this.layer(index);
    const [x0, y0, x1, y1] = l.box;
    if (how === "move") {
      l.dx = (box[0] + box[2]) / 2 - (x0 + x1) / 2;
      l.dy = (box[1] + box[3]) / 2 - (y0 + y1) / 2;
    } else {
      l.factor = (box[2] - box[0]) / (x1 - x0);
    }
    this.render();
  }

  shift(index, by) {
    const i = this.order.indexOf(index), j = i + by;
    if (j < 0 || j >= this.order.length) return;
    [this.order[i], this.order[j]] = [this.order[j], this.order[i]];
    this.render();
  }

  render() {
    if (!this.result) return;
    const base = this.result.base;
    const shown = this.order.map((i) => this.layer(i)).filter((l) => !l.deleted);
    this.stage.setPictures([{ src: `${base}background.png`, alt: "background" }, ...shown.map((l) => {
      const [x0, y0, x1, y1] = l.box || [0, 0, 1, 1];
      const sx = l.flip ? -l.factor : l.factor;
      return {
        src: base + l.file, alt: l.prompt, style: {
          transformOrigin: `${((x0 + x1) / 2) * 100}% ${((y0 + y1) / 2) * 100}%`,
          transform: `translate(${l.dx * 100}%, ${l.dy * 100}%) scale(${sx}, ${l.factor})`,
        },
      };
    })]);
    this.stage.setItems(shown.filter((l) => l.box).map((l) => ({
      id: l.index, box: this.current(l), color: COLORS[(l.index - 1) % COLORS.length],
      label: `${l.index} ${l.newPrompt}`, selected: l.index === this.selected,
    })));
    this.list.replaceChildren(...this.order.map((index) => this.row(this.layer(index))));
  }

  row(l) {
    const li = el("li", {
      class: `${l.deleted ? "deleted" : ""} ${l.index === this.selected ? "selected" : ""}`,
      draggable: "true", "data-index": l.index,
      ondragstart: (e) => e.dataTransfer.setData("text/plain", String(l.index)),
      ondragover: (e) => e.preventDefault(),
      ondrop: (e) => {
        e.preventDefault();
        const from = Number(e.dataTransfer.getData("text/plain"));
        this.order = this.order.filter((i) => i !== from);
        this.order.splice(this.order.indexOf(l.index), 0, from);
        this.render();
      },
    });
    const swatch = el("span", { class: "swatch", title: "drag to reorder" });
    swatch.style.background = COLORS[(l.index - 1) % COLORS.length];
    const input = el("input", { type: "text", value: l.newPrompt, class: "layer-prompt", "aria-label": `layer ${l.index} prompt` });
    input.addEventListener("input", () => { l.newPrompt = input.value; });
    const flip = el("input", { type: "checkbox", checked: l.flip, title: "mirror left to right" });
    flip.addEventListener("change", () => { l.flip = flip.checked; this.render(); });
    const stop = (fn) => (e) => { e.stopPropagation(); fn(); };
    li.append(el("span", { text: String(l.index) }), swatch, input,
      el("span", { class: "boxinfo", text: fmtBox(this.current(l)) }),
      el("label", { title: "mirror" }, flip, " flip"),
      el("button", { type: "button", text: "\u2191", title: "lower", onclick: stop(() => this.shift(l.index, -1)) }),
      el("button", { type: "button", text: "\u2193", title: "higher", onclick: stop(() => this.shift(l.index, 1)) }),
      el("button", { type: "button", class: "delete", text: l.deleted ? "undo" : "\u2715", title: "delete",
        onclick: stop(() => { l.deleted = !l.deleted; this.render(); }) }));
    return li;
  }

  ops() {
    const ops = [];
    for (const l of this.layers) {
      if (l.deleted) { ops.push({ op: "delete", index: l.index }); continue; }
      if (l.newPrompt.trim() !== l.prompt) ops.push({ op: "reprompt", index: l.index, prompt: l.newPrompt });
      if (Math.abs(l.dx) > EPS || Math.abs(l.dy) > EPS) ops.push({ op: "move", index: l.index, dx: l.dx, dy: l.dy });
      if (Math.abs(l.factor - 1) > EPS) ops.push({ op: "scale", index: l.index, factor: l.factor });
      if (l.flip) ops.push({ op: "flip", index: l.index });
    }
    const kept = this.order.filter((i) => !this.layer(i).deleted);
    if (kept.some((v, k) => v !== [...kept].sort((a, b) => a - b)[k])) ops.push({ op: "order", order: kept });
    return ops;
  }

  apply() {
    if (!this.result) { showMessage("error: pick a result to edit first (Results tab: Edit this)"); return; }
    return guarded(async () => {
      const body = { result: this.result.id, ops: this.ops() };
      if (this.promptEl.value.trim()) body.prompt = this.promptEl.value.trim();
      if (this.stepsEl.value) body.steps = Number(this.stepsEl.value);
      this.submit(await postJSON("/api/edit", body));
    });
  }
}
