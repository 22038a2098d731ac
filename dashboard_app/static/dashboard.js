// mpobs dashboard: polls the JSON API (setTimeout after each answer, so slow answers never pile up)
// and renders it. Log lines are attacker-controlled: they only ever go into textContent.
"use strict";
(function () {
  const num = new Intl.NumberFormat("en-US");
  const dec1 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
  const $ = function (id) { return document.getElementById(id); };
  const state = { tick: 0, selected: null, tracesSig: "", errorsSig: "", traces: [] };

  function el(tag, cls, textValue) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (textValue !== undefined && textValue !== null) e.textContent = String(textValue);
    return e;
  }
  function setText(id, v) { const e = $(id); if (e.textContent !== v) e.textContent = v; }
  function fmtN(v) { return v === null || v === undefined ? "–" : num.format(v); }
  function fmtBytes(b) {
    if (b === null || b === undefined) return "–";
    const u = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return dec1.format(b) + " " + u[i];
  }
  function fmtDur(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return dec1.format(s) + " s";
    const m = Math.floor(s / 60), r = Math.round(s % 60);
    return m < 60 ? m + " min " + r + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function fmtSec(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1e-3) return dec1.format(s * 1e6) + " µs";
    if (s < 1) return dec1.format(s * 1e3) + " ms";
    return dec1.format(s) + " s";
  }
  function fmtShares(t) {  // a worker's time_shares: "busy % / waiting % / output %"
    return t ? [t.busy, t.waiting, t.output_wait].map(function (x) { return Math.round((x || 0) * 100) + " %"; }).join(" / ") : "–";
  }
  function fmtLatency(h) {  // a /stats histogram summary: "p50 / p90 / p99"
    return h && h.count ? [h.p50_s, h.p90_s, h.p99_s].map(fmtSec).join(" / ") : "–";
  }
  function clock(ts) {
    const d = new Date(ts * 1000);
    return d.toLocaleTimeString("en-GB", { hour12: false });
  }

  async function getJSON(path) {
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { const e = new Error("unauthorized"); e.auth = true; throw e; }
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  // -- top cards -------------------------------------------------------------------------------
  function renderSummary(st) {
    const s = st.system;
    setText("run-input", s.input ? s.input + (st.dashboard && st.dashboard.source === "saved" ? "  (saved run)" : "") : "");
    const pill = $("run-state");
    pill.textContent = s.state;
    pill.className = "pill state-" + s.state;
    setText("k-lines", fmtN(s.total_lines));
    setText("k-lines-sub", s.lines_total ? "of " + fmtN(s.lines_total) : "elapsed " + fmtDur(s.elapsed_s));
    const r10 = s.lines_per_second_10s;
    setText("k-rate", s.state === "running" || !s.lines_per_second ? fmtN(Math.round(r10 || 0)) : fmtN(Math.round(s.lines_per_second)));
    setText("k-rate-sub", "run average " + fmtN(Math.round(s.lines_per_second || 0)) + " · 1 min " + fmtN(Math.round(s.lines_per_second_1m || 0)));
    setText("k-errors", fmtN(s.total_errors));
    $("k-errors").classList.toggle("bad", s.total_errors > 0);
    setText("k-errors-sub", dec1.format(s.errors_per_second_10s || 0) + "/s · records dropped " + fmtN(s.errors_dropped || 0));
    const pct = (s.progress || 0) * 100;
    // A stream's size is not known: no share and no ETA, only what has been read.
    setText("k-progress", s.progress === null ? fmtBytes(s.bytes_done) + " read" : dec1.format(pct) + " %");
    $("k-progress-bar").style.width = (s.progress === null ? 0 : Math.min(100, pct)) + "%";
    setText("k-eta", s.state === "running" ? (s.eta_s !== null ? "ETA " + fmtDur(s.eta_s) : "ETA –") :
      (s.state === "done" ? "finished in " : s.state + " after ") + fmtDur(s.elapsed_s));
    setText("k-workers", (s.workers_alive !== undefined ? fmtN(s.workers_alive) + " / " : "") + fmtN(s.workers));
    setText("k-workers-sub", "restarted " + fmtN(s.workers_restarted || 0) + " · tasks " + fmtN(s.tasks_done) + (s.tasks_total ? " / " + fmtN(s.tasks_total) : ""));
  }

  // -- tables ----------------------------------------------------------------------------------
  function row(cells, attrs) {
    const tr = el("tr");
    for (const k in attrs || {}) tr.setAttribute(k, attrs[k]);
    cells.forEach(function (c) {
      const td = el("td", c.cls, c.node ? null : c.v);
      if (c.field) td.setAttribute("data-field", c.field);
      if (c.node) td.appendChild(c.node);
      tr.appendChild(td);
    });
    return tr;
  }
  function renderProcessors(st) {
    const body = $("proc-table").tBodies[0];
    const rows = [];
    Object.keys(st.processors).forEach(function (pid) {
      const p = st.processors[pid];
      const bar = el("div", "share");
      const fill = el("div", "share-fill");
      fill.style.width = Math.min(100, (p.share_of_time || 0) * 100) + "%";
      bar.appendChild(fill);
      const wrap = el("div", "share-cell");
      wrap.appendChild(bar);
      wrap.appendChild(el("span", "share-pct", dec1.format((p.share_of_time || 0) * 100) + " %"));
      rows.push(row([
        { v: pid, cls: "id" }, { v: p.type, cls: "muted" },
        { v: fmtN(p.lines_in), cls: "num", field: "lines_in" }, { v: fmtN(p.lines_out), cls: "num", field: "lines_out" },
        { v: p.lines_in ? dec1.format(p.lines_out / p.lines_in * 100) + " %" : "–", cls: "num muted" },
        { v: fmtN(p.errors), cls: "num" + (p.errors ? " bad" : ""), field: "errors" },
        { v: fmtN(Math.round(p.rate_10s || 0)), cls: "num", field: "rate_10s" },
        { v: fmtN(Math.round(p.rate_1m || 0)), cls: "num", field: "rate_1m" },
        { v: dec1.format(p.processing_time_ms || 0), cls: "num" }, { node: wrap },
        { v: fmtLatency(p.batch_latency), cls: "num", field: "batch_latency" },
        { v: p.call_latency ? fmtLatency(p.call_latency) : "–", cls: "num" + (p.call_latency ? "" : " muted"),
          field: "call_latency" },
      ], { "data-processor": pid }));
    });
    body.replaceChildren.apply(body, rows);
    const wbody = $("worker-table").tBodies[0];
    const ex = st.executor;
    renderExecutor(ex);
    const wrows = ex && ex.workers ? ex.workers.map(function (w) {
      return row([
        { v: w.address }, { v: "–", cls: "num muted" },
        { v: w.gone ? "gone" : "alive", cls: w.gone ? "muted" : "ok" },
        { v: fmtN(w.tasks), cls: "num" }, { v: fmtN(w.lines), cls: "num" },
        { v: w.cpu_percent === null || w.cpu_percent === undefined ? "–" : dec1.format(w.cpu_percent), cls: "num" },
        { v: fmtBytes(w.rss_bytes), cls: "num" }, { v: "–", cls: "num muted" }, { v: "–", cls: "num muted" },
      ], { "data-worker": w.address });
    }) : (st.workers || []).map(function (w) {
      return row([
        { v: w.slot }, { v: w.pid || "–", cls: "num" },
        { v: w.alive ? "alive" : (w.pid ? "exited" : "–"), cls: w.alive ? "ok" : "muted" },
        { v: fmtN(w.tasks), cls: "num" }, { v: fmtN(w.lines), cls: "num" },
        { v: w.cpu_percent === null || w.cpu_percent === undefined ? "–" : dec1.format(w.cpu_percent), cls: "num" },
        { v: fmtBytes(w.rss_bytes), cls: "num" },
        { v: fmtN(w.traces_sent) + " / " + fmtN(w.traces_dropped), cls: "num muted" },
        { v: fmtShares(w.time_shares), cls: "num", field: "time_shares" },
      ], { "data-slot": String(w.slot) });
    });
    if (!wrows.length) wrows.push(row([{ v: "no live workers (saved run)", cls: "muted" }]));
    wbody.replaceChildren.apply(wbody, wrows);
    renderInputs(st);
  }
  function renderExecutor(ex) {
    // A Dask cluster: its scheduler, and a link to Dask's own dashboard.
    const info = $("executor-info");
    if (!ex) { info.replaceChildren(); return; }
    const bits = [document.createTextNode("on Dask (" + ex.scheduler + ") ")];
    if (ex.dashboard) {
      const a = document.createElement("a");
      a.href = ex.dashboard;
      a.textContent = "Dask dashboard";
      a.id = "dask-dashboard-link";
      a.rel = "noopener";
      bits.push(a);
    }
    info.replaceChildren.apply(info, bits);
  }
  function renderInputs(st) {
    const ibody = $("input-table").tBodies[0];
    const irows = (st.inputs || []).map(function (i) {
      return row([
        { v: i.name, cls: "id" }, { v: i.compression || i.kind, cls: "muted" },
        { v: fmtBytes(i.bytes_read), cls: "num", field: "bytes_read" },
        { v: i.bytes_total === null ? "–" : fmtBytes(i.bytes_total), cls: "num muted" },
        { v: fmtN(i.lines), cls: "num", field: "lines" }, { v: fmtN(i.lines_done), cls: "num", field: "lines_done" },
        { v: i.state, cls: i.state === "damaged" ? "bad" : (i.state === "done" ? "ok" : "muted"), field: "state" },
        { v: i.follow ? (i.following ? "following" : "stopped") + " · lag " + fmtBytes(i.lag_bytes) + " · " +
            fmtN(i.rotations) + " rotations · last line " + (i.last_line_at || "none yet") : "", cls: "muted",
          field: "follow" },
      ], { "data-input": i.name });
    });
    ibody.replaceChildren.apply(ibody, irows);
  }

  // -- tags and counters: the top keys of each (as the stderr summary: mpobs.cli.report.counts_section) --
  const TOP_KEYS = 10;
  function countsTable(title, name, counts, total) {
    const ranked = Object.keys(counts).map(function (k) { return [k, counts[k]]; });
    ranked.sort(function (a, b) { return b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0); });
    const rest = ranked.slice(TOP_KEYS);
    const rows = ranked.slice(0, TOP_KEYS);
    if (rest.length) rows.push(["(" + fmtN(rest.length) + " others)", rest.reduce(function (t, kv) { return t + kv[1]; }, 0), true]);
    const table = el("table", "grid counts-table");
    table.setAttribute("data-counter", name);
    const cap = el("caption", null, title + (rest.length ? " · top " + TOP_KEYS + " of " + fmtN(ranked.length) + " keys" : "") +
      " · of " + fmtN(total));
    table.appendChild(cap);
    const head = el("thead");
    const hr = el("tr");
    [["key", ""], ["count", "num"], ["share", "num"]].forEach(function (h) { hr.appendChild(el("th", h[1], h[0])); });
    head.appendChild(hr);
    table.appendChild(head);
    const body = el("tbody");
    rows.forEach(function (kv) {
      body.appendChild(row([
        { v: kv[0], cls: kv[2] ? "muted" : "id", field: "key" }, { v: fmtN(kv[1]), cls: "num", field: "count" },
        { v: total ? dec1.format(kv[1] / total * 100) + " %" : "–", cls: "num muted", field: "share" },
      ], kv[2] ? { "data-others": "" } : { "data-key": kv[0] }));
    });
    table.appendChild(body);
    return table;
  }
  function renderCounts(st) {
    const tables = [];
    const tags = st.tags || {};
    if (Object.keys(tags).length) tables.push(countsTable("tags (lines)", "tags", tags, st.system.total_lines));
    const counters = st.counters || {};
    Object.keys(counters).forEach(function (pid) {
      const c = counters[pid];
      const total = Object.keys(c).reduce(function (t, k) { return t + c[k]; }, 0);
      tables.push(countsTable("counter " + pid, pid, c, total));
    });
    $("counts-panel").classList.toggle("hidden", tables.length === 0);
    const box = $("counts");
    box.replaceChildren.apply(box, tables);
  }

  // -- alerts (--alerts rules evaluated by the run; st.alerts is AlertWatch.doc) ----------------
  function renderAlerts(doc) {
    $("alerts-panel").classList.toggle("hidden", !doc);
    const pill = $("alerts-pill");
    if (!doc) { pill.classList.add("hidden"); return; }
    const firing = doc.alerts.filter(function (a) { return a.state === "firing"; }).length;
    const pending = doc.alerts.length - firing;
    pill.textContent = firing ? firing + " firing" : (pending ? pending + " pending" : "no alerts");
    pill.className = "pill alerts-pill " + (firing ? "alerts-firing" : (pending ? "alerts-pending" : "alerts-none"));
    let hint = doc.rules.length + " rule(s), evaluated every " + dec1.format(doc.interval_s) + " s";
    const am = doc.alertmanager;
    if (am) hint += " · Alertmanager " + (am.down ? "unreachable (" + am.down + ")" : "ok") + ", " + fmtN(am.sent) + " sent";
    setText("alerts-hint", hint);
    const arows = doc.alerts.map(function (a) {
      const labels = Object.keys(a.labels).filter(function (k) { return k !== "alertname"; }).sort()
        .map(function (k) { return k + "=" + a.labels[k]; }).join(", ");
      return row([
        { node: el("span", "chip st-" + a.state, a.state), field: "state" },
        { v: a.labels.alertname, cls: "id", field: "alertname" }, { v: labels, cls: "muted", field: "labels" },
        { v: a.annotations.summary || a.annotations.description || "", field: "summary" },
        { v: a.value, cls: "num", field: "value" }, { v: a.activeAt, cls: "muted" },
      ], { "data-alert": a.labels.alertname, "data-state": a.state });
    });
    if (!arows.length) arows.push(row([{ v: "nothing pending or firing", cls: "muted" }]));
    const body = $("alert-table").tBodies[0];
    body.replaceChildren.apply(body, arows);
    const rrows = doc.rules.map(function (r) {
      return row([
        { v: r.name, cls: "id" }, { v: r.group, cls: "muted" },
        { v: r.state, cls: r.state === "firing" ? "bad" : (r.state === "pending" ? "warn" : "muted"), field: "state" },
        { v: r.for_s ? fmtDur(r.for_s) : "–", cls: "num muted" }, { v: fmtN(r.evaluations), cls: "num", field: "evaluations" },
        { v: r.error || "", cls: "bad", field: "error" },
      ], { "data-rule": r.name });
    });
    const rbody = $("rule-table").tBodies[0];
    rbody.replaceChildren.apply(rbody, rrows);
    const items = doc.events.slice().reverse().map(function (e) {
      const li = el("li", "alert-event");
      const head = el("div", "step-head");
      head.appendChild(el("span", "muted", e.at));
      head.appendChild(el("span", "chip st-" + e.event, e.event.replace("_", " ")));
      head.appendChild(el("span", "id", e.labels.alertname));
      head.appendChild(el("span", "msg", e.annotations.summary || ""));
      li.appendChild(head);
      return li;
    });
    $("alert-events").replaceChildren.apply($("alert-events"), items);
  }

  // -- traces ----------------------------------------------------------------------------------
  function statusChip(status) { return el("span", "chip st-" + String(status).split(":")[0], status); }

  function renderTraces(data) {
    const list = data.traces;
    const sig = list.length + ":" + (list.length ? list[0].line_id + ":" + list[list.length - 1].line_id : "");
    state.traces = list;
    setText("traces-hint", list.length ? "newest first · " + fmtN(data.kept) + " kept · click one to follow it" : "no traced lines yet (run with --trace)");
    if (sig === state.tracesSig) return;
    state.tracesSig = sig;
    const items = list.map(function (t) {
      const li = el("li", "trace" + (t.line_id === state.selected ? " selected" : ""));
      li.setAttribute("data-line", t.line_id);
      li.tabIndex = 0;
      li.appendChild(el("span", "ln", "#" + t.line_number));
      li.appendChild(el("span", "trace-text", t.original_content));
      const last = (t.path || []).filter(function (p) { return p.status === "error"; }).length ? "error" : (t.outputs && t.outputs.length ? "emit" : "drop");
      li.appendChild(statusChip(last === "emit" ? t.outputs.length + " out" : last));
      return li;
    });
    $("traces").replaceChildren.apply($("traces"), items);
  }

  function showTrace(lineId) {
    const t = state.traces.find(function (x) { return x.line_id === lineId; });
    if (!t) return;
    state.selected = lineId;
    Array.prototype.forEach.call($("traces").children, function (li) {
      li.classList.toggle("selected", li.getAttribute("data-line") === lineId);
    });
    setText("trace-title", t.line_id);
    const box = $("trace-detail");
    const parts = [el("div", "label", "input line " + t.line_number), el("pre", "logline", t.original_content)];
    const steps = el("ol", "steps");
    const t0 = t.path && t.path.length ? t.path[0].timestamp : 0;
    (t.path || []).forEach(function (p) {
      const li = el("li", "step st-" + String(p.status).split(":")[0]);
      const head = el("div", "step-head");
      head.appendChild(el("span", "id", p.processor));
      head.appendChild(statusChip(p.status));
      if (p.copies) head.appendChild(el("span", "muted", p.copies + " copies"));
      head.appendChild(el("span", "muted right", "+" + dec1.format((p.timestamp - t0) * 1000) + " ms"));
      li.appendChild(head);
      if (p.text !== undefined) li.appendChild(el("pre", "logline", p.text));
      if (p.texts) p.texts.forEach(function (x) { li.appendChild(el("pre", "logline", x)); });
      if (p.tags) li.appendChild(el("div", "tags", "tags: " + p.tags.join(", ")));
      if (p.error) li.appendChild(el("div", "bad", p.error));
      steps.appendChild(li);
    });
    parts.push(steps);
    parts.push(el("div", "label", (t.outputs || []).length ? "output lines" : "no output: every path dropped it"));
    (t.outputs || []).forEach(function (o) { parts.push(el("pre", "logline out", o)); });
    box.replaceChildren.apply(box, parts);
  }

  function renderErrors(data) {
    const list = data.errors;
    setText("errors-hint", list.length ? "newest first · " + fmtN(data.kept) + " kept" : "none");
    const sig = list.length + ":" + (list.length ? list[0].line_id + list[0].processor : "");
    if (sig === state.errorsSig) return;
    state.errorsSig = sig;
    const items = list.map(function (e) {
      const li = el("li", "error");
      const head = el("div", "step-head");
      head.appendChild(el("span", "muted", clock(e.timestamp)));
      head.appendChild(el("span", "id", e.processor));
      head.appendChild(el("span", "bad", e.error_type));
      head.appendChild(el("span", "msg", e.message));
      head.appendChild(el("span", "muted right", e.line_id));
      li.appendChild(head);
      li.appendChild(el("pre", "logline", e.line));
      return li;
    });
    $("errors").replaceChildren.apply($("errors"), items);
  }

  function renderFooter(st) {
    const d = st.dashboard || {}, s = st.system;
    const bits = ["traces: " + fmtN(s.traces_sent) + " sent by workers, " + fmtN(s.traces_dropped) + " dropped (queue full)"];
    if (d.traces_received !== undefined) bits.push(fmtN(d.traces_received) + " received here, last " + fmtN(d.traces_kept) + " kept");
    if (s.started_at) bits.push("started " + s.started_at);
    $("footer").textContent = bits.join("  ·  ");
  }

  // -- the loop ----------------------------------------------------------------------------------
  async function tick() {
    let delay = 1000;
    try {
      const wantLists = state.tick % 2 === 0;
      const got = await Promise.all([
        getJSON("/stats"), getJSON("/dag"), getJSON("/history"),
        wantLists ? getJSON("/trace?limit=100") : null, wantLists ? getJSON("/errors?limit=100") : null,
      ]);
      const st = got[0];
      renderSummary(st);
      renderProcessors(st);
      renderCounts(st);
      renderAlerts(st.alerts || null);
      window.mpobsCharts.drawDag($("dag"), got[1], st.system.state === "running");
      window.mpobsCharts.drawChart($("chart"), got[2]);
      if (got[3]) renderTraces(got[3]);
      if (got[4]) renderErrors(got[4]);
      renderFooter(st);
      if (state.selected === null && state.traces.length) showTrace(state.traces[0].line_id);
      $("banner").classList.add("hidden");
      setText("conn", "updated " + new Date().toLocaleTimeString("en-GB", { hour12: false }));
      $("conn").className = "conn ok";
      document.body.setAttribute("data-ready", "1");
      if (st.dashboard && st.dashboard.final) delay = 3000;
    } catch (err) {
      const b = $("banner");
      b.textContent = err.auth ? "This dashboard needs a token: open it once as /?token=<token>." :
        "Cannot reach the dashboard (" + err.message + "); retrying…";
      b.classList.remove("hidden");
      $("conn").className = "conn bad";
      delay = err.auth ? 5000 : 2000;
    }
    state.tick++;
    setTimeout(tick, delay);
  }

  $("traces").addEventListener("click", function (ev) {
    const li = ev.target.closest("li.trace");
    if (li) showTrace(li.getAttribute("data-line"));
  });
  $("traces").addEventListener("keydown", function (ev) {
    const li = ev.target.closest("li.trace");
    if (li && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); showTrace(li.getAttribute("data-line")); }
  });
  tick();
})();
