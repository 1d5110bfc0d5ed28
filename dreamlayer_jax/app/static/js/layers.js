// The foreground list of a scene being composed (Compose and Decompose tabs): prompts,
// boxes drawn on a BoxStage, paint order by dragging (or the arrows), delete.

import { el, COLORS, showMessage } from "./api.js";
import { BoxStage, fmtBox } from "./boxes.js";

let nextKey = 1;

export class LayerEditor {
  constructor({ list, stage, addButton, max, name }) {
    this.list = list;
    this.max = max;
    this.name = name;
    this.layers = [];  // {key, prompt, box}
    this.selected = null;
    this.stage = new BoxStage(stage, {
      onDraw: (box) => this.drawn(box),
      onChange: (key, box) => { this.find(key).box = box; this.render(); },
      onSelect: (key) => { this.selected = key; this.render(); },
    });
    addButton.addEventListener("click", () => this.add());
  }

  find(key) { return this.layers.find((l) => l.key === key); }

  add(box = null, prompt = "") {
    if (this.layers.length >= this.max) {
      showMessage(`error: this model takes at most ${this.max} foregrounds`);
      return null;
    }
    const layer = { key: nextKey++, prompt, box };
    this.layers.push(layer);
    this.selected = layer.key;
    this.render();
    const input = this.list.querySelector(`li[data-key="${layer.key}"] input`);
    if (input && !prompt) input.focus();
    return layer;
  }

  drawn(box) {
    const current = this.find(this.selected);
    if (current && !current.box) current.box = box;
    else if (!this.add(box)) return;
    this.render();
  }

  remove(key) {
    this.layers = this.layers.filter((l) => l.key !== key);
    if (this.selected === key) this.selected = null;
    this.render();
  }

  shift(key, by) {
    const i = this.layers.findIndex((l) => l.key === key);
    const j = i + by;
    if (i < 0 || j < 0 || j >= this.layers.length) return;
    [this.layers[i], this.layers[j]] = [this.layers[j], this.layers[i]];
    this.render();
  }

  dropOn(fromKey, toKey) {
    const from = this.layers.findIndex((l) => l.key === fromKey);
    const moved = this.layers.splice(from, 1)[0];
    const to = this.layers.findIndex((l) => l.key === toKey);
    this.layers.splice(to < 0 ? this.layers.length : to, 0, moved);
    this.render();
  }

  color(i) { return COLORS[i % COLORS.length]; }

  render() {
    this.list.replaceChildren(...this.layers.map((layer, i) => this.row(layer, i)));
    this.stage.setItems(this.layers.map((layer, i) => ({
      id: layer.key, box: layer.box, color: this.color(i),
      label: `${i + 1} ${layer.prompt}`.trim(), selected: layer.key === this.selected,
    })));
  }

  row(layer, i) {
    const li = el("li", {
      "data-key": layer.key, draggable: "true", class: layer.key === this.selected ? "selected" : "",
      onclick: () => { if (this.selected !== layer.key) { this.selected = layer.key; this.render(); } },
      ondragstart: (e) => e.dataTransfer.setData("text/plain", String(layer.key)),
      ondragover: (e) => { e.preventDefault(); li.classList.add("dragover"); },
      ondragleave: () => li.classList.remove("dragover"),
      ondrop: (e) => { e.preventDefault(); this.dropOn(Number(e.dataTransfer.getData("text/plain")), layer.key); },
    });
    const swatch = el("span", { class: "swatch", title: "drag to reorder" });
    swatch.style.background = this.color(i);
    const input = el("input", {
      type: "text", value: layer.prompt, placeholder: `foreground ${i + 1} prompt`,
      class: "layer-prompt", "aria-label": `foreground ${i + 1} prompt`,
    });
    input.addEventListener("input", () => {
      layer.prompt = input.value;
      this.stage.setItems(this.stage.items.map((it) => it.id === layer.key
        ? { ...it, label: `${i + 1} ${layer.prompt}` } : it));
    });
    li.append(
      el("span", { text: String(i + 1) }), swatch, input,
      el("span", { class: "boxinfo", text: fmtBox(layer.box) }),
      el("button", { type: "button", title: "lower (paint earlier)", text: "\u2191", onclick: (e) => { e.stopPropagation(); this.shift(layer.key, -1); } }),
      el("button", { type: "button", title: "higher (paint later)", text: "\u2193", onclick: (e) => { e.stopPropagation(); this.shift(layer.key, 1); } }),
      el("button", { type: "button", title: "clear the box (draw it again)", text: "\u25a1", onclick: (e) => { e.stopPropagation(); layer.box = null; this.selected = layer.key; this.render(); } }),
      el("button", { type: "button", title: "delete", text: "\u2715", onclick: (e) => { e.stopPropagation(); this.remove(layer.key); } }),
    );
    return li;
  }

  // scene.json's layout
  scene(background, prompt = "") {
    return {
      prompt, background: { prompt: background },
      layers: this.layers.map((l) => (l.box ? { prompt: l.prompt, box: l.box } : { prompt: l.prompt })),
    };
  }

  load(scene) {
    this.layers = [];
    for (const layer of scene.layers || []) {
      this.layers.push({ key: nextKey++, prompt: layer.prompt || "", box: layer.box || null });
    }
    this.selected = this.layers.length ? this.layers[0].key : null;
    this.render();
  }
}
