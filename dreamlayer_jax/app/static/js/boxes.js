// A square stage (the model's aspect) with pictures stacked on it and boxes over them:
// drag on empty canvas to draw a box, drag a box to move it, its corner to resize it.
// Boxes are [x0, y0, x1, y1] in fractions of the canvas, as scene.json has them.

import { el } from "./api.js";

const MIN = 0.03;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const round = (v) => Math.round(v * 1000) / 1000;

export function fmtBox(box) {
  return box ? box.map((v) => v.toFixed(2)).join(", ") : "no box";
}

export class BoxStage {
  // opts: allowDraw (bool), uniform (resize keeps the shape, about the centre),
  // onDraw(box), onChange(id, box, how: "move" | "resize"), onSelect(id)
  constructor(root, opts = {}) {
    this.root = root;
    this.opts = { allowDraw: true, uniform: false, ...opts };
    this.pictures = el("div", { class: "pictures" });
    this.layer = el("div", { class: "boxes" });
    root.append(this.pictures, this.layer);
    this.items = [];
    this.drag = null;
    root.addEventListener("pointerdown", (e) => this.down(e));
    root.addEventListener("pointermove", (e) => this.move(e));
    root.addEventListener("pointerup", (e) => this.up(e));
    root.addEventListener("pointercancel", () => { this.drag = null; this.render(); });
  }

  // pictures: [{src, style, className}] bottom first
  setPictures(pictures) {
    this.pictures.replaceChildren(...pictures.map((p) => {
      const img = el("img", { src: p.src, alt: p.alt || "", class: p.className || "" });
      if (p.style) Object.assign(img.style, p.style);
      return img;
    }));
  }

  // items: [{id, box, color, label, selected}]
  setItems(items) { this.items = items; this.render(); }

  point(e) {
    const r = this.root.getBoundingClientRect();
    return [clamp((e.clientX - r.left) / r.width, 0, 1), clamp((e.clientY - r.top) / r.height, 0, 1)];
  }

  down(e) {
    if (e.button !== 0) return;
    const [x, y] = this.point(e);
    const boxEl = e.target.closest(".box");
    if (boxEl) {
      const item = this.items.find((i) => String(i.id) === boxEl.dataset.id);
      if (!item) return;
      const how = e.target.classList.contains("handle") ? "resize" : "move";
      this.drag = { how, item, start: [x, y], box: item.box.slice(), now: item.box.slice() };
      if (this.opts.onSelect) this.opts.onSelect(item.id);
    } else if (this.opts.allowDraw) {
      this.drag = { how: "draw", start: [x, y], now: [x, y, x, y] };
    } else {
      return;
    }
    this.root.setPointerCapture(e.pointerId);
    e.preventDefault();
  }

  move(e) {
    if (!this.drag) return;
    const [x, y] = this.point(e);
    const d = this.drag;
    const [sx, sy] = d.start;
    if (d.how === "draw") {
      d.now = [Math.min(sx, x), Math.min(sy, y), Math.max(sx, x), Math.max(sy, y)];
    } else if (d.how === "move") {
      const [x0, y0, x1, y1] = d.box;
      const dx = clamp(x - sx, -x0, 1 - x1);
      const dy = clamp(y - sy, -y0, 1 - y1);
      d.now = [x0 + dx, y0 + dy, x1 + dx, y1 + dy];
    } else if (this.opts.uniform) {
      const [x0, y0, x1, y1] = d.box;
      const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2, hw = (x1 - x0) / 2, hh = (y1 - y0) / 2;
      let f = Math.max(Math.abs(x - cx) / hw, Math.abs(y - cy) / hh);
      f = clamp(f, 0.2, Math.min(cx / hw, (1 - cx) / hw, cy / hh, (1 - cy) / hh, 5));
      d.now = [cx - hw * f, cy - hh * f, cx + hw * f, cy + hh * f];
      d.factor = f;
    } else {
      const [x0, y0] = d.box;
      d.now = [x0, y0, Math.max(x, x0 + MIN), Math.max(y, y0 + MIN)];
    }
    this.render();
  }

  up(e) {
    const d = this.drag;
    if (!d) return;
    this.drag = null;
    if (this.root.hasPointerCapture(e.pointerId)) this.root.releasePointerCapture(e.pointerId);
    const box = d.now.map((v) => round(clamp(v, 0, 1)));
    if (d.how === "draw") {
      if (box[2] - box[0] >= MIN && box[3] - box[1] >= MIN && this.opts.onDraw) this.opts.onDraw(box);
      this.render();
      return;
    }
    const moved = box.some((v, i) => Math.abs(v - d.box[i]) > 1e-4);
    if (moved && this.opts.onChange) this.opts.onChange(d.item.id, box, d.how, d);
    this.render();
  }

  render() {
    const nodes = [];
    for (const item of this.items) {
      const dragging = this.drag && this.drag.item === item;
      const box = dragging ? this.drag.now : item.box;
      if (!box) continue;
      nodes.push(this.boxNode(item, box));
    }
    if (this.drag && this.drag.how === "draw") {
      nodes.push(this.boxNode({ id: "new", color: "#333", label: "new" }, this.drag.now, "drawing"));
    }
    this.layer.replaceChildren(...nodes);
  }

  boxNode(item, box, extra = "") {
    const [x0, y0, x1, y1] = box;
    const node = el("div", {
      class: `box ${item.selected ? "selected" : ""} ${extra}`, "data-id": item.id,
      title: item.label || "",
    }, el("span", { class: "tag", text: item.label || "" }), el("span", { class: "handle" }));
    Object.assign(node.style, {
      left: `${x0 * 100}%`, top: `${y0 * 100}%`, width: `${(x1 - x0) * 100}%`,
      height: `${(y1 - y0) * 100}%`, borderColor: item.color,
    });
    node.querySelector(".tag").style.background = item.color;
    node.querySelector(".handle").style.borderColor = item.color;
    return node;
  }
}
