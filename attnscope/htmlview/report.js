// attnscope's HTML report: reads the JSON and the compressed blobs of the page (see
// attnscope/htmlview/__init__.py for what they hold) and draws the header, the checks, the
// layer × head overview and the selected head's maps. Plain JavaScript; nothing is fetched.
(function () {
  "use strict";
  const LOG_FLOOR = 1e-6, LOG_CODES = 251, CODE_ZERO = 0, CODE_NONFINITE = 253, CODE_MASKED = 255;
  const LOG_DECADES = 4; // the log scale spans max / 10**4 .. max (as the terminal's heatmaps)
  const MASKED = [58, 58, 58], NONFINITE = [255, 32, 32];
  // viridis at 9 points (matplotlib's _viridis_data), as attnscope/render/colors.py
  const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  const RAMP = [];
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * 8, k = Math.min(7, Math.floor(x)), f = x - k;
    RAMP.push(VIRIDIS[k].map((c, n) => Math.round(c + (VIRIDIS[k + 1][n] - c) * f)));
  }
  const ROLE_COLORS = {induction: "#e377c2", previous_token: "#1f77b4", sink: "#7f7f7f", local: "#2ca02c",
    broad: "#bcbd22"};
  const ROLE_SHORT = {induction: "ind", previous_token: "prev", sink: "sink", local: "loc", broad: "brd"};
  const STATUS_COLORS = {ok: "#2e7d32", flag: "#f9a825", nan: "#ff2020"};

  const DATA = JSON.parse(document.getElementById("attnscope-data").textContent);
  const state = {view: 0, layer: 0, head: 0, log: false, metric: null, position: null};
  const blobCache = {};

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "style") e.style.cssText = v;
      else e.setAttribute(k, v);
    }
    for (const kid of kids) if (kid != null) e.append(kid);
    return e;
  }
  const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
  const fmt = (x) => x == null ? "–" : Math.abs(x) >= 0.01 || x === 0 ? x.toFixed(4) : x.toExponential(2);
  const label = (t) => (t == null ? "" : t.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/ /g, "␣"));

  async function inflate(name) {
    const text = document.getElementById("blob-" + name).textContent;
    const bin = atob(text), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer();
  }

  async function loadBlobs(view) {
    if (blobCache[view.name + view.blobs.maps]) return blobCache[view.name + view.blobs.maps];
    const [maps, exact, masks, tiles, strips] = await Promise.all(
      ["maps", "exact", "masks", "tiles", "strips"].map((k) => inflate(view.blobs[k])));
    const b = {maps: new Uint8Array(maps), exact: new Float32Array(exact), masks: new Uint8Array(masks),
      tiles: new Uint8Array(tiles), strips: new Float32Array(strips)};
    // where each layer's maps start in the maps blob
    b.layerOffsets = [];
    let offset = 0;
    for (const L of view.layers) {
      b.layerOffsets.push(offset);
      offset += (L.rows.length - 1) * (L.cols.length - 1) * view.nHeads;
    }
    b.maskOffsets = [];
    b.tileOffsets = [];
    let m = 0, t = 0;
    for (const M of view.masks) {
      b.maskOffsets.push(m); b.tileOffsets.push(t);
      m += M.rows * M.cols; t += M.tileRows * M.tileCols;
    }
    blobCache[view.name + view.blobs.maps] = b;
    return b;
  }

  function decode(code) {
    if (code === CODE_MASKED) return -1;
    if (code === CODE_NONFINITE) return NaN;
    if (code === CODE_ZERO) return 0;
    return Math.pow(10, Math.log10(LOG_FLOOR) * (1 - (code - 1) / LOG_CODES));
  }

  // A map: {rows, cols, values (Float32Array; -1 masked, NaN non-finite), rowEdges, colEdges, exact,
  // q0, k0 (where the map starts), quantized (values are the byte encoding's)}
  function overviewMap(view, b, layer, head) {
    const L = view.layers[layer], rows = L.rows.length - 1, cols = L.cols.length - 1;
    const start = b.layerOffsets[layer] + head * rows * cols;
    const values = new Float32Array(rows * cols);
    for (let i = 0; i < rows * cols; i++) values[i] = decode(b.maps[start + i]);
    return {rows, cols, values, rowEdges: L.rows, colEdges: L.cols, exact: L.exact, q0: 0, k0: 0, quantized: true};
  }

  function exactMap(view, b, region) {
    const rows = region.q1 - region.q0, cols = region.k1 - region.k0;
    const values = b.exact.subarray(region.offset, region.offset + rows * cols);
    const rowEdges = Array.from({length: rows + 1}, (_, i) => region.q0 + i);
    const colEdges = Array.from({length: cols + 1}, (_, i) => region.k0 + i);
    return {rows, cols, values, rowEdges, colEdges, exact: true, q0: region.q0, k0: region.k0, quantized: false};
  }

  function regionOf(view, layer, head) {
    return view.exact.find((r) => r.layer === layer && r.head === head) || null;
  }

  function draw(canvas, map, size) {
    canvas.width = map.cols;
    canvas.height = map.rows;
    const cell = Math.max(1, Math.floor(size / Math.max(map.rows, map.cols)));
    canvas.style.width = map.cols * cell + "px";
    canvas.style.height = map.rows * cell + "px";
    canvas.dataset.cell = cell;
    let top = 0;
    for (const v of map.values) if (v > top) top = v;
    top = top || 1;
    const img = canvas.getContext("2d").createImageData(map.cols, map.rows);
    for (let i = 0; i < map.values.length; i++) {
      const v = map.values[i];
      let c;
      if (Number.isNaN(v)) c = NONFINITE;
      else if (v < 0) c = MASKED;
      else {
        let t = v / top;
        if (state.log) t = v <= 0 ? 0 : Math.max(0, (Math.log10(v / top) + LOG_DECADES) / LOG_DECADES);
        c = RAMP[Math.round(Math.min(1, t) * 255)];
      }
      img.data.set([c[0], c[1], c[2], 255], i * 4);
    }
    canvas.getContext("2d").putImageData(img, 0, 0);
    return {top, cell};
  }

  // What a cell of a map is: its query and key range, the tokens, the value
  function cellInfo(view, layer, map, i, j) {
    const L = view.layers[layer];
    const r0 = map.rowEdges[i], r1 = map.rowEdges[i + 1], c0 = map.colEdges[j], c1 = map.colEdges[j + 1];
    const v = map.values[i * map.cols + j];
    const one = r1 - r0 === 1 && c1 - c0 === 1;
    const qpos = L.past + r0;
    let text;
    if (one) {
      text = `q ${qpos} ${label(view.tokens[qpos])} → k ${c0} ${label(view.tokens[c0])}`;
    } else {
      text = `q ${L.past + r0}–${L.past + r1 - 1} × k ${c0}–${c1 - 1} (max)`;
    }
    const what = Number.isNaN(v) ? "NaN/Inf" : v < 0 ? "masked" : (map.quantized ? "≈ " : "") + fmt(v);
    return {text: `${text}: ${view.measure} ${what}`, row: r0, key: c0, value: v, exact: one && !map.quantized};
  }

  function hoverable(canvas, view, layer, head, map) {
    canvas.addEventListener("mousemove", (e) => {
      const tip = document.getElementById("tip"), hover = document.getElementById("hover");
      const cell = Number(canvas.dataset.cell);
      const i = Math.floor(e.offsetY / cell), j = Math.floor(e.offsetX / cell);
      if (i < 0 || j < 0 || i >= map.rows || j >= map.cols) return;
      const info = cellInfo(view, layer, map, i, j);
      tip.textContent = info.text;
      tip.style.display = "block";
      tip.style.left = e.clientX + 14 + "px";
      tip.style.top = e.clientY + 14 + "px";
      hover.textContent = info.text;
      Object.assign(hover.dataset, {layer, head, row: info.row, key: info.key, value: String(info.value),
        exact: String(info.exact)});
    });
    canvas.addEventListener("mouseleave", () => { document.getElementById("tip").style.display = "none"; });
  }

  // ---- the page -------------------------------------------------------------------------------------
  function header(view) {
    const table = el("table", {class: "header"});
    for (const [k, v] of view.header) {
      const cls = k === "checks" ? (v === "passed" ? "pass" : "fail") : "";
      table.append(el("tr", {}, el("th", {text: k}), el("td", {text: v, class: cls})));
    }
    return table;
  }

  function checks(view) {
    const list = el("ul", {class: "checks", id: "checks"});
    for (const c of view.checks) {
      const mark = c.skipped ? "–" : c.passed ? "✓" : "✗";
      const w = c.where || {};
      const item = el("li", {class: c.skipped ? "skip" : c.passed ? "pass" : "fail"}, el("span", {text: mark + " "}));
      if (w.layer != null) {
        const head = w.head != null ? w.head : state.head;
        const where = `L${w.layer}` + (w.head != null ? ` h${w.head}` : "") + (w.position != null ? ` pos ${w.position}` : "");
        item.append(el("a", {href: "#", class: "where", "data-layer": w.layer, "data-head": head,
          "data-position": w.position != null ? w.position : "", text: `${c.name} @ ${where}`,
          onclick: (e) => {
            e.preventDefault();
            select(w.layer, head, w.position != null ? w.position : null);
          }}));
      } else {
        item.append(el("b", {text: c.name}));
      }
      item.append(el("span", {class: "msg", text: " " + (c.skipped ? `skipped: ${c.skipped}` : c.message)}));
      list.append(item);
    }
    return list;
  }

  function metricColor(metric, layer, head) {
    const v = metric.values[layer][head];
    if (metric.kind === "status") return STATUS_COLORS[v];
    if (metric.kind === "role") return v ? ROLE_COLORS[v] : "#444";
    if (v == null) return rgb(NONFINITE);
    let lo = Infinity, hi = -Infinity;
    for (const row of metric.values) for (const x of row) if (x != null && (metric.kind === "linear" || x > 0)) {
      lo = Math.min(lo, x); hi = Math.max(hi, x);
    }
    let t;
    if (metric.kind === "linear") t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    else if (metric.kind === "diff") {
      const tol = metric.tolerance;
      t = v <= 0 ? 0 : Math.max(0, Math.min(1, (Math.log10(v / tol) + 6) / 6)) * 0.6;
      if (metric.over[layer][head]) t = 1;
    } else t = v <= 0 || !(hi > 0) ? 0 : hi > lo ? 0.15 + 0.85 * (Math.log10(v / lo) / Math.log10(hi / lo)) : 1;
    return rgb(RAMP[Math.round(Math.max(0, Math.min(1, t)) * 255)]);
  }

  function overview(view) {
    const metric = view.metrics.find((m) => m.name === state.metric) || view.metrics[0];
    const G = view.layers[0].group, H = view.nHeads;
    const table = el("table", {class: "overview", id: "overview"});
    const kvRow = el("tr", {}, el("th", {}));
    for (let kv = 0; kv < H / G; kv++) kvRow.append(el("th", {colspan: G, class: "kv", text: `kv ${kv}`}));
    const hRow = el("tr", {}, el("th", {text: "layer"}));
    for (let h = 0; h < H; h++) hRow.append(el("th", {class: h % G === 0 ? "group" : "", text: `h${h}`}));
    table.append(kvRow, hRow);
    view.layers.forEach((L, layer) => {
      const tr = el("tr", {}, el("th", {text: String(layer)}));
      for (let h = 0; h < H; h++) {
        const v = metric.values[layer][h];
        let text = "";
        if (metric.kind === "role") text = v ? ROLE_SHORT[v] : "";
        else if (metric.kind === "status") text = v === "ok" ? "" : v === "nan" ? "!" : "✗";
        else if (metric.over && metric.over[layer][h]) text = "✗";
        else if (v == null) text = "!";
        const status = view.metrics.find((m) => m.name === "status");
        const title = `L${layer} h${h} (kv ${Math.floor(h / L.group)}) · ${metric.label}: ` +
          (typeof v === "number" ? fmt(v) : v == null ? "NaN/Inf" : v) +
          (view.roles && view.roles[layer][h] ? ` · role ${view.roles[layer][h]}` : "") +
          (status ? ` · ${status.values[layer][h]}` : "");
        const classes = ["cell", h % G === 0 ? "group" : "", layer === state.layer && h === state.head ? "sel" : ""];
        tr.append(el("td", {class: classes.join(" "), title, "data-layer": layer, "data-head": h,
          style: `background:${metricColor(metric, layer, h)}`, text, onclick: () => select(layer, h, null)}));
      }
      table.append(tr);
    });
    const chooser = el("select", {id: "metric", onchange: (e) => { state.metric = e.target.value; render(); }});
    for (const m of view.metrics) chooser.append(el("option", {value: m.name, text: m.label}));
    chooser.value = metric.name;
    const legend = metric.kind === "role"
      ? Object.entries(ROLE_SHORT).map(([k, s]) => el("span", {class: "chip", style: `background:${ROLE_COLORS[k]}`, text: `${s} ${k}`}))
      : metric.kind === "status" ? [el("span", {class: "note", text: "green ok · yellow ✗ flagged by a check · red ! NaN/Inf"})]
      : metric.kind === "diff" ? [el("span", {class: "note", text: `log, tolerance ${metric.tolerance.toExponential(0)} at the top of the dark ramp; yellow ✗ over`})]
      : [el("span", {class: "note", text: metric.kind === "range" ? "log over this map's range; ✗ over tolerance" : "linear over the model's range"})];
    return el("section", {class: "panel"}, el("h2", {text: "layers × heads"}),
      el("div", {class: "controls"}, "color by ", chooser, " ", ...legend), table);
  }

  function headPanel(view, b) {
    const {layer, head} = state;
    const L = view.layers[layer], G = L.group, kv = Math.floor(head / G);
    const region = regionOf(view, layer, head);
    const whole = region && region.q0 === 0 && region.k0 === 0 && region.q1 === L.Sq && region.k1 === L.Sk;
    const main = whole ? exactMap(view, b, region) : overviewMap(view, b, layer, head);
    const canvas = el("canvas", {id: "map", class: "map"});
    const {top} = draw(canvas, main, 560);
    hoverable(canvas, view, layer, head, main);
    const wrap = el("div", {class: "mapwrap"}, canvas);
    if (state.position != null) {  // the position a check names: a line across its row
      const r = state.position - L.past;
      const i = main.rowEdges.findIndex((e, n) => n < main.rows && r >= e && r < main.rowEdges[n + 1]);
      if (i >= 0) wrap.append(el("div", {class: "mark", id: "mark", "data-position": state.position,
        style: `top:${i * Number(canvas.dataset.cell)}px;width:${canvas.style.width};height:${Math.max(2, Number(canvas.dataset.cell))}px`}));
    }
    const stats = view.metrics.filter((m) => m.kind === "linear").map((m) => `${m.label} ${fmt(m.values[layer][head])}`);
    const how = main.exact ? `${L.Sq}×${L.Sk}, exact` :
      `${L.Sq}×${L.Sk} → ${main.rows}×${main.cols}, max-pooled, one byte a cell (log, ±3 %)`;
    const parts = [
      el("h2", {id: "head-title", text: `layer ${layer} · head ${head} (kv ${kv}) · ${view.measure}`}),
      el("div", {class: "note", text: `${L.mask} · ${how}` + (stats.length ? " · " + stats.join(" · ") : "") +
        (view.roles && view.roles[layer][head] ? ` · role ${view.roles[layer][head]}` : "")}),
      el("div", {class: "note", text: `color: ${state.log ? `log, ${fmt(top / 10 ** LOG_DECADES)} … ${fmt(top)}` : `linear, 0 … ${fmt(top)}`} · gray masked · red NaN/Inf`}),
      wrap,
    ];
    if (region && !whole) {
      const exact = exactMap(view, b, region);
      const c2 = el("canvas", {id: "exact", class: "map"});
      draw(c2, exact, 512);
      hoverable(c2, view, layer, head, exact);
      parts.push(el("h3", {text: `exact cells: q ${L.past + region.q0}–${L.past + region.q1 - 1} × k ${region.k0}–${region.k1 - 1}`}), c2);
    }
    // the kv group side by side
    const group = el("div", {class: "group", id: "group"});
    for (let h = kv * G; h < (kv + 1) * G; h++) {
      const c = el("canvas", {class: "small" + (h === head ? " sel" : ""), "data-head": h, title: `head ${h}`});
      draw(c, overviewMap(view, b, layer, h), 150);
      group.append(el("figure", {onclick: () => select(layer, h, state.position)}, c, el("figcaption", {text: `h${h}`})));
    }
    parts.push(el("h3", {text: `kv group ${kv}: heads ${kv * G}–${(kv + 1) * G - 1}`}), group);
    // the mask and its tile map
    const M = view.masks[L.maskIndex];
    const maskCanvas = el("canvas", {class: "small", id: "mask"});
    const tileCanvas = el("canvas", {class: "small", id: "tiles"});
    const states = (data, start, n) => ({values: Array.from(data.subarray(start, start + n), (x) => x)});
    const palette3 = [[58, 58, 58], [150, 120, 40], [40, 150, 90]];
    const paint = (canvas, rows, cols, vals) => {
      canvas.width = cols; canvas.height = rows;
      const cell = Math.max(1, Math.floor(150 / Math.max(rows, cols, 1)));
      canvas.style.width = cols * cell + "px"; canvas.style.height = rows * cell + "px";
      if (!rows || !cols) return;
      const img = canvas.getContext("2d").createImageData(cols, rows);
      vals.forEach((v, i) => img.data.set([...palette3[v], 255], i * 4));
      canvas.getContext("2d").putImageData(img, 0, 0);
    };
    paint(maskCanvas, M.rows, M.cols, states(b.masks, b.maskOffsets[L.maskIndex], M.rows * M.cols).values);
    paint(tileCanvas, M.tileRows, M.tileCols, states(b.tiles, b.tileOffsets[L.maskIndex], M.tileRows * M.tileCols).values);
    parts.push(el("h3", {text: "mask and 64×64 tile map (head 0)"}),
      el("div", {class: "group"}, el("figure", {}, maskCanvas, el("figcaption", {text: "mask"})),
        el("figure", {}, tileCanvas, el("figcaption", {text: `tiles ${M.tileRows}×${M.tileCols}`}))),
      el("div", {class: "note", text: "green: every key allowed · amber: some · gray: none"}));
    // |Δ| per position of the comparing checks
    let stripStart = 0;
    for (const s of view.strips) {
      const n = s.edges.length - 1;
      const vals = b.strips.subarray(stripStart + (layer * view.nHeads + head) * n, stripStart + (layer * view.nHeads + head + 1) * n);
      stripStart += view.layers.length * view.nHeads * n;
      const c = el("canvas", {class: "strip"});
      c.width = n; c.height = 1; c.style.width = Math.min(560, n * 4) + "px"; c.style.height = "14px";
      const img = c.getContext("2d").createImageData(n, 1);
      let worst = 0, worstAt = 0;
      vals.forEach((v, i) => {
        const a = Math.abs(v);
        if (!(a <= worst)) { worst = a; worstAt = i; }
        const col = Number.isNaN(v) ? NONFINITE : v < 0 ? RAMP[255] : RAMP[Math.round(Math.max(0, Math.min(1, (Math.log10(Math.max(a, 1e-30)) + 12) / 12)) * 150)];
        img.data.set([col[0], col[1], col[2], 255], i * 4);
      });
      c.getContext("2d").putImageData(img, 0, 0);
      parts.push(el("h3", {text: `${s.title}: |Δ| per query position`}), c,
        el("div", {class: "note", text: `worst at positions ${s.edges[worstAt]}–${s.edges[worstAt + 1] - 1}: ${fmt(worst)} · yellow: over tolerance · red: NaN/Inf`}));
    }
    return el("section", {class: "panel", id: "head"}, ...parts);
  }

  let rendering = Promise.resolve();
  function select(layer, head, position) {
    Object.assign(state, {layer, head, position});
    return render();
  }

  async function renderNow() {
    const view = DATA.views[state.view];
    const b = await loadBlobs(view);
    const app = document.getElementById("app");
    const top = el("header", {}, el("h1", {text: DATA.title}));
    if (DATA.views.length > 1) {
      const pick = el("select", {id: "view", onchange: (e) => {
        state.view = Number(e.target.value);
        const v = DATA.views[state.view];
        Object.assign(state, {layer: v.default[0], head: v.default[1], position: null});
        render();
      }});
      DATA.views.forEach((v, n) => pick.append(el("option", {value: n, text: v.name})));
      pick.value = state.view;
      top.append(el("div", {class: "controls"}, "run ", pick));
    }
    const toggle = el("label", {}, el("input", {type: "checkbox", id: "log", onchange: (e) => { state.log = e.target.checked; render(); }}), " log scale");
    top.append(el("div", {class: "controls"}, toggle, el("span", {id: "hover", class: "note"})));
    const body = el("div", {class: "columns"},
      el("div", {}, el("section", {class: "panel"}, el("h2", {text: view.name}), header(view), el("h2", {text: "checks"}), checks(view)), overview(view)),
      headPanel(view, b));
    app.replaceChildren(top, body, el("div", {id: "tip", class: "tip"}));
    document.getElementById("log").checked = state.log;
    document.body.dataset.layer = state.layer;
    document.body.dataset.head = state.head;
  }

  function render() {
    rendering = rendering.then(renderNow).catch((e) => { console.error(e); throw e; });
    return rendering;
  }

  window.attnscope = {state, select, render, data: DATA, ready: null};
  const view = DATA.views[0];
  Object.assign(state, {layer: view.default[0], head: view.default[1]});
  if (typeof DecompressionStream === "undefined") {
    document.getElementById("app").textContent = "This report needs a browser with DecompressionStream (Chrome 80, Firefox 113, Safari 16.4 or later).";
    return;
  }
  window.attnscope.ready = render().then(() => {
    document.body.dataset.rendered = String(performance.now());
  });
})();
