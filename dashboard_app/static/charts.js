// mpobs dashboard: the DAG (SVG, layered layout computed from the edges) and the throughput chart (canvas).
// Every piece of run data is set with textContent or as an attribute value, never parsed as markup.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const NODE_W = 168, NODE_H = 84, COL_GAP = 64, ROW_GAP = 16, PAD = 8;
  const num = new Intl.NumberFormat("en-US");
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

  function s(tag, attrs, parent) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, cls, value) {
    const t = s("text", { x: x, y: y, class: cls }, parent);
    t.textContent = value;
    return t;
  }

  // Columns are layers; inside a column, nodes sit near the mean row of their sources.
  function layout(dag) {
    const cols = new Map();
    dag.nodes.forEach(function (n, i) {
      if (!cols.has(n.layer)) cols.set(n.layer, []);
      cols.get(n.layer).push({ node: n, order: i });
    });
    const srcs = new Map();
    dag.edges.forEach(function (e) {
      if (!srcs.has(e.to)) srcs.set(e.to, []);
      srcs.get(e.to).push(e.from);
    });
    const row = new Map(), pos = new Map();
    let rows = 1;
    Array.from(cols.keys()).sort(function (a, b) { return a - b; }).forEach(function (layer) {
      const items = cols.get(layer);
      items.forEach(function (it) {
        const from = (srcs.get(it.node.id) || []).filter(function (f) { return row.has(f); });
        it.key = from.length ? from.reduce(function (a, f) { return a + row.get(f); }, 0) / from.length : it.order;
      });
      items.sort(function (a, b) { return a.key - b.key || a.order - b.order; });
      items.forEach(function (it, r) { row.set(it.node.id, r); });
      rows = Math.max(rows, items.length);
    });
    cols.forEach(function (items, layer) {
      const offset = (rows - items.length) * (NODE_H + ROW_GAP) / 2;
      items.forEach(function (it, r) {
        pos.set(it.node.id, { x: PAD + layer * (NODE_W + COL_GAP), y: PAD + offset + r * (NODE_H + ROW_GAP) });
      });
    });
    const layers = Math.max.apply(null, Array.from(cols.keys())) + 1;
    return { pos: pos, width: 2 * PAD + layers * NODE_W + (layers - 1) * COL_GAP, height: 2 * PAD + rows * (NODE_H + ROW_GAP) - ROW_GAP };
  }

  const dagState = { sig: null, nodes: new Map(), edges: [] };

  function buildDag(svg, dag) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const lay = layout(dag);
    svg.setAttribute("viewBox", "0 0 " + lay.width + " " + lay.height);
    svg.setAttribute("data-width", String(lay.width));
    dagState.nodes = new Map();
    dagState.edges = [];
    const gEdges = s("g", { class: "edges" }, svg);
    const gNodes = s("g", { class: "nodes" }, svg);
    dag.edges.forEach(function (e) {
      const a = lay.pos.get(e.from), b = lay.pos.get(e.to);
      if (!a || !b) return;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2, dx = (x2 - x1) / 2;
      const g = s("g", { class: "edge", "data-from": e.from, "data-to": e.to }, gEdges);
      const d = "M" + x1 + " " + y1 + " C" + (x1 + dx) + " " + y1 + " " + (x2 - dx) + " " + y2 + " " + x2 + " " + y2;
      const path = s("path", { d: d, class: "edge-line" }, g);
      const flow = s("path", { d: d, class: "edge-flow" }, g);
      s("path", { d: "M" + (x2 - 7) + " " + (y2 - 4) + " L" + x2 + " " + y2 + " L" + (x2 - 7) + " " + (y2 + 4), class: "edge-arrow" }, g);
      const label = text(g, (x1 + x2) / 2, (y1 + y2) / 2 - 6, "edge-label", "");
      dagState.edges.push({ edge: e, path: path, flow: flow, label: label });
    });
    dag.nodes.forEach(function (n) {
      const p = lay.pos.get(n.id);
      const g = s("g", { class: "node" + (n.id === "input" ? " node-input" : ""), "data-id": n.id,
        transform: "translate(" + p.x + "," + p.y + ")" }, gNodes);
      const tip = s("title", {}, g);
      s("rect", { width: NODE_W, height: NODE_H, rx: 9, class: "node-box" }, g);
      text(g, 12, 21, "node-id", n.id === "input" ? (n.name || "input") : n.id);
      text(g, 12, 37, "node-type", n.type || "");
      const l1 = text(g, 12, 55, "node-in", "");
      const l2 = text(g, 12, 71, "node-out", "");
      const err = text(g, NODE_W - 10, 37, "node-err", "");
      s("rect", { x: 0, y: NODE_H - 4, width: NODE_W, height: 4, rx: 2, class: "node-share-bg" }, g);
      const share = s("rect", { x: 0, y: NODE_H - 4, width: 0, height: 4, rx: 2, class: "node-share" }, g);
      dagState.nodes.set(n.id, { tip: tip, l1: l1, l2: l2, err: err, share: share });
    });
  }

  function drawDag(svg, dag, running) {
    const sig = JSON.stringify([dag.nodes.map(function (n) { return [n.id, n.layer]; }), dag.edges.map(function (e) { return [e.from, e.to, e.route]; })]);
    if (sig !== dagState.sig) { buildDag(svg, dag); dagState.sig = sig; }
    svg.classList.toggle("running", !!running);
    dag.nodes.forEach(function (n) {
      const v = dagState.nodes.get(n.id);
      if (!v) return;
      if (n.id === "input") {
        v.l1.textContent = "read " + num.format(n.lines_out || 0);
        v.l2.textContent = "lines";
      } else {
        v.l1.textContent = "in  " + num.format(n.lines_in || 0);
        v.l2.textContent = "out " + num.format(n.lines_out || 0);
        v.err.textContent = n.errors ? num.format(n.errors) + " err" : "";
        v.share.setAttribute("width", String(Math.max(0, Math.min(1, n.share_of_time || 0)) * NODE_W));
      }
      v.tip.textContent = n.id + " (" + (n.type || "") + ")" + (n.id === "input" ? "" :
        ": " + num.format(n.lines_in || 0) + " in, " + num.format(n.lines_out || 0) + " out, " +
        num.format(n.errors || 0) + " errors, " + ((n.share_of_time || 0) * 100).toFixed(1) + "% of worker time");
    });
    const max = Math.max(1, Math.max.apply(null, dag.edges.map(function (e) { return e.count || 0; })));
    dag.edges.forEach(function (e, i) {
      const v = dagState.edges[i];
      if (!v) return;
      const w = 1.5 + 5 * Math.sqrt((e.count || 0) / max);
      v.path.style.strokeWidth = w + "px";
      v.flow.style.strokeWidth = Math.max(1, w / 2.5) + "px";
      v.label.textContent = (e.route ? e.route + ": " : "") + (e.count === null ? "?" : compact.format(e.count));
    });
  }

  // -- throughput chart ------------------------------------------------------------------------
  function drawChart(canvas, hist) {
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 600, cssH = canvas.clientHeight || 240;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    const css = getComputedStyle(document.body);
    const cLines = css.getPropertyValue("--accent").trim() || "#5ec8ff";
    const cErr = css.getPropertyValue("--bad").trim() || "#ff6b6b";
    const cGrid = css.getPropertyValue("--grid").trim() || "#2a3142";
    const cText = css.getPropertyValue("--muted").trim() || "#8a93a6";
    const L = 56, R = 44, T = 10, B = 24, w = cssW - L - R, h = cssH - T - B;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = cText;
    const t = hist.t || [], ys = hist.lines_per_s || [], es = hist.errors_per_s || [];
    if (t.length < 2) {
      ctx.textAlign = "center";
      ctx.fillText("collecting samples…", L + w / 2, T + h / 2);
      return;
    }
    const t0 = t[0], t1 = t[t.length - 1], span = Math.max(t1 - t0, 1);
    const top = niceMax(Math.max.apply(null, ys));
    const etop = niceMax(Math.max.apply(null, es));
    const X = function (v) { return L + (v - t0) / span * w; };
    const Y = function (v, m) { return T + h - v / m * h; };
    ctx.strokeStyle = cGrid;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const y = T + h * i / 4;
      ctx.beginPath(); ctx.moveTo(L, y + 0.5); ctx.lineTo(L + w, y + 0.5); ctx.stroke();
      ctx.fillText(compact.format(top * (4 - i) / 4), L - 8, y + 4);
    }
    ctx.textAlign = "center";
    for (let i = 0; i <= 4; i++) {
      const ago = span * (4 - i) / 4;
      ctx.fillText(i === 4 ? "now" : "-" + fmtAgo(ago), L + w * i / 4, T + h + 17);
    }
    const grad = ctx.createLinearGradient(0, T, 0, T + h);
    grad.addColorStop(0, hexA(cLines, 0.45));
    grad.addColorStop(1, hexA(cLines, 0.02));
    ctx.beginPath();
    ctx.moveTo(X(t[0]), Y(0, top));
    t.forEach(function (tv, i) { ctx.lineTo(X(tv), Y(ys[i], top)); });
    ctx.lineTo(X(t1), Y(0, top));
    ctx.closePath();
    ctx.fillStyle = grad;
    ctx.fill();
    ctx.beginPath();
    t.forEach(function (tv, i) { if (i) ctx.lineTo(X(tv), Y(ys[i], top)); else ctx.moveTo(X(tv), Y(ys[i], top)); });
    ctx.strokeStyle = cLines; ctx.lineWidth = 2; ctx.lineJoin = "round"; ctx.stroke();
    if (Math.max.apply(null, es) > 0) {
      ctx.beginPath();
      t.forEach(function (tv, i) { if (i) ctx.lineTo(X(tv), Y(es[i], etop)); else ctx.moveTo(X(tv), Y(es[i], etop)); });
      ctx.strokeStyle = cErr; ctx.lineWidth = 1.5; ctx.stroke();
      ctx.fillStyle = cErr; ctx.textAlign = "left";
      ctx.fillText(compact.format(etop) + "/s", L + w + 6, T + 4);
    }
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  function fmtAgo(sec) { return sec >= 120 ? Math.round(sec / 60) + "m" : Math.round(sec) + "s"; }
  function hexA(color, a) {
    const m = /^#([0-9a-f]{6})$/i.exec(color);
    if (!m) return color;
    const n = parseInt(m[1], 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + a + ")";
  }

  window.mpobsCharts = { drawDag: drawDag, drawChart: drawChart };
})();
