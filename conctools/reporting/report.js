// The report page's script. Every program-provided string reaches the page through textContent,
// attribute values or canvas fillText, never as markup. Its data is the JSON block "conctools-data".
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("conctools-data").textContent);
  const S = D.strings || [];
  const TL = D.timeline;
  const CATS = TL.cats;
  const LABEL = 231, ROW = 20, PAGE = 100, MAX_ROWS = 100;
  const COLORS = {span: "#4a7fc1", lock_wait: "#c0392b", lock_hold: "#d4a017", slow_callback: "#7d3c98",
                  blocking_call: "#138d75", band: "#c5cfdd", group: "#9fb3cf", mark: "#2c3e50",
                  deadlock: "#c0392b", hang: "#c0392b", lock_order: "#d35400"};
  const LABELS = {span: "traced span", lock_wait: "lock wait (hatched)", lock_hold: "lock held, inferred (edged)",
                  slow_callback: "event loop blocked (cross-hatched)", blocking_call: "blocking call (dotted)"};
  const SVGNS = "http://www.w3.org/2000/svg";
  const view = {t0: 0, t1: Math.max(TL.duration_us, 1)};
  const listeners = [];  // redrawn when the view changes
  function plotW() {  // the width of every plot: the timeline's canvas, each chart
    const body = document.getElementById("tl-body");
    return Math.max(200, (body ? body.clientWidth : 1000) - LABEL);
  }

  // ---- small helpers ----
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }
  function fmtS(s) {
    if (s === null || s === undefined || isNaN(s)) return "";
    const a = Math.abs(s);
    if (a >= 100) return s.toFixed(0) + " s";
    if (a >= 1) return s.toFixed(2) + " s";
    if (a >= 1e-3) return (s * 1e3).toPrecision(3) + " ms";
    if (a >= 1e-6) return (s * 1e6).toPrecision(3) + " \u00b5s";
    if (a === 0) return "0";
    return (s * 1e9).toFixed(0) + " ns";
  }
  function fmtUs(us) { return fmtS(us / 1e6); }
  function fmtClock(us) {  // a position on the run's time axis, at the precision of the view
    const s = us / 1e6, span = view.t1 - view.t0;
    if (span < 2e6) return s.toFixed(3) + " s";
    if (span < 120e6) return s.toFixed(span < 20e6 ? 1 : 0) + " s";
    const m = Math.floor(s / 60), r = Math.round(s - m * 60);
    return m + ":" + (r < 10 ? "0" : "") + r;
  }
  function natural(a, b) {
    const re = /(\d+)/g, x = String(a).toLowerCase().split(re), y = String(b).toLowerCase().split(re);
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      if (x[i] === y[i]) continue;
      const nx = /^\d+$/.test(x[i]), ny = /^\d+$/.test(y[i]);
      if (nx && ny) return parseInt(x[i], 10) - parseInt(y[i], 10);
      return x[i] < y[i] ? -1 : 1;
    }
    return x.length - y.length;
  }
  function fmtCell(key, v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number" && /_s$/.test(key)) return fmtS(v);
    if (typeof v === "number" && /_us$/.test(key)) return fmtUs(v);
    if (typeof v === "number" && /bytes/.test(key)) return (v / 1048576).toFixed(1) + " MiB";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (Array.isArray(v)) {
      if (!v.length) return "";
      const f = v[0];
      if (f && typeof f === "object" && "filename" in f && "lineno" in f) {  // a stack: innermost frame
        return f.filename + ":" + f.lineno + (f["function"] ? " in " + f["function"] : "") +
          (v.length > 1 ? " (+" + (v.length - 1) + " frames)" : "");
      }
      return v.slice(0, 4).map(function (x) { return fmtCell("", x); }).join("; ") + (v.length > 4 ? "; \u2026 " + (v.length - 4) + " more" : "");
    }
    if (typeof v === "object") {  // a record: its fields, readably
      const ks = Object.keys(v);
      const text = ks.slice(0, 5).map(function (k) { return k.replace(/_s$/, "") + " " + fmtCell(k, v[k]); }).join(", ");
      return ks.length > 5 ? text + ", \u2026" : text;
    }
    return String(v);
  }
  function fit(g, text, width) {  // the text cut (with an ellipsis) to fit a canvas width, never squeezed
    if (g.measureText(text).width <= width) return text;
    let lo = 0, hi = text.length;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (g.measureText(text.slice(0, mid) + "\u2026").width <= width) lo = mid; else hi = mid - 1;
    }
    return lo ? text.slice(0, lo) + "\u2026" : "";
  }
  function heading(parent, id, text, note) {
    const h = el("h2", null, text);
    if (id) h.id = id;
    parent.appendChild(h);
    if (note) parent.appendChild(el("p", "note", note));
    return h;
  }

  // ---- tables: sortable, filterable, keyboard-navigable ----
  // columns: [{key, label, num, wrap, fmt(row) -> text, cell(row, td)}]; detail(row) -> [lines]
  function table(parent, spec) {
    const box = el("div", "tablebox");
    if (spec.title) heading(box, spec.id, spec.title, spec.note);
    const rows = spec.rows || [];
    if (!rows.length) { box.appendChild(el("p", "empty", spec.empty || "none")); parent.appendChild(box); return box; }
    const cols = spec.columns || Object.keys(rows[0]).map(function (k) {
      return {key: k, label: k.replace(/_s$/, ""), num: typeof rows[0][k] === "number"};
    });
    const bar = el("div", "tablebar");
    const filter = el("input");
    filter.type = "search"; filter.placeholder = "filter rows";
    filter.setAttribute("aria-label", "Filter " + (spec.title || "table"));
    const count = el("span", "count");
    bar.appendChild(filter); bar.appendChild(count);
    box.appendChild(bar);
    const t = el("table"), thead = el("thead"), hr = el("tr"), tbody = el("tbody");
    if (spec.title) t.setAttribute("aria-label", spec.title);
    let sortCol = -1, asc = true;
    cols.forEach(function (c, i) {
      const th = el("th"), b = el("button", null, c.label);
      b.type = "button";
      b.title = "Sort by " + c.label;
      b.addEventListener("click", function () {
        asc = sortCol === i ? !asc : !c.num;
        sortCol = i;
        Array.prototype.forEach.call(hr.children, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        render();
      });
      if (c.num) th.className = "num";
      th.appendChild(b);
      hr.appendChild(th);
    });
    thead.appendChild(hr); t.appendChild(thead); t.appendChild(tbody);
    const scroller = el("div", "tablescroll");
    scroller.appendChild(t);
    box.appendChild(scroller);
    const text = rows.map(function (r) {
      return cols.map(function (c) { return c.fmt ? c.fmt(r) : fmtCell(c.key, r[c.key]); }).join("\u0001").toLowerCase();
    });
    const limit = spec.limit || 300;
    let shown = limit;
    function render() {
      const q = filter.value.trim().toLowerCase();
      let idx = rows.map(function (_, i) { return i; }).filter(function (i) { return !q || text[i].indexOf(q) >= 0; });
      if (sortCol >= 0) {
        const c = cols[sortCol];
        idx.sort(function (a, b) {
          const x = rows[a][c.key], y = rows[b][c.key];
          let r;
          if (typeof x === "number" || typeof y === "number") r = (typeof x === "number" ? x : -Infinity) - (typeof y === "number" ? y : -Infinity);
          else r = natural(c.fmt ? c.fmt(rows[a]) : fmtCell(c.key, x), c.fmt ? c.fmt(rows[b]) : fmtCell(c.key, y));
          return asc ? r : -r;
        });
      }
      const total = idx.length;
      idx = idx.slice(0, shown);
      while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
      idx.forEach(function (i, n) {
        const r = rows[i], tr = el("tr");
        tr.tabIndex = n === 0 ? 0 : -1;
        cols.forEach(function (c) {
          const td = el("td", (c.num ? "num" : "") + (c.wrap ? " wrap" : ""));
          if (c.cell) c.cell(r, td); else td.textContent = c.fmt ? c.fmt(r) : fmtCell(c.key, r[c.key]);
          tr.appendChild(td);
        });
        if (spec.detail) {
          tr.setAttribute("aria-expanded", "false");
          tr.classList.add("expandable");
          tr.addEventListener("click", function () { toggle(tr, r); });
        }
        tbody.appendChild(tr);
      });
      count.textContent = (q ? total + " of " + rows.length + " rows match" : rows.length + " rows") +
        (total > idx.length ? ", " + idx.length + " shown" : "");
      if (total > idx.length) {
        const more = el("tr", "more"), td = el("td"), b = el("button", null, "show all " + total + " rows");
        b.type = "button";
        b.addEventListener("click", function () { shown = Infinity; render(); });
        td.colSpan = cols.length; td.appendChild(b); more.appendChild(td); tbody.appendChild(more);
      }
    }
    function toggle(tr, r) {
      const next = tr.nextSibling;
      if (next && next.classList.contains("detail")) { tbody.removeChild(next); tr.setAttribute("aria-expanded", "false"); return; }
      const d = el("tr", "detail"), td = el("td");
      td.colSpan = cols.length;
      td.appendChild(el("pre", null, spec.detail(r).join("\n")));
      d.appendChild(td);
      tbody.insertBefore(d, tr.nextSibling);
      tr.setAttribute("aria-expanded", "true");
    }
    tbody.addEventListener("keydown", function (ev) {
      const tr = ev.target.closest ? ev.target.closest("tr") : null;
      if (!tr || tr.classList.contains("detail")) return;
      const all = Array.prototype.filter.call(tbody.rows, function (x) { return !x.classList.contains("detail") && !x.classList.contains("more"); });
      let i = all.indexOf(tr), j = i;
      if (ev.key === "ArrowDown") j = Math.min(all.length - 1, i + 1);
      else if (ev.key === "ArrowUp") j = Math.max(0, i - 1);
      else if (ev.key === "Home") j = 0;
      else if (ev.key === "End") j = all.length - 1;
      else if (ev.key === "PageDown") j = Math.min(all.length - 1, i + 10);
      else if (ev.key === "PageUp") j = Math.max(0, i - 10);
      else if ((ev.key === "Enter" || ev.key === " ") && spec.detail) { ev.preventDefault(); tr.click(); return; }
      else return;
      ev.preventDefault();
      tr.tabIndex = -1; all[j].tabIndex = 0; all[j].focus();
    });
    filter.addEventListener("input", function () { shown = limit; render(); });
    render();
    parent.appendChild(box);
    return box;
  }

  // ---- header ----
  function header() {
    const m = D.meta, parts = [];
    parts.push("started " + m.started + ", ran for " + fmtS(m.duration_s));
    if (m.exit_status !== null && m.exit_status !== undefined) parts.push("exit " + m.exit_status);
    parts.push(m.threads + " thread" + (m.threads === 1 ? "" : "s") + ", " + m.tasks + " asyncio task" + (m.tasks === 1 ? "" : "s"));
    const counts = Object.keys(m.counts || {}).sort().map(function (k) { return k + " " + m.counts[k]; });
    parts.push("events: " + (counts.join(", ") || "none"));
    if (m.dropped) parts.push(m.dropped + " events not kept in memory (old spans folded, recurring kinds bounded; counts and tables still cover them)");
    document.getElementById("meta").textContent = parts.join("  \u00b7  ");
  }

  // ---- charts over time (SVG), on the timeline's axis ----
  function charts() {
    const box = document.getElementById("charts");
    const series = (D.charts && D.charts.series) || [];
    heading(box, null, "Over time", "One time axis for every chart and the timeline below: zoom or pan the timeline and the charts follow.");
    if (!series.length) { box.appendChild(el("p", "empty", "No samples over time (no stalls, lock waits, resource samples or load statistics).")); return; }
    const wrap = el("div", "chartwrap");
    box.appendChild(wrap);
    const H = 44;
    series.forEach(function (s) {
      const row = el("div", "chart"), label = el("div", "chartlabel"), plot = el("div", "plot");
      label.appendChild(el("b", null, s.title));
      label.appendChild(el("span", "unit", " " + s.unit));
      const value = el("span", "value"), peak = el("span", "peak");
      label.appendChild(value);
      label.appendChild(peak);
      label.title = s.note || "";
      row.appendChild(label); row.appendChild(plot); wrap.appendChild(row);
      const g = svg("svg", {height: H, role: "img", "aria-label": s.title + " (" + s.unit + "), " + (s.note || "")});
      plot.appendChild(g);
      const legend = s.lines.length > 1 ? s.lines.map(function (l) { return l.label + (l.dash ? " (dashed)" : " (solid)"); }).join(", ") : "";
      if (legend) label.appendChild(el("span", "lines", legend));
      function draw() {
        const w = plotW();
        g.setAttribute("width", w); g.setAttribute("viewBox", "0 0 " + w + " " + H);
        while (g.firstChild) g.removeChild(g.firstChild);
        let maxV = 0;
        s.lines.forEach(function (l) { l.points.forEach(function (p) { if (p[0] >= view.t0 && p[0] <= view.t1) maxV = Math.max(maxV, p[1]); }); });
        maxV = maxV || 1;
        g.appendChild(svg("line", {x1: 0, x2: w, y1: H - 0.5, y2: H - 0.5, class: "base"}));
        const span = view.t1 - view.t0, half = (s.bin_us || D.charts.bin_us || 0) / 2;
        s.lines.forEach(function (l) {
          if (s.bars) {
            let d = "";
            l.points.forEach(function (p) {
              if (p[1] <= 0 || p[0] + half < view.t0 || p[0] - half > view.t1) return;
              const x0 = (p[0] - half - view.t0) / span * w, x1 = (p[0] + half - view.t0) / span * w;
              const y = H - 2 - p[1] / maxV * (H - 6);
              d += "M" + x0.toFixed(1) + " " + (H - 1) + "V" + y.toFixed(1) + "H" + Math.max(x1, x0 + 1).toFixed(1) + "V" + (H - 1) + "Z";
            });
            if (d) g.appendChild(svg("path", {d: d, class: "bars"}));
          } else {
            const pts = [];
            l.points.forEach(function (p) {
              const x = (p[0] - view.t0) / span * w;
              if (x < -w || x > 2 * w) return;
              pts.push(x.toFixed(1) + "," + (H - 2 - p[1] / maxV * (H - 6)).toFixed(1));
            });
            if (pts.length) g.appendChild(svg("polyline", {points: pts.join(" "), class: "line", "stroke-dasharray": l.dash || "none"}));
          }
        });
        peak.textContent = "max " + (maxV < 10 ? maxV.toFixed(1) : maxV.toFixed(0)) + " " + s.unit;
        const cross = svg("line", {x1: -10, x2: -10, y1: 0, y2: H, class: "cross"});
        g.appendChild(cross);
        row.cross = cross;
      }
      row.setAt = function (t) {  // crosshair and the values at time t (null: none)
        const w = plotW(), x = t === null ? -10 : (t - view.t0) / (view.t1 - view.t0) * w;
        if (row.cross) { row.cross.setAttribute("x1", x); row.cross.setAttribute("x2", x); }
        value.textContent = t === null ? "" : " " + s.lines.map(function (l) {
          let best = null;
          l.points.forEach(function (p) { if (best === null || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p; });
          return (s.lines.length > 1 ? l.label + " " : "") + (best ? (best[1] < 10 ? best[1].toFixed(2) : best[1].toFixed(0)) : "");
        }).join(", ");
      };
      listeners.push(draw);
      crosshairs.push(row);
      plot.addEventListener("mousemove", function (ev) {
        const r = plot.getBoundingClientRect();
        setCrosshair(view.t0 + (ev.clientX - r.left) / r.width * (view.t1 - view.t0));
      });
      plot.addEventListener("mouseleave", function () { setCrosshair(null); });
      draw();
    });
  }
  const crosshairs = [];
  function setCrosshair(t) {
    crosshairs.forEach(function (r) { r.setAt(t); });
    const line = document.getElementById("tl-cross");
    if (line) {
      const w = plotW();
      if (t === null || t < view.t0 || t > view.t1) line.hidden = true;
      else { line.hidden = false; line.style.left = (LABEL + (t - view.t0) / (view.t1 - view.t0) * w) + "px"; }
    }
  }

  // ---- the timeline model: threads, task groups, tasks ----
  // A run that followed child processes: one group per process (main first), each a header row
  // that opens or closes the rows of its threads and tasks.
  const PROCS = TL.processes || [], grouped = PROCS.length > 1;
  const tracks = {}, sliceOf = {}, groupSlices = [];
  TL.tracks.forEach(function (t) {
    const proc = grouped && PROCS[t[7]] ? t[7] : 0, name = S[t[1]], prefix = grouped ? PROCS[proc].prefix : "";
    tracks[t[0]] = {tid: t[0], name: name, kind: t[2], thread: t[3], group: t[4], start: t[5], end: t[6], proc: proc,
                    short: prefix && name.indexOf(prefix) === 0 ? name.slice(prefix.length) : name};
    sliceOf[t[0]] = [];
  });
  TL.slices.forEach(function (s) {
    const list = sliceOf[s[0]];
    if (!list) return;
    const sl = {tid: s[0], start: s[1], dur: s[2], name: S[s[3]], cat: CATS[s[4]], args: s[5], depth: s[6]};
    list.push(sl);
    const tr = tracks[s[0]];
    if (tr.kind === "task" && tr.group >= 0 && sl.cat !== "span") (groupSlices[tr.group] || (groupSlices[tr.group] = [])).push(sl);
  });
  const threadIds = Object.keys(tracks).map(Number).filter(function (tid) { return tracks[tid].kind === "thread"; });
  const state = {sort: "name", open: {}, shown: {}, moreOpen: {}, openView: {}, poolOpen: {},
                 procOpen: PROCS.map(function (p) { return !!p.open; })};
  function r_g(g) { return String(g); }
  function rowKey(r) {
    return r.type + ":" + (r.type === "pool" ? r.key : r.type === "process" ? r.p : r.tid !== undefined ? r.tid : r.g);
  }
  function cmpTracks(a, b) {
    if (state.sort === "start") return a.start - b.start || natural(a.short, b.short);
    if (a.kind === "thread" && (a.short === "MainThread") !== (b.short === "MainThread")) return a.short === "MainThread" ? -1 : 1;
    return natural(a.short, b.short);
  }
  // A process's header: pid, name, how it ended; its summary: threads, tasks, problems.
  function procTitle(p) {
    const P = PROCS[p];
    return "pid " + P.pid + " \u00b7 " + P.name + (P.exit ? " \u00b7 " + P.exit : "");
  }
  function procSummary(p) {
    const P = PROCS[p], x = P.problems || {}, parts = [], found = [];
    if (!P.report) parts.push("no report from this process");
    else if (!P.threads) parts.push("nothing on the timeline");
    else parts.push(P.threads + " thread" + (P.threads === 1 ? "" : "s") + (P.tasks ? ", " + P.tasks + " task" + (P.tasks === 1 ? "" : "s") : ""));
    if (x.stuck) found.push(x.stuck === "deadlock" ? "DEADLOCKED" : x.stuck === "dead" ? "DIED while awaited" : "HUNG");
    if (x.deadlocks) found.push(x.deadlocks + " deadlock" + (x.deadlocks === 1 ? "" : "s"));
    if (x.hangs) found.push(x.hangs + " hang" + (x.hangs === 1 ? "" : "s"));
    if (x.stalls) found.push(x.stalls + " stall" + (x.stalls === 1 ? "" : "s") + " of its event loop");
    parts.push(found.length ? "findings: " + found.join(", ") : "no findings");
    return parts.join(" \u00b7 ");
  }
  const procSpans = PROCS.map(function () { return null; });  // first and last activity of each process's threads
  threadIds.forEach(function (tid) {
    const t = tracks[tid], sp = procSpans[t.proc];
    if (grouped) procSpans[t.proc] = sp ? [Math.min(sp[0], t.start), Math.max(sp[1], t.end)] : [t.start, t.end];
  });
  function procSpan(p) { return procSpans[p]; }
  function cmpGroups(a, b) {
    if (state.sort === "start") return TL.groups[a].first_us - TL.groups[b].first_us;
    return natural(TL.groups[a].name, TL.groups[b].name);
  }
  // Past this many threads, threads named alike (a pool: "worker-1", "worker-2", ...) share one row
  // until it is opened; every thread still has exactly one row of its own once shown.
  const POOL_AFTER = 90;
  const pools = {};  // pattern -> [thread tracks]
  if (threadIds.length > POOL_AFTER) {
    threadIds.forEach(function (tid) {  // within one process: "N:" + the name's pattern
      const key = tracks[tid].proc + ":" + tracks[tid].short.replace(/\d+/g, "N");
      (pools[key] || (pools[key] = [])).push(tracks[tid]);
    });
    Object.keys(pools).forEach(function (k) { if (pools[k].length < 2) delete pools[k]; });
  }
  const poolOf = {};
  Object.keys(pools).forEach(function (k) { pools[k].forEach(function (t) { poolOf[t.tid] = k; }); });
  function poolBand(key) {
    const out = [];
    pools[key].forEach(function (t) {
      (TL.thread_bands[String(t.tid)] || []).forEach(function (v, i) { out[i] = (out[i] || 0) + v; });
    });
    return out;
  }
  function buildRows() {
    const rows = [];
    const threads = threadIds.map(function (t) { return tracks[t]; }).sort(cmpTracks);
    const groupsOf = {};
    TL.groups.forEach(function (g, i) { (groupsOf[g.thread] || (groupsOf[g.thread] = [])).push(i); });
    const procShown = function (t) { return !grouped || state.procOpen[t.proc]; };
    const shownThreads = threads.filter(function (t) { return procShown(t) && (!poolOf[t.tid] || state.poolOpen[poolOf[t.tid]]); });
    // Room for groups: about MAX_ROWS rows in all before anything is expanded.
    const room = Math.max(MAX_ROWS - shownThreads.length - Object.keys(pools).length, 10);
    const allGroups = [].concat.apply([], shownThreads.map(function (t) { return groupsOf[t.tid] || []; }));
    const ranked = allGroups.slice().sort(function (a, b) { return TL.groups[b].count - TL.groups[a].count; });
    const visibleGroups = {};
    ranked.slice(0, room).forEach(function (g) { visibleGroups[g] = true; });
    const poolDone = {};
    let off = 0;
    const emit = function (t) {
      const pool = poolOf[t.tid];
      if (pool && !poolDone[pool]) {
        poolDone[pool] = true;
        rows.push({type: "pool", key: pool, depth: off});
      }
      if (pool && !state.poolOpen[pool]) return;
      rows.push({type: "thread", tid: t.tid, depth: off + (pool ? 1 : 0)});
      const base = off + (pool ? 1 : 0);
      const gs = (groupsOf[t.tid] || []).slice().sort(cmpGroups);
      const hidden = gs.filter(function (g) { return !visibleGroups[g]; });
      const show = state.moreOpen[t.tid] ? gs : gs.filter(function (g) { return visibleGroups[g]; });
      show.forEach(function (g) {
        const grp = TL.groups[g];
        if (grp.count === 1 && grp.tasks.length === 1) { rows.push({type: "task", tid: grp.tasks[0], depth: base + 1, g: g, single: true}); return; }
        rows.push({type: "group", g: g, depth: base + 1});
        if (!state.open[g]) return;
        // The tasks that ran in the part of the run on screen when the group was opened come first.
        const win = state.openView[r_g(g)] || view;
        const inView = function (t) { return t.end >= win.t0 && t.start <= win.t1; };
        const members = grp.tasks.map(function (tid) { return tracks[tid]; }).sort(function (a, b) {
          return (inView(b) - inView(a)) || cmpTracks(a, b);
        });
        const n = state.shown[g] || PAGE;
        members.slice(0, n).forEach(function (m) { rows.push({type: "task", tid: m.tid, depth: base + 2, g: g}); });
        if (members.length > n) rows.push({type: "more", g: g, depth: base + 2, left: members.length - n});
        const notListed = grp.count - grp.tasks.length;
        if (notListed > 0 && members.length <= n) rows.push({type: "note", g: g, depth: base + 2, text: notListed + " older tasks summarised in the band above"});
      });
      if (hidden.length && !state.moreOpen[t.tid]) rows.push({type: "moregroups", tid: t.tid, depth: base + 1, left: hidden.length});
    };
    if (!grouped) { threads.forEach(emit); return rows; }
    off = 1;
    PROCS.forEach(function (_, p) {
      rows.push({type: "process", p: p, depth: 0});
      if (state.procOpen[p]) threads.filter(function (t) { return t.proc === p; }).forEach(emit);
    });
    return rows;
  }
  function label(r) {
    if (r.type === "process") return procTitle(r.p);
    if (r.type === "thread") return tracks[r.tid].short;
    if (r.type === "pool") return r.key.slice(r.key.indexOf(":") + 1) + " \u00d7" + pools[r.key].length + " threads";
    if (r.type === "task") {
      const t = tracks[r.tid];
      return r.single ? t.short + " \u00b7 " + TL.groups[t.group].name : t.short;
    }
    if (r.type === "group") {
      const g = TL.groups[r.g];
      return g.name + " \u00d7" + g.count + " \u00b7 p50 " + fmtUs(g.p50_us) + " \u00b7 p95 " + fmtUs(g.p95_us);
    }
    if (r.type === "more") return "show " + Math.min(PAGE, r.left) + " more (" + r.left + " left)";
    if (r.type === "moregroups") return r.left + " more task group" + (r.left === 1 ? "" : "s") + "\u2026";
    return r.text || "";
  }

  // ---- the timeline view ----
  let rows = [], rowIndex = {};
  const canvas = document.getElementById("timeline"), ctx = canvas.getContext("2d");
  const axis = document.getElementById("axis"), actx = axis.getContext("2d");
  const rowsBox = document.getElementById("tl-rows"), tip = document.getElementById("tip");
  const patterns = {};
  function pattern(kind) {
    if (patterns[kind]) return patterns[kind];
    const p = document.createElement("canvas"); p.width = p.height = 6;
    const g = p.getContext("2d");
    g.fillStyle = COLORS[kind]; g.fillRect(0, 0, 6, 6);
    g.strokeStyle = "rgba(255,255,255,0.55)"; g.lineWidth = 1.2;
    if (kind === "lock_wait") { g.beginPath(); g.moveTo(0, 6); g.lineTo(6, 0); g.stroke(); }
    else if (kind === "slow_callback") { g.beginPath(); g.moveTo(0, 6); g.lineTo(6, 0); g.moveTo(0, 0); g.lineTo(6, 6); g.stroke(); }
    else if (kind === "blocking_call") { g.fillStyle = "rgba(255,255,255,0.6)"; g.fillRect(2, 2, 2, 2); }
    patterns[kind] = ctx.createPattern(p, "repeat");
    return patterns[kind];
  }
  function fill(kind) { return kind === "span" || kind === "lock_hold" ? COLORS[kind] : pattern(kind); }
  function rowOfTrack(tid) {
    if (rowIndex["task:" + tid] !== undefined) return rowIndex["task:" + tid];
    const t = tracks[tid];
    if (!t) return undefined;
    if (t.kind === "task") {
      if (t.group >= 0 && rowIndex["group:" + t.group] !== undefined) return rowIndex["group:" + t.group];
      return rowOfTrack(t.thread);
    }
    if (rowIndex["thread:" + tid] !== undefined) return rowIndex["thread:" + tid];
    if (poolOf[tid] && rowIndex["pool:" + poolOf[tid]] !== undefined) return rowIndex["pool:" + poolOf[tid]];
    return grouped ? rowIndex["process:" + t.proc] : undefined;  // a closed process: its header
  }
  function focusable(i) {  // a row's element that takes the focus: a process header's button, else the row
    const c = rowsBox.children[i];
    return c && c.firstChild && c.firstChild.tagName === "BUTTON" ? c.firstChild : c;
  }
  function layoutRows() {
    rows = buildRows();
    rowIndex = {};
    rows.forEach(function (r, i) {
      rowIndex[r.type + ":" + (r.type === "pool" ? r.key : r.type === "process" ? r.p : r.type === "group" || r.type === "more" ? r.g : r.tid)] = i;
    });
    while (rowsBox.firstChild) rowsBox.removeChild(rowsBox.firstChild);
    rows.forEach(function (r, i) {
      const b = el("div", "tlrow " + r.type, r.type === "process" ? null : label(r));
      b.style.paddingLeft = (4 + r.depth * 12) + "px";
      b.title = label(r);
      b.setAttribute("role", "treeitem");
      b.setAttribute("aria-level", String(r.depth + 1));
      b.tabIndex = i === 0 ? 0 : -1;
      if (r.type === "process") {
        // A real button (Enter and Space work natively) that shows or hides the process's rows.
        const open = !!state.procOpen[r.p], P = PROCS[r.p], btn = el("button", "proc");
        btn.type = "button";
        btn.appendChild(el("span", "twisty", open ? "\u25be " : "\u25b8 "));
        btn.appendChild(document.createTextNode(label(r)));
        btn.setAttribute("aria-expanded", open ? "true" : "false");
        btn.setAttribute("aria-label", (open ? "Hide" : "Show") + " the threads and tasks of " + (P.main ? "the main process " : "child process ") +
          label(r) + " (" + procSummary(r.p) + ")");
        btn.title = label(r) + "\n" + procSummary(r.p) + "\n" + (open ? "click: hide its threads and tasks" : "click: show its threads and tasks");
        btn.tabIndex = b.tabIndex;
        b.removeAttribute("tabindex");
        b.removeAttribute("title");
        b.id = P.anchor;
        b.setAttribute("aria-expanded", open ? "true" : "false");
        b.classList.add(P.main ? "main" : "child");
        if (P.problems && (P.problems.stuck || P.problems.deadlocks || P.problems.hangs)) b.classList.add("problem");
        btn.addEventListener("click", function () { activate(r); });
        b.appendChild(btn);
        b.addEventListener("keydown", function (ev) { rowKeys(ev, i, r); });
        rowsBox.appendChild(b);
        return;
      }
      if (r.type === "group") {
        b.setAttribute("aria-expanded", state.open[r.g] ? "true" : "false");
        b.insertBefore(el("span", "twisty", state.open[r.g] ? "\u25be " : "\u25b8 "), b.firstChild);
      }
      if (r.type === "pool") {
        b.setAttribute("aria-expanded", state.poolOpen[r.key] ? "true" : "false");
        b.insertBefore(el("span", "twisty", state.poolOpen[r.key] ? "\u25be " : "\u25b8 "), b.firstChild);
      }
      b.addEventListener("click", function () { activate(r); });
      b.addEventListener("keydown", function (ev) { rowKeys(ev, i, r); });
      rowsBox.appendChild(b);
    });
    const note = TL.groups.length ? " Task groups list the tasks that run the same thing; open one to see its tasks." : "";
    document.getElementById("rowcount").textContent = rows.length + " rows." + note;
    draw();
  }
  function activate(r) {
    const key = rowKey(r);
    if (r.type === "group") {
      state.open[r.g] = !state.open[r.g];
      state.openView[r_g(r.g)] = {t0: view.t0, t1: view.t1};
    }
    else if (r.type === "more") state.shown[r.g] = (state.shown[r.g] || PAGE) + PAGE;
    else if (r.type === "moregroups") state.moreOpen[r.tid] = true;
    else if (r.type === "pool") state.poolOpen[r.key] = !state.poolOpen[r.key];
    else if (r.type === "process") state.procOpen[r.p] = !state.procOpen[r.p];
    else return;
    layoutRows();
    focusRow(rows.findIndex(function (x) { return rowKey(x) === key; }));
  }
  function focusRow(i) {
    const target = focusable(i >= 0 ? i : 0);
    if (!target) return;
    rows.forEach(function (_, j) { focusable(j).tabIndex = -1; });
    target.tabIndex = 0; target.focus();
  }
  // A link to a process's group (a finding about a child: "in the timeline") opens the group first.
  function openProcess(anchor) {
    const p = PROCS.findIndex(function (P) { return P.anchor === anchor; });
    if (p < 0) return false;
    if (!state.procOpen[p]) { state.procOpen[p] = true; layoutRows(); }
    const i = rows.findIndex(function (x) { return x.type === "process" && x.p === p; });
    const row = rowsBox.children[i];
    if (row) { row.scrollIntoView({block: "start"}); focusRow(i); }
    return true;
  }
  function rowKeys(ev, i, r) {
    let j = i;
    if (ev.key === "ArrowDown") j = Math.min(rows.length - 1, i + 1);
    else if (ev.key === "ArrowUp") j = Math.max(0, i - 1);
    else if (ev.key === "Home") j = 0;
    else if (ev.key === "End") j = rows.length - 1;
    else if ((ev.key === "Enter" || ev.key === " ") && r.type === "process") return;  // the button's own click
    else if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); activate(r); return; }
    else if (ev.key === "ArrowRight" && ((r.type === "group" && !state.open[r.g]) || (r.type === "pool" && !state.poolOpen[r.key]) ||
                                         (r.type === "process" && !state.procOpen[r.p]))) { ev.preventDefault(); activate(r); return; }
    else if (ev.key === "ArrowLeft" && ((r.type === "group" && state.open[r.g]) || (r.type === "pool" && state.poolOpen[r.key]) ||
                                        (r.type === "process" && state.procOpen[r.p]))) { ev.preventDefault(); activate(r); return; }
    else return;
    ev.preventDefault();
    focusable(i).tabIndex = -1;
    const next = focusable(j);
    next.tabIndex = 0;
    next.focus();
  }
  function xOf(t, w) { return (t - view.t0) / (view.t1 - view.t0) * w; }
  function drawAxis(w) {
    const dpr = window.devicePixelRatio || 1;
    axis.style.width = w + "px";
    axis.width = Math.round(w * dpr); axis.height = Math.round(22 * dpr);
    actx.setTransform(dpr, 0, 0, dpr, 0, 0);
    actx.clearRect(0, 0, w, 22);
    actx.font = "11px system-ui, sans-serif"; actx.fillStyle = "#4b5466"; actx.textBaseline = "middle";
    const span = view.t1 - view.t0;
    let step = Math.pow(10, Math.floor(Math.log10(span / 8)));
    if (span / step > 16) step *= 5; else if (span / step > 8) step *= 2;
    for (let t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      const x = xOf(t, w);
      actx.fillRect(x, 16, 1, 6);
      actx.fillText(fmtClock(t), x + 3, 9);
    }
  }
  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const w = plotW(), h = Math.max(rows.length, 1) * ROW;
    drawAxis(w);
    canvas.style.width = w + "px"; canvas.style.height = h + "px";
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
    const binUs = TL.bin_us, cut = TL.summarised.before_us;
    rows.forEach(function (r, i) {
      const y = i * ROW;
      ctx.fillStyle = r.type === "process" ? "#e3e8f0" : i % 2 ? "#fbfcfd" : "#f2f4f7"; ctx.fillRect(0, y, w, ROW);
      if (r.type === "process") {
        // Its lifetime on the timeline (a thin bar), and its summary: still there when it is closed.
        const span = procSpan(r.p);
        if (span && span[1] >= view.t0 && span[0] <= view.t1) {
          const x0 = Math.max(0, xOf(span[0], w)), x1 = Math.min(w, Math.max(xOf(span[1], w), x0 + 2));
          ctx.fillStyle = COLORS.group; ctx.fillRect(x0, y + ROW - 5, x1 - x0, 3);
        }
        const P = PROCS[r.p];
        ctx.fillStyle = P.problems && (P.problems.stuck || P.problems.deadlocks || P.problems.hangs) ? COLORS.deadlock : "#2c3445";
        ctx.fillText(fit(ctx, (P.exit ? P.exit + " \u00b7 " : "") + procSummary(r.p), w - 12), 6, y + ROW / 2 - 2);
      } else if (r.type === "thread") {
        const band = TL.thread_bands[String(r.tid)];
        if (band && cut) drawBand(band, y, w, binUs, 1, COLORS.band, cut);
        drawSlices(sliceOf[r.tid] || [], y, w);
      } else if (r.type === "task") {
        drawSlices(sliceOf[r.tid] || [], y, w);
      } else if (r.type === "pool") {
        const band = poolBand(r.key);
        let peak = 0; band.forEach(function (v) { peak = Math.max(peak, v); });
        drawBand(band, y, w, binUs, peak || 1, COLORS.group, Infinity);
      } else if (r.type === "group") {
        const g = TL.groups[r.g];
        let peak = 0; g.band.forEach(function (v) { peak = Math.max(peak, v); });
        drawBand(g.band, y, w, binUs, peak || 1, COLORS.group, Infinity);
        (groupSlices[r.g] || []).forEach(function (s) {
          if (s.start + s.dur < view.t0 || s.start > view.t1) return;
          const x0 = xOf(s.start, w), x1 = Math.max(xOf(s.start + s.dur, w), x0 + 1);
          ctx.fillStyle = fill(s.cat);
          ctx.fillRect(x0, y + ROW - 7, x1 - x0, 5);
        });
      }
    });
    drawFlows(w);
    TL.instants.forEach(function (m) {
      const x = xOf(m[1], w);
      if (x < 0 || x > w) return;
      ctx.fillStyle = COLORS[m[3]] || COLORS.mark;
      if (m[0] === null && grouped && m[5]) {  // a moment of a whole child process: on its header
        const ri = rowIndex["process:" + m[5]];
        if (ri === undefined) return;
        const y = ri * ROW;
        ctx.fillRect(x - 1, y, 2, ROW);
        ctx.fillText(S[m[2]].replace(PROCS[m[5]].prefix, ""), x + 3, y + 7);
      } else if (m[0] === null) {
        ctx.fillRect(x - 1, 0, 2, h);
        ctx.fillText(S[m[2]], x + 3, 7);
      } else {
        const ri = rowOfTrack(m[0]);
        if (ri === undefined) return;
        const y = ri * ROW;
        ctx.beginPath(); ctx.moveTo(x, y + 3); ctx.lineTo(x + 4, y + ROW / 2); ctx.lineTo(x, y + ROW - 3); ctx.lineTo(x - 4, y + ROW / 2); ctx.fill();
      }
    });
  }
  function drawBand(band, y, w, binUs, peak, color, until) {
    ctx.fillStyle = color;
    for (let i = 0; i < band.length; i++) {
      const t0 = i * binUs, t1 = Math.min((i + 1) * binUs, until);
      if (band[i] <= 0 || t1 <= t0 || t1 < view.t0 || t0 > view.t1) continue;
      const x0 = xOf(t0, w), x1 = Math.max(xOf(t1, w), x0 + 1), hh = Math.max(2, Math.min(1, band[i] / peak) * (ROW - 6));
      ctx.fillRect(x0, y + ROW - 2 - hh, x1 - x0, hh);
    }
  }
  function drawSlices(list, y, w) {
    const px = (view.t1 - view.t0) / w;
    let lastEnd = -1, lastDepth = -1;
    list.forEach(function (s) {
      if (s.start + s.dur < view.t0 || s.start > view.t1) return;
      const x0 = xOf(s.start, w), x1 = Math.max(xOf(s.start + s.dur, w), x0 + 1);
      if (x1 - x0 < 1.5 && x0 <= lastEnd && s.depth === lastDepth && s.dur < px) return;  // many tiny slices: one pixel is enough
      lastEnd = x1; lastDepth = s.depth;
      const inset = Math.min(s.depth, 3) * 3;
      ctx.fillStyle = fill(s.cat);
      ctx.fillRect(x0, y + 2 + inset, x1 - x0, ROW - 4 - 2 * inset);
      if (s.cat === "lock_hold") { ctx.fillStyle = "#5c4400"; ctx.fillRect(x0, y + 2 + inset, x1 - x0, 2); ctx.fillRect(x0, y + ROW - 4 - inset, x1 - x0, 2); }
      if (x1 - x0 > 40) {
        ctx.fillStyle = s.cat === "lock_hold" ? "#1d2330" : "#fff";
        ctx.fillText(fit(ctx, s.name, x1 - x0 - 6), x0 + 3, y + ROW / 2);
      }
    });
  }
  function drawFlows(w) {
    ctx.strokeStyle = "rgba(60,60,60,0.85)"; ctx.fillStyle = "#222"; ctx.lineWidth = 1;
    let drawn = 0;
    TL.flows.forEach(function (f) {
      if (drawn > 3000) return;
      if (Math.max(f[1], f[3]) < view.t0 || Math.min(f[1], f[3]) > view.t1) return;
      const a = rowOfTrack(f[0]), b = rowOfTrack(f[2]);
      if (a === undefined || b === undefined) return;
      const x0 = xOf(f[1], w), x1 = xOf(f[3], w), y0 = a * ROW + ROW / 2, y1 = b * ROW + ROW / 2;
      if (a === b && Math.abs(x1 - x0) < 2) return;
      drawn++;
      ctx.beginPath(); ctx.moveTo(x0, y0);
      ctx.bezierCurveTo(x0 + 12, y0, x1 - 12, y1, x1, y1); ctx.stroke();
      ctx.beginPath(); ctx.moveTo(x1, y1); ctx.lineTo(x1 - 6, y1 - 3); ctx.lineTo(x1 - 6, y1 + 3); ctx.fill();
    });
  }
  function hit(ev) {
    const rect = canvas.getBoundingClientRect(), px = ev.clientX - rect.left, py = ev.clientY - rect.top;
    const i = Math.floor(py / ROW), w = rect.width;
    if (i < 0 || i >= rows.length) return null;
    const r = rows[i], t = view.t0 + px / w * (view.t1 - view.t0), tol = (view.t1 - view.t0) / w * 2;
    const lines = [label(r)];
    if (r.type === "process") {
      lines.push(procSummary(r.p));
      lines.push((state.procOpen[r.p] ? "Enter or click the header: hide" : "Enter or click the header: show") + " its threads and tasks");
      return {lines: lines, px: px, py: py};
    }
    if (r.type === "group") {
      const g = TL.groups[r.g], bi = Math.floor(t / TL.bin_us);
      lines.push(g.count + " tasks; duration p50 " + fmtUs(g.p50_us) + ", p95 " + fmtUs(g.p95_us) + ", max " + fmtUs(g.max_us));
      if (g.band[bi] !== undefined) lines.push("at " + fmtClock(t) + ": " + g.band[bi].toFixed(1) + " running on average");
      lines.push("Enter or click the row's name: list its tasks");
      return {lines: lines, px: px, py: py};
    }
    if (r.type === "pool") {
      lines.push("threads named alike, one row until opened: Enter or click the row's name");
      return {lines: lines, px: px, py: py};
    }
    if (r.type !== "thread" && r.type !== "task") return null;
    let best = null;
    (sliceOf[r.tid] || []).forEach(function (s) {
      if (t >= s.start - tol && t <= s.start + s.dur + tol && (!best || s.depth >= best.depth)) best = s;
    });
    if (!best) return null;
    lines.unshift(best.name);
    lines.push((LABELS[best.cat] || best.cat) + "; at " + fmtClock(best.start) + ", took " + fmtUs(best.dur));
    for (let i = 0; i + 1 < best.args.length; i += 2) {
      const k = S[best.args[i]], v = JSON.parse(S[best.args[i + 1]]);
      if (v !== null && v !== "") lines.push(k + ": " + fmtCell(k, v));
    }
    return {lines: lines, px: px, py: py};
  }
  function setView(t0, t1) {
    const full = Math.max(TL.duration_us, 1), span = Math.max(50, Math.min(full, t1 - t0));
    t0 = Math.max(0, Math.min(t0, full - span));
    view.t0 = t0; view.t1 = t0 + span;
    draw();
    listeners.forEach(function (f) { f(); });
  }
  function zoom(k, at) {
    const t = at === undefined ? (view.t0 + view.t1) / 2 : at;
    setView(t - (t - view.t0) * k, t + (view.t1 - t) * k);
  }
  function pan(frac) { const d = (view.t1 - view.t0) * frac; setView(view.t0 + d, view.t1 + d); }
  function legend() {
    const lg = document.getElementById("legend");
    Object.keys(LABELS).forEach(function (k) {
      const s = el("span"), c = el("canvas");
      c.width = 22; c.height = 12;
      const g = c.getContext("2d");
      g.fillStyle = fill(k); g.fillRect(0, 0, 22, 12);
      if (k === "lock_hold") { g.fillStyle = "#5c4400"; g.fillRect(0, 0, 22, 2); g.fillRect(0, 10, 22, 2); }
      s.appendChild(c); s.appendChild(document.createTextNode(" " + LABELS[k]));
      lg.appendChild(s);
    });
    const a = el("span", null, "\u2192 lock hand-off: from the holder's release to the next acquirer");
    lg.appendChild(a);
    const b = el("span", null, "\u2582 band: how busy a thread was / how many tasks of a group ran");
    lg.appendChild(b);
  }
  function toolbar() {
    const bar = document.getElementById("tl-toolbar");
    function button(text, title, fn) {
      const b = el("button", null, text); b.type = "button"; b.title = title; b.setAttribute("aria-label", title);
      b.addEventListener("click", fn); bar.appendChild(b); return b;
    }
    button("+", "Zoom in", function () { zoom(0.5); });
    button("\u2212", "Zoom out", function () { zoom(2); });
    button("\u2190", "Pan left", function () { pan(-0.25); });
    button("\u2192", "Pan right", function () { pan(0.25); });
    button("whole run", "Show the whole run", function () { setView(0, TL.duration_us); });
    const lab = el("label", null, " rows: ");
    const sel = el("select");
    [["name", "by name (natural order)"], ["start", "by start"]].forEach(function (o) {
      const opt = el("option", null, o[1]); opt.value = o[0]; sel.appendChild(opt);
    });
    sel.addEventListener("change", function () { state.sort = sel.value; layoutRows(); });
    lab.appendChild(sel); bar.appendChild(lab);
    bar.appendChild(el("span", "count", "")).id = "rowcount";
  }
  function timeline() {
    legend(); toolbar();
    const sm = TL.summarised, notes = [];
    notes.push(threadIds.length + " thread" + (threadIds.length === 1 ? "" : "s") + " (one row each), " +
      TL.groups.reduce(function (n, g) { return n + g.count; }, 0) + " asyncio tasks in " + TL.groups.length + " group" + (TL.groups.length === 1 ? "" : "s") + ".");
    if (TL.handoffs) notes.push(TL.handoffs + " lock hand-offs: the holder's hold (inferred from the waits) and an arrow to the next acquirer.");
    if (sm.slices) notes.push("Summarised: " + sm.slices + " of " + sm.of + " slices before " + fmtClock(sm.before_us) +
      " are drawn as activity bands, not one by one (the most recent and the longest ones are drawn)" +
      (sm.tasks ? "; " + sm.tasks + " older tasks are counted in their groups without a row of their own" : "") +
      (sm.flows ? "; " + sm.flows + " older hand-off arrows left out" : "") + ".");
    if (TL.clipped) notes.push(TL.clipped + " slices were drawn clipped to nest on their thread (clock noise between producers).");
    if (grouped) notes.push(PROCS.length + " processes (the program and " + (PROCS.length - 1) + " child process" + (PROCS.length === 2 ? "" : "es") +
      "), one group each under a header: its pid, name, how it ended and what was found; click a header (or Enter) to show or hide its threads and tasks.");
    document.getElementById("tl-note").textContent = notes.join(" ");
    const cross = el("div"); cross.id = "tl-cross"; cross.hidden = true;
    document.getElementById("timeline-wrap").appendChild(cross);
    layoutRows();
    if (grouped) {
      document.addEventListener("click", function (ev) {
        const a = ev.target && ev.target.closest ? ev.target.closest("a[href^='#process-']") : null;
        if (a) openProcess(a.getAttribute("href").slice(1));
      });
      window.addEventListener("hashchange", function () { openProcess(location.hash.slice(1)); });
      if (location.hash) openProcess(location.hash.slice(1));
    }
    let drag = null;
    canvas.addEventListener("wheel", function (ev) {
      if (!(ev.ctrlKey || ev.metaKey || ev.shiftKey)) return;  // a plain wheel scrolls the rows
      ev.preventDefault();
      const rect = canvas.getBoundingClientRect(), t = view.t0 + (ev.clientX - rect.left) / rect.width * (view.t1 - view.t0);
      if (ev.shiftKey && !ev.ctrlKey && !ev.metaKey) pan((ev.deltaY || ev.deltaX) > 0 ? 0.1 : -0.1);
      else zoom(ev.deltaY > 0 ? 1.25 : 0.8, t);
    }, {passive: false});
    axis.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      const rect = axis.getBoundingClientRect();
      zoom(ev.deltaY > 0 ? 1.25 : 0.8, view.t0 + (ev.clientX - rect.left) / rect.width * (view.t1 - view.t0));
    }, {passive: false});
    canvas.addEventListener("mousedown", function (ev) { drag = {x: ev.clientX, t0: view.t0, t1: view.t1}; canvas.classList.add("dragging"); });
    window.addEventListener("mouseup", function () { drag = null; canvas.classList.remove("dragging"); });
    canvas.addEventListener("dblclick", function () { setView(0, TL.duration_us); });
    canvas.addEventListener("keydown", function (ev) {
      const k = ev.key;
      if (k === "+" || k === "=") zoom(0.5);
      else if (k === "-" || k === "_") zoom(2);
      else if (k === "ArrowLeft") pan(-0.2);
      else if (k === "ArrowRight") pan(0.2);
      else if (k === "0" || k === "Home") setView(0, TL.duration_us);
      else return;
      ev.preventDefault();
    });
    canvas.addEventListener("mousemove", function (ev) {
      const rect = canvas.getBoundingClientRect();
      if (drag) {
        const dt = (ev.clientX - drag.x) / rect.width * (drag.t1 - drag.t0);
        setView(drag.t0 - dt, drag.t1 - dt); return;
      }
      setCrosshair(view.t0 + (ev.clientX - rect.left) / rect.width * (view.t1 - view.t0));
      const h = hit(ev);
      if (!h) { tip.hidden = true; return; }
      tip.textContent = h.lines.join("\n");
      tip.hidden = false;
      const wrap = document.getElementById("timeline-wrap").getBoundingClientRect();
      tip.style.left = Math.min(ev.clientX - wrap.left + 14, wrap.width - 360) + "px";
      tip.style.top = (ev.clientY - wrap.top + 16) + "px";
    });
    canvas.addEventListener("mouseleave", function () { tip.hidden = true; setCrosshair(null); });
    window.addEventListener("resize", function () { draw(); listeners.forEach(function (f) { f(); }); });
    if (!threadIds.length) document.getElementById("timeline-section").appendChild(el("p", "empty", "No thread or task recorded anything on the timeline."));
  }

  // ---- tables ----
  function sparkline(values) {
    const w = 120, h = 18, g = svg("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img"});
    let peak = 0; values.forEach(function (v) { peak = Math.max(peak, v); });
    const n = values.length || 1;
    let d = "";
    values.forEach(function (v, i) {
      if (!v) return;
      const x = i / n * w, bh = Math.max(2, v / (peak || 1) * (h - 2));
      d += "M" + x.toFixed(1) + " " + h + "V" + (h - bh).toFixed(1) + "h" + Math.max(1, w / n).toFixed(1) + "V" + h + "Z";
    });
    g.appendChild(svg("line", {x1: 0, x2: w, y1: h - 0.5, y2: h - 0.5, class: "base"}));
    if (d) g.appendChild(svg("path", {d: d, class: "bars"}));
    g.setAttribute("aria-label", "when: " + values.reduce(function (a, b) { return a + b; }, 0) + " over the run, busiest column " + peak);
    return g;
  }
  // A run with child processes: each table's rows come from every process, in a column of their own.
  function byProcess(rows, columns) {
    return rows.some(function (r) { return r.process; }) ? [{key: "process", label: "process"}].concat(columns) : columns;
  }
  function tables() {
    const p = document.getElementById("tables");
    const sites = D.slow_sites;
    const stalls = sites.reduce(function (n, s) { return n + s.stalls; }, 0);
    table(p, {
      id: "slow-callbacks",
      title: "Slow callbacks by culprit site",
      note: stalls ? "The event loop was blocked " + stalls + " times at " + sites.length + " site" + (sites.length === 1 ? "" : "s") +
        ". Each row is one culprit line; its sparkline shows when over the run. Enter or click a row: the stack captured during the stall." : null,
      empty: "The event loop was never blocked above the threshold (or no loop was watched).",
      rows: sites,
      columns: byProcess(sites, [
        {key: "culprit", label: "culprit"}, {key: "function", label: "function"},
        {key: "stalls", label: "stalls", num: true}, {key: "total_s", label: "total", num: true},
        {key: "max_s", label: "max", num: true}, {key: "p99_s", label: "p99", num: true},
        {key: "spark", label: "when", fmt: function () { return ""; }, cell: function (r, td) { td.appendChild(sparkline(r.spark)); }},
        {key: "tasks", label: "tasks (first 5)", wrap: true},
      ]),
      detail: function (r) {
        const out = [];
        if (r.process) out.push("process: " + r.process);
        if (r.line) out.push("blocking line: " + r.line);
        if (r.callback) out.push("while running " + r.callback);
        out.push("stack captured during the stall (innermost first):");
        r.stack.forEach(function (f) { out.push("  " + f); });
        if (!r.stack.length) out.push("  (none: the stall ended before it could be sampled)");
        return out;
      },
    });
    table(p, {
      id: "locks",
      title: "Locks",
      note: "Most total wait first. Created at: the program's line that made the lock. Hottest waits: where threads and tasks waited. Held by / waiters: who made others wait and who waited (tasks by what they run).",
      empty: "No traced lock was ever contended.",
      rows: D.locks,
      columns: byProcess(D.locks, [
        {key: "lock", label: "lock"}, {key: "kind", label: "kind"}, {key: "created_at", label: "created at"},
        {key: "acquired", label: "acquired", num: true}, {key: "contended", label: "contended", num: true},
        {key: "waited_s", label: "waited", num: true}, {key: "wait_p99_s", label: "wait p99", num: true},
        {key: "wait_max_s", label: "max", num: true}, {key: "hold_p99_s", label: "hold p99", num: true},
        {key: "hottest_waits", label: "hottest waits", wrap: true}, {key: "held_by", label: "held by", wrap: true},
      ]),
      detail: function (r) {
        return ["lock " + r.lock + " (" + r.kind + "), created at " + (r.created_at || "?") + (r.process ? ", in process " + r.process : ""),
                "waits: p50 " + fmtS(r.wait_p50_s) + ", p99 " + fmtS(r.wait_p99_s) + ", max " + fmtS(r.wait_max_s),
                "holds: p99 " + (fmtS(r.hold_p99_s) || "-") + ", max " + (fmtS(r.hold_max_s) || "-"),
                "hottest waiting sites: " + (r.hottest_waits || "-"), "held by: " + (r.held_by || "-"), "waiters: " + (r.waiters || "-")];
      },
    });
    if (D.signal_waits.length) table(p, {
      id: "signal-waits", title: "Waits for a signal",
      note: "Conditions, events and barriers: a wait for a notify, a set or the other parties, not lock contention.",
      rows: D.signal_waits,
      columns: byProcess(D.signal_waits, [
        {key: "primitive", label: "primitive"}, {key: "kind", label: "kind"}, {key: "created_at", label: "created at"},
        {key: "waits", label: "waits", num: true}, {key: "timed_out", label: "timed out", num: true},
        {key: "waited_s", label: "waited", num: true}, {key: "wait_p50_s", label: "p50", num: true},
        {key: "wait_p99_s", label: "p99", num: true}, {key: "wait_max_s", label: "max", num: true},
        {key: "hottest_waits", label: "hottest waits", wrap: true},
      ]),
    });
    if (TL.groups.length) table(p, {
      id: "task-groups", title: "Task groups",
      note: "asyncio tasks grouped by what they run (their first traced span, else their coroutine).",
      rows: TL.groups.map(function (g) {
        return {group: g.name, thread: tracks[g.thread] ? tracks[g.thread].name : "", tasks: g.count,
                p50_us: g.p50_us, p95_us: g.p95_us, max_us: g.max_us};
      }),
      columns: [
        {key: "group", label: "runs"}, {key: "thread", label: "thread"}, {key: "tasks", label: "tasks", num: true},
        {key: "p50_us", label: "duration p50", num: true}, {key: "p95_us", label: "p95", num: true}, {key: "max_us", label: "max", num: true},
      ],
    });
    table(p, {
      id: "spans", title: "Traced spans", rows: D.spans, empty: "No @traced spans were recorded.",
      columns: byProcess(D.spans, [
        {key: "span", label: "span"}, {key: "calls", label: "calls", num: true}, {key: "errors", label: "errors", num: true},
        {key: "cancelled", label: "cancelled", num: true}, {key: "total_s", label: "total", num: true},
        {key: "mean_s", label: "mean", num: true}, {key: "p50_s", label: "p50", num: true}, {key: "p95_s", label: "p95", num: true},
        {key: "p99_s", label: "p99", num: true}, {key: "max_s", label: "max", num: true},
      ]),
    });
  }

  // ---- flame graphs (icicles) ----
  function flames() {
    const box = document.getElementById("flames");
    heading(box, "flame-graphs", "Flame graphs");
    const F = D.flames || [];
    const prof = (D.sections || {}).profile;
    if (!F.length) {
      box.appendChild(el("p", "empty", "No stacks to draw: no profile (conctools run --profile), no stall samples, no lock-wait stacks."));
    }
    const layout = el("div", "flamelayout"), left = el("div", "flameleft"), right = el("div", "flameright");
    layout.appendChild(left); layout.appendChild(right); box.appendChild(layout);
    if (F.length) {
      const bar = el("div", "toolbar"), lab = el("label", null, "graph: "), sel = el("select");
      F.forEach(function (f, i) { const o = el("option", null, f.title); o.value = String(i); sel.appendChild(o); });
      lab.appendChild(sel); bar.appendChild(lab);
      const reset = el("button", null, "whole graph"); reset.type = "button"; bar.appendChild(reset);
      left.appendChild(bar);
      const note = el("p", "note"); left.appendChild(note);
      const c = el("canvas", "flame"); c.tabIndex = 0;
      c.setAttribute("aria-label", "Flame graph: click a frame to zoom into it");
      left.appendChild(c);
      const ftip = el("div", "ftip"); ftip.hidden = true; left.appendChild(ftip);
      const g = c.getContext("2d"), FROW = 17;
      let cur = null, focus = null, boxes = [];
      function depthOf(n) { let d = 0; n[2].forEach(function (k) { d = Math.max(d, depthOf(k)); }); return d + 1; }
      function hue(s) { let h = 0; for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) % 360; return 10 + h % 50; }
      function render() {
        const w = Math.max(300, left.clientWidth - 4), depth = Math.min(depthOf(focus), 64), h = depth * FROW;
        const dpr = window.devicePixelRatio || 1;
        c.style.width = w + "px"; c.style.height = h + "px"; c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
        g.setTransform(dpr, 0, 0, dpr, 0, 0); g.clearRect(0, 0, w, h);
        g.font = "11px system-ui, sans-serif"; g.textBaseline = "middle";
        boxes = [];
        (function walk(n, x, width, d) {
          if (width < 0.5 || d >= 64) return;
          const y = d * FROW;
          g.fillStyle = d === 0 ? "#d5dae3" : "hsl(" + hue(n[0]) + ",75%," + (62 + (d % 3) * 6) + "%)";
          g.fillRect(x, y, Math.max(width - 1, 0.5), FROW - 1);
          if (width > 30) { g.fillStyle = "#1d2330"; g.fillText(fit(g, n[0], width - 6), x + 3, y + FROW / 2); }
          boxes.push({x: x, y: y, w: width, n: n});
          let cx = x;
          n[2].forEach(function (k) { const kw = width * k[1] / (n[1] || 1); walk(k, cx, kw, d + 1); cx += kw; });
        })(focus, 0, w, 0);
      }
      function show(i) {
        cur = F[i]; focus = cur.root;
        note.textContent = cur.note + ". Total " + fmtS(cur.root[1]) + ". Click a frame to zoom into it.";
        render();
      }
      c.addEventListener("click", function (ev) {
        const r = c.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
        const b = boxes.filter(function (b) { return x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + FROW; })[0];
        if (b) { focus = b.n === focus ? cur.root : b.n; render(); }
      });
      c.addEventListener("keydown", function (ev) { if (ev.key === "Escape" || ev.key === "0") { focus = cur.root; render(); } });
      c.addEventListener("mousemove", function (ev) {
        const r = c.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
        const b = boxes.filter(function (b) { return x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + FROW; })[0];
        if (!b) { ftip.hidden = true; return; }
        ftip.textContent = b.n[0] + "\n" + fmtS(b.n[1]) + " (" + (100 * b.n[1] / (cur.root[1] || 1)).toFixed(1) + "% of the graph)";
        ftip.hidden = false; ftip.style.left = Math.min(x + 12, r.width - 300) + "px"; ftip.style.top = (c.offsetTop + y + 14) + "px";
      });
      c.addEventListener("mouseleave", function () { ftip.hidden = true; });
      sel.addEventListener("change", function () { show(parseInt(sel.value, 10)); });
      reset.addEventListener("click", function () { focus = cur.root; render(); });
      window.addEventListener("resize", render);
      show(0);
    }
    if (prof && typeof prof === "object" && Array.isArray(prof.functions)) {
      table(right, {
        id: "profile", title: "Profile: top functions (" + prof.clock + " clock)",
        rows: prof.functions.map(function (f) {
          const parts = String(f.filename).split(/[\\/]/);
          return {"function": f.name, calls: f.calls, total_s: f.total_s, own_s: f.own_s,
                  where: parts.slice(-2).join("/") + ":" + f.lineno, path: f.filename};
        }),
        columns: [{key: "function", label: "function"}, {key: "calls", label: "calls", num: true},
                  {key: "total_s", label: "total", num: true}, {key: "own_s", label: "own", num: true}, {key: "where", label: "where"}],
        detail: function (r) { return [r["function"] + " in " + r.path + ":" + r.where.split(":").pop()]; },
        limit: 50,
      });
      if (Array.isArray(prof.threads) && prof.threads.length) table(right, {
        title: "Profile per thread",
        rows: prof.threads.map(function (t) {
          return {thread: t.name, total_s: t.total_s, switches: t.switches, hottest: (t.top && t.top[0]) ? t.top[0].name : ""};
        }),
      });
      if (Array.isArray(prof.tasks) && prof.tasks.length) table(right, {
        title: "Profile per asyncio task",
        rows: prof.tasks.map(function (t) {
          return {task: t.name, own_s: t.own_s, calls: t.calls, hottest: (t.top && t.top[0]) ? t.top[0].name : ""};
        }),
      });
    } else if (F.length) {
      right.appendChild(el("p", "note", "For a profile per thread and per task group, run with conctools run --profile."));
    }
  }

  // ---- details: deadlocks, hangs, inversions; other sections ----
  function card(parent, title, lines) {
    const c = el("div", "card");
    c.appendChild(el("h3", null, title));
    c.appendChild(el("pre", null, lines.join("\n")));
    parent.appendChild(c);
  }
  function details() {
    const p = document.getElementById("details");
    heading(p, null, "Details");
    if (!D.deadlocks.length && !D.hangs.length && !D.lock_orders.length) p.appendChild(el("p", "empty", "No deadlock, hang or lock-order inversion."));
    if (D.deadlocks.length) {
      const box = el("div"); box.id = "deadlocks"; p.appendChild(box);
      D.deadlocks.forEach(function (parts, n) {
        const lines = [];
        if (parts.length && parts[0].summary) lines.push(parts[0].summary, "");
        parts.forEach(function (x) {
          lines.push(x.who + " waits for " + x.waits_for + " at " + x.wait_site + ", held by " + x.held_by);
          if (x.holds.length) lines.push("    holds " + x.holds.join(", "));
          x.stack.slice(0, 8).forEach(function (f) { lines.push("      " + f); });
        });
        if (parts.length && parts[0].advice) parts[0].advice.forEach(function (a) { lines.push("", "Advice: " + a); });
        card(box, "Deadlock #" + (n + 1), lines);
      });
    }
    if (D.lock_orders.length) {
      const box = el("div"); box.id = "lock-orders"; p.appendChild(box);
      D.lock_orders.forEach(function (o) {
        const lines = o.edges.map(function (g) {
          return g.to + " taken at " + g.to_site + " while holding " + g.from + " (taken at " + g.from_site + ") in thread " + g.thread;
        });
        card(box, "Potential deadlock: lock-order inversion " + o.cycle.join(" -> "), lines);
      });
    }
    if (D.hangs.length) {
      const box = el("div"); box.id = "hangs"; p.appendChild(box);
      D.hangs.forEach(function (h) {
        const lines = ["stalled " + fmtS(h.stalled_s) + ": " + h.reason];
        h.waiters.forEach(function (w) {
          lines.push(w.who + " (thread " + w.thread + ") " + w.state + (w.waits_on ? " on " + w.waits_on : ""));
          w.stack.slice(0, 6).forEach(function (f) { lines.push("      " + f); });
        });
        (h.failures || []).forEach(function (f) { lines.push("ended before the hang: " + f); });
        card(box, "Hang", lines);
      });
    }
    const other = document.getElementById("other"), secs = D.sections || {};
    Object.keys(secs).sort().forEach(function (name) {
      if (name === "profile") return;  // drawn with the flame graphs
      genericSection(other, name, secs[name]);
    });
  }
  // ---- the bottleneck verdict and CPU-bound threads (text lines from the GIL reporter) ----
  function gil() {
    const g = D.gil;
    if (g && g.verdict && g.verdict.length) {
      const c = el("div", "card verdict"); c.id = "verdict";
      c.appendChild(el("h3", null, g.verdict[0]));
      if (g.verdict.length > 1) c.appendChild(el("pre", null, g.verdict.slice(1).join("\n")));
      document.getElementById("findings").appendChild(c);
    }
    if (g && g.section && g.section.length) {
      const box = el("div"); box.id = "gil"; document.getElementById("details").appendChild(box);
      card(box, g.section[0].replace(/:.*$/, ""), g.section);
    }
    // Child processes' own verdicts and sections, each titled with its process.
    (D.gil_processes || []).forEach(function (p) {
      if (p.verdict_title) {
        const c = el("div", "card verdict");
        c.appendChild(el("h3", null, p.verdict_title));
        if (p.verdict.length) c.appendChild(el("pre", null, p.verdict.join("\n")));
        document.getElementById("findings").appendChild(c);
      }
      if (p.section_title) card(document.getElementById("details"), p.section_title, p.section);
    });
  }
  function isRows(v) { return Array.isArray(v) && v.length > 0 && v.every(function (r) { return r && typeof r === "object" && !Array.isArray(r); }); }
  function genericSection(parent, name, value) {
    const title = name.replace(/_/g, " ");
    if (isRows(value)) { table(parent, {id: "section-" + name, title: title, rows: value}); return; }
    if (value && typeof value === "object" && !Array.isArray(value)) {
      const keys = Object.keys(value);
      const tabs = keys.filter(function (k) { return isRows(value[k]); });
      const rest = keys.filter(function (k) { return !isRows(value[k]); });
      heading(parent, "section-" + name, title);
      if (rest.length) {
        const dl = el("dl", "fields");
        rest.forEach(function (k) { dl.appendChild(el("dt", null, k.replace(/_s$/, ""))); dl.appendChild(el("dd", null, fmtCell(k, value[k]))); });
        parent.appendChild(dl);
      }
      tabs.forEach(function (k) { table(parent, {title: title + ": " + k.replace(/_/g, " "), rows: value[k]}); });
      return;
    }
    heading(parent, "section-" + name, title);
    parent.appendChild(el("p", null, fmtCell(name, value)));
  }

  // The findings are already on the page; the rest is drawn right after its first paint.
  header();
  function later(fn) { return new Promise(function (done) { setTimeout(function () { fn(); done(); }, 0); }); }
  later(charts).then(function () { return later(timeline); }).then(function () { return later(tables); })
    .then(function () { return later(flames); }).then(function () { return later(details); }).then(function () { return later(gil); })
    .then(function () { document.body.setAttribute("data-rendered", "1"); })
    .catch(function (e) { document.body.setAttribute("data-error", String(e && e.stack || e)); throw e; });
})();
