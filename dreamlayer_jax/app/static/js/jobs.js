// The queue (every client's jobs, one runs at a time on the model: progress bar, place in
// the queue, cancel) and the history of results (open one, tick runs to compare).

import { el, getJSON, postJSON, guarded, clientId, showMessage } from "./api.js";

export class Jobs {
  constructor({ queue, history, onResult, onOpen, onCompare }) {
    this.queueEl = queue;
    this.historyEl = history;
    this.onResult = onResult;
    this.onOpen = onOpen;
    this.onCompare = onCompare;
    this.mine = new Set();  // jobs this page submitted and still waits for
    this.compare = new Set();
    this.current = null;
    this.results = [];
    this.timer = null;
  }

  start() { this.tick(); this.refreshHistory(); }

  track(job) {
    this.mine.add(job.id);
    this.renderQueue([job, ...(this.lastJobs || []).filter((j) => j.id !== job.id)]);
    this.schedule(100);
  }

  schedule(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick(), ms);
  }

  async tick() {
    let jobs = [];
    try { jobs = await getJSON("/api/jobs"); } catch (_) { this.schedule(2000); return; }
    this.lastJobs = jobs;
    this.renderQueue(jobs);
    for (const job of jobs) {
      if (!this.mine.has(job.id) || job.status === "queued" || job.status === "running") continue;
      this.mine.delete(job.id);
      if (job.status === "done") {
        await this.refreshHistory();
        this.onResult(job.result, job);
      } else if (job.status === "failed") {
        showMessage(job.error || "error: the job failed");
      } else if (job.status === "cancelled") {
        showMessage(`cancelled: ${job.label}`, "info");
      }
    }
    const busy = jobs.some((j) => j.status === "queued" || j.status === "running");
    this.schedule(busy || this.mine.size ? 300 : 1500);
  }

  renderQueue(jobs) {
    const active = jobs.filter((j) => j.status === "queued" || j.status === "running");
    const recent = jobs.filter((j) => !active.includes(j)).slice(-4).reverse();
    const rows = [...active, ...recent].map((job) => {
      const running = job.done ? `running ${job.done}/${job.total}` : "starting (compiling)";
      const state = job.status === "running" ? running
        : job.status === "queued" ? `queued (#${job.position} in line)` : job.status;
      const li = el("li", { class: `${job.status} ${job.client === clientId ? "mine" : ""}`, "data-job": job.id },
        el("div", {}, el("span", { class: "status", text: state }), " \u00b7 ", job.kind,
          job.client === clientId ? " (yours)" : ""),
        el("div", { class: "label", text: job.label }));
      if (job.status === "running") {
        li.append(el("progress", { max: String(job.total || 1), value: String(job.done) }));
      }
      if (job.status === "failed") li.append(el("div", { class: "error", text: job.error }));
      if (job.status === "queued" || job.status === "running") {
        li.append(el("button", {
          type: "button", class: "cancel", text: "Cancel",
          onclick: () => guarded(async () => { await postJSON(`/api/jobs/${job.id}/cancel`); this.schedule(50); }),
        }));
      }
      return li;
    });
    this.queueEl.replaceChildren(...(rows.length ? rows : [el("li", { class: "empty", text: "idle" })]));
  }

  async refreshHistory() {
    try { this.results = await getJSON("/api/results"); } catch (_) { return; }
    this.renderHistory();
  }

  renderHistory() {
    this.historyEl.replaceChildren(...this.results.map((r) => {
      const box = el("input", { type: "checkbox", title: "compare", checked: this.compare.has(r.id) });
      box.addEventListener("click", (e) => e.stopPropagation());
      box.addEventListener("change", () => {
        if (box.checked) this.compare.add(r.id); else this.compare.delete(r.id);
        this.onCompare(this.results.filter((x) => this.compare.has(x.id)));
      });
      const mode = r.scene.mode ? ` (${r.scene.mode})` : "";
      return el("li", {
        class: r.id === this.current ? "current" : "", "data-result": r.id,
        onclick: () => this.onOpen(r.id),
      }, box, el("img", { src: `${r.base}composite.png`, alt: "" }),
      el("span", { class: "label", text: `${r.scene.prompt}${mode}`, title: r.scene.prompt }));
    }));
  }

  find(id) { return this.results.find((r) => r.id === id); }
}
