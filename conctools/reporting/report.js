// The report page's script: every program-provided string reaches the page through textContent
// or canvas fillText, never innerHTML. Its data is the JSON block with id "conctools-data".
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("conctools-data").textContent);
  var COLORS = {span: "#4a7fc1", lock_wait: "#d9534f", lock_hold: "#f0ad4e", slow_callback: "#8e44ad",
                mark: "#2c3e50", deadlock: "#c0392b", hang: "#c0392b", lock_order: "#e67e22"};
  var LABELS = {span: "traced span", lock_wait: "lock wait", lock_hold: "lock held (inferred)",
                slow_callback: "slow callback (loop blocked)", deadlock: "deadlock / hang", lock_order: "lock-order inversion"};

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmtS(s) {
    if (s === null || s === undefined || isNaN(s)) return "";
    var a = Math.abs(s);
    if (a >= 100) return s.toFixed(0) + " s";
    if (a >= 1) return s.toFixed(2) + " s";
    if (a >= 1e-3) return (s * 1e3).toPrecision(3) + " ms";
    if (a >= 1e-6) return (s * 1e6).toPrecision(3) + " \u00b5s";
    return (s * 1e9).toFixed(0) + " ns";
  }
  function fmtCell(key, v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number" && /_s$/.test(key)) return fmtS(v);
    if (typeof v === "number" && /bytes/.test(key)) return (v / 1048576).toFixed(1) + " MiB";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
    if (Array.isArray(v)) {
      if (!v.length) return "";
      var f = v[0];
      if (f && typeof f === "object" && "filename" in f && "lineno" in f) {  // a stack: innermost frame
        return f.filename + ":" + f.lineno + (f["function"] ? " in " + f["function"] : "") +
          (v.length > 1 ? " (+" + (v.length - 1) + " frames)" : "");
      }
      if (v.every(function (x) { return x === null || typeof x !== "object"; })) return v.join(", ");
    }
    if (typeof v === "object") {
      var text = JSON.stringify(v);
      return text.length > 200 ? text.slice(0, 199) + "\u2026" : text;
    }
    return String(v);
  }

  // ---- sortable tables ----
  function table(rows, columns, title, parent) {
    if (title) parent.appendChild(el("h2", null, title));
    if (!rows || !rows.length) { parent.appendChild(el("p", "empty", "none")); return; }
    columns = columns || Object.keys(rows[0]);
    var t = el("table"), thead = el("thead"), tr = el("tr"), tbody = el("tbody");
    columns.forEach(function (c, i) {
      var th = el("th", null, c.replace(/_s$/, ""));
      th.addEventListener("click", function () { sortBy(t, tbody, i, th); });
      tr.appendChild(th);
    });
    thead.appendChild(tr); t.appendChild(thead);
    rows.forEach(function (r) {
      var row = el("tr");
      columns.forEach(function (c) {
        var v = r[c];
        var td = el("td", typeof v === "number" ? "num" : null, fmtCell(c, v));
        td.dataset.v = typeof v === "number" ? String(v) : "";
        row.appendChild(td);
      });
      tbody.appendChild(row);
    });
    t.appendChild(tbody);
    parent.appendChild(t);
  }
  function sortBy(t, tbody, i, th) {
    var asc = !th.classList.contains("sorted-desc") && th.classList.contains("sorted-asc") ? false : !th.classList.contains("sorted-asc");
    t.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = a.cells[i], y = b.cells[i], r;
      if (x.dataset.v !== "" && y.dataset.v !== "") r = parseFloat(x.dataset.v) - parseFloat(y.dataset.v);
      else r = x.textContent.localeCompare(y.textContent);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  }

  // ---- header and problems ----
  function header() {
    var m = D.meta, parts = [];
    if (m.command) parts.push("program: " + m.command);
    parts.push("started " + m.started + ", ran for " + fmtS(m.duration_s));
    if (m.exit_status !== null && m.exit_status !== undefined) parts.push("exit " + m.exit_status);
    var counts = Object.keys(m.counts || {}).sort().map(function (k) { return k + "=" + m.counts[k]; });
    parts.push("events: " + (counts.join(", ") || "none"));
    if (m.dropped) parts.push(m.dropped + " older events evicted");
    if (m.truncated_slices) parts.push(m.truncated_slices + " short slices not drawn");
    document.getElementById("meta").textContent = parts.join("  \u00b7  ");
  }
  function card(parent, title, lines) {
    var c = el("div", "card");
    c.appendChild(el("h3", null, title));
    c.appendChild(el("pre", null, lines.join("\n")));
    parent.appendChild(c);
  }
  function problems() {
    var p = document.getElementById("problems");
    D.deadlocks.forEach(function (parts, n) {
      var lines = [];
      if (parts.length && parts[0].summary) lines.push(parts[0].summary, "");
      parts.forEach(function (x) {
        lines.push(x.who + " waits for " + x.waits_for + " at " + x.wait_site + ", held by " + x.held_by);
        if (x.holds.length) lines.push("    holds " + x.holds.join(", "));
        x.stack.slice(0, 8).forEach(function (f) { lines.push("      " + f); });
      });
      if (parts.length && parts[0].advice) parts[0].advice.forEach(function (a) { lines.push("", "Advice: " + a); });
      card(p, "Deadlock #" + (n + 1), lines);
    });
    D.lock_orders.forEach(function (o) {
      var lines = o.edges.map(function (g) {
        return g.to + " taken at " + g.to_site + " while holding " + g.from + " (taken at " + g.from_site + ") in thread " + g.thread;
      });
      card(p, "Potential deadlock: lock-order inversion " + o.cycle.join(" -> "), lines);
    });
    D.hangs.forEach(function (h) {
      var lines = ["stalled " + fmtS(h.stalled_s) + ": " + h.reason];
      h.waiters.forEach(function (w) {
        lines.push(w.who + " (thread " + w.thread + ") " + w.state + (w.waits_on ? " on " + w.waits_on : ""));
        w.stack.slice(0, 6).forEach(function (f) { lines.push("      " + f); });
      });
      (h.failures || []).forEach(function (f) { lines.push("ended before the hang: " + f); });
      card(p, "Hang", lines);
    });
    if (D.slow_callbacks.length) {
      var worst = D.slow_callbacks[0];
      card(p, D.slow_callbacks.length + " slow callback(s); worst blocked the loop " + fmtS(worst.blocked_s),
           [worst.callback + (worst.culprit ? " at " + worst.culprit : ""), worst.line || ""]);
    }
  }

  // ---- timeline ----
  var TL = D.timeline, ROW = 20, LABEL = 230, AXIS = 22;
  var canvas = document.getElementById("timeline"), ctx = canvas.getContext("2d"), tip = document.getElementById("tip");
  var view = {t0: 0, t1: Math.max(TL.duration_us, 1)};
  var rowOf = {}, rows = [];
  function layout() {
    TL.tracks.forEach(function (t, i) { rowOf[t[0]] = i; rows.push({tid: t[0], name: t[1], kind: t[2], slices: []}); });
    TL.slices.forEach(function (s) {
      var r = rows[rowOf[s[0]]];
      if (!r) return;
      var stack = r.stack || (r.stack = []);
      while (stack.length && stack[stack.length - 1] <= s[1]) stack.pop();
      r.slices.push({start: s[1], dur: s[2], name: s[3], cat: s[4], args: s[5], depth: stack.length});
      stack.push(s[1] + s[2]);
    });
  }
  function legend() {
    var lg = document.getElementById("legend");
    Object.keys(LABELS).forEach(function (k) {
      var s = el("span"), i = el("i");
      i.style.background = COLORS[k];
      s.appendChild(i); s.appendChild(document.createTextNode(LABELS[k]));
      lg.appendChild(s);
    });
  }
  function x(t, w) { return LABEL + (t - view.t0) / (view.t1 - view.t0) * (w - LABEL); }
  function draw() {
    var dpr = window.devicePixelRatio || 1, w = canvas.clientWidth || 1000;
    var h = AXIS + Math.max(rows.length, 1) * ROW + 6;
    canvas.style.height = h + "px";
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
    // axis
    ctx.fillStyle = "#6b7385";
    var span = view.t1 - view.t0, step = Math.pow(10, Math.floor(Math.log10(span / 6)));
    if (span / step > 12) step *= 5; else if (span / step > 6) step *= 2;
    for (var t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      var xx = x(t, w);
      ctx.fillRect(xx, AXIS - 5, 1, 5);
      ctx.fillText(fmtS(t / 1e6), xx + 2, 9);
    }
    rows.forEach(function (r, i) {
      var y = AXIS + i * ROW;
      ctx.fillStyle = i % 2 ? "#fafbfc" : "#f1f3f6"; ctx.fillRect(0, y, w, ROW);
      ctx.save(); ctx.beginPath(); ctx.rect(LABEL, y, w - LABEL, ROW); ctx.clip();
      r.slices.forEach(function (s) {
        if (s.start + s.dur < view.t0 || s.start > view.t1) return;
        var x0 = x(s.start, w), x1 = Math.max(x(s.start + s.dur, w), x0 + 1), inset = Math.min(s.depth, 3) * 3;
        ctx.fillStyle = COLORS[s.cat] || "#7f8c8d";
        ctx.fillRect(x0, y + 2 + inset, x1 - x0, ROW - 4 - 2 * inset);
        if (x1 - x0 > 40) {
          ctx.fillStyle = "#fff"; ctx.fillText(s.name, x0 + 3, y + ROW / 2, x1 - x0 - 6);
        }
      });
      ctx.restore();
      ctx.fillStyle = r.kind === "task" ? "#5b3a8e" : "#1d2330";
      ctx.fillText((r.kind === "task" ? "  " : "") + r.name, 4, y + ROW / 2, LABEL - 8);
    });
    // hand-off arrows: from the holder's release to the waiter's acquisition
    ctx.strokeStyle = "rgba(192,57,43,0.8)"; ctx.lineWidth = 1;
    TL.flows.forEach(function (f) {
      var a = rowOf[f[0]], b = rowOf[f[2]];
      if (a === undefined || b === undefined) return;
      var x0 = x(f[1], w), y0 = AXIS + a * ROW + ROW / 2, x1 = x(f[3], w), y1 = AXIS + b * ROW + ROW / 2;
      if (x0 < LABEL || x1 < LABEL) return;
      ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
      ctx.beginPath(); ctx.arc(x1, y1, 2.5, 0, 6.3); ctx.fillStyle = "#c0392b"; ctx.fill();
    });
    // instants: global ones are vertical lines across every row
    TL.instants.forEach(function (m) {
      var xx = x(m[1], w);
      if (xx < LABEL || xx > w) return;
      ctx.fillStyle = COLORS[m[3]] || "#2c3e50";
      if (m[0] === null) {
        ctx.fillRect(xx - 1, AXIS, 2, h - AXIS);
        ctx.fillText(m[2], xx + 3, AXIS + 6);
      } else if (rowOf[m[0]] !== undefined) {
        var y = AXIS + rowOf[m[0]] * ROW;
        ctx.beginPath(); ctx.moveTo(xx, y + 2); ctx.lineTo(xx + 4, y + ROW / 2); ctx.lineTo(xx, y + ROW - 2);
        ctx.lineTo(xx - 4, y + ROW / 2); ctx.fill();
      }
    });
  }
  function hit(ev) {
    var rect = canvas.getBoundingClientRect(), px = ev.clientX - rect.left, py = ev.clientY - rect.top;
    var i = Math.floor((py - AXIS) / ROW), w = canvas.clientWidth;
    if (i < 0 || i >= rows.length || px < LABEL) return null;
    var t = view.t0 + (px - LABEL) / (w - LABEL) * (view.t1 - view.t0), tol = (view.t1 - view.t0) / (w - LABEL) * 2;
    var best = null;
    rows[i].slices.forEach(function (s) {
      if (t >= s.start - tol && t <= s.start + s.dur + tol && (!best || s.depth >= best.depth)) best = s;
    });
    return best ? {s: best, row: rows[i], px: px, py: py} : null;
  }
  function setupTimeline() {
    layout(); legend(); draw();
    var drag = null;
    canvas.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var rect = canvas.getBoundingClientRect(), w = canvas.clientWidth, px = Math.max(ev.clientX - rect.left, LABEL);
      var t = view.t0 + (px - LABEL) / (w - LABEL) * (view.t1 - view.t0), k = ev.deltaY > 0 ? 1.25 : 0.8;
      view.t0 = t - (t - view.t0) * k; view.t1 = t + (view.t1 - t) * k;
      if (view.t1 - view.t0 < 1) view.t1 = view.t0 + 1;
      draw();
    }, {passive: false});
    canvas.addEventListener("mousedown", function (ev) { drag = {x: ev.clientX, t0: view.t0, t1: view.t1}; });
    window.addEventListener("mouseup", function () { drag = null; });
    canvas.addEventListener("dblclick", function () { view.t0 = 0; view.t1 = Math.max(TL.duration_us, 1); draw(); });
    canvas.addEventListener("mousemove", function (ev) {
      if (drag) {
        var dt = (ev.clientX - drag.x) / (canvas.clientWidth - LABEL) * (drag.t1 - drag.t0);
        view.t0 = drag.t0 - dt; view.t1 = drag.t1 - dt; draw(); return;
      }
      var h = hit(ev);
      if (!h) { tip.hidden = true; return; }
      var lines = [h.s.name, h.row.name, LABELS[h.s.cat] || h.s.cat, "start " + fmtS(h.s.start / 1e6) + ", took " + fmtS(h.s.dur / 1e6)];
      Object.keys(h.s.args || {}).forEach(function (k) { lines.push(k + ": " + fmtCell(k, h.s.args[k])); });
      tip.textContent = lines.join("\n");
      tip.hidden = false;
      tip.style.left = Math.min(h.px + 12, canvas.clientWidth - 300) + "px";
      tip.style.top = (h.py + 14) + "px";
    });
    canvas.addEventListener("mouseleave", function () { tip.hidden = true; });
    window.addEventListener("resize", draw);
    if (!rows.length) document.getElementById("timeline-section").appendChild(el("p", "empty", "No threads or tasks recorded anything on the timeline."));
  }

  // ---- resource charts ----
  function chart(parent, title, key, unit) {
    var pts = D.resources.filter(function (p) { return typeof p[key] === "number"; });
    var box = el("div", "chart"), c = el("canvas");
    box.appendChild(el("h4", null, title));
    c.width = 300; c.height = 110; box.appendChild(c); parent.appendChild(box);
    var g = c.getContext("2d"), maxV = 0, minT = Infinity, maxT = -Infinity;
    pts.forEach(function (p) { maxV = Math.max(maxV, p[key]); minT = Math.min(minT, p.t); maxT = Math.max(maxT, p.t); });
    maxV = maxV || 1;
    var spanT = maxT > minT ? maxT - minT : 1;
    g.font = "10px system-ui, sans-serif"; g.fillStyle = "#6b7385";
    g.fillText("max " + maxV.toFixed(maxV < 10 ? 1 : 0) + " " + unit, 2, 10);
    if (pts.length) { g.fillText(fmtS(minT), 4, 108); g.textAlign = "right"; g.fillText(fmtS(maxT), 296, 108); }
    g.strokeStyle = "#4a7fc1"; g.lineWidth = 1.5; g.beginPath();
    pts.forEach(function (p, i) {
      var px = 4 + (p.t - minT) / spanT * 290, py = 98 - p[key] / maxV * 82;
      if (i) g.lineTo(px, py); else g.moveTo(px, py);
    });
    g.stroke();
  }
  function resources() {
    var s = document.getElementById("resources");
    s.appendChild(el("h2", null, "Resources"));
    if (!D.resources.length) { s.appendChild(el("p", "empty", "No resource samples.")); return; }
    var box = el("div", "charts");
    chart(box, "CPU", "cpu", "%"); chart(box, "RSS", "rss", "MiB"); chart(box, "Threads", "threads", "");
    chart(box, "Open file descriptors", "fds", ""); chart(box, "Context switches", "cs", "/s");
    s.appendChild(box);
  }

  // ---- tables, including producer sections whatever their shape ----
  function isRows(v) { return Array.isArray(v) && v.length > 0 && v.every(function (r) { return r && typeof r === "object" && !Array.isArray(r); }); }
  function flatRows(v) {
    return v.map(function (r) {
      var o = {};
      Object.keys(r).forEach(function (k) { o[k] = r[k]; });
      return o;
    });
  }
  function genericSection(parent, name, value) {
    if (isRows(value)) { table(flatRows(value), null, "Section: " + name, parent); return; }
    if (value && typeof value === "object" && !Array.isArray(value)) {
      var tabs = Object.keys(value).filter(function (k) { return isRows(value[k]); });
      var scalars = Object.keys(value).filter(function (k) { return value[k] === null || typeof value[k] !== "object"; });
      if (tabs.length || scalars.length) {
        parent.appendChild(el("h2", null, "Section: " + name));
        if (scalars.length) table([scalars.reduce(function (o, k) { o[k] = value[k]; return o; }, {})], scalars, null, parent);
        tabs.forEach(function (k) { parent.appendChild(el("h4", null, k)); table(flatRows(value[k]), null, null, parent); });
        return;
      }
    }
    parent.appendChild(el("h2", null, "Section: " + name));
    parent.appendChild(el("pre", "json", JSON.stringify(value, null, 1)));
  }
  function tables() {
    var p = document.getElementById("tables"), S = D.sections || {};
    if (D.lock_waits.length) table(D.lock_waits, ["lock", "kind", "waits", "timeouts", "total_s", "max_s", "site"], "Lock waits (by total wait)", p);
    if (D.slow_callbacks.length) table(D.slow_callbacks, ["callback", "task", "thread", "blocked_s", "culprit", "line", "segment"], "Slow callbacks", p);
    if (D.spans.length) table(D.spans, null, "Traced spans", p);
    var prof = S.profile;
    if (prof && typeof prof === "object" && Array.isArray(prof.functions)) {
      var fns = prof.functions.map(function (f) {
        return {"function": f.name, calls: f.calls, total_s: f.total_s, own_s: f.own_s, where: f.filename + ":" + f.lineno};
      });
      table(fns, null, "Profile (" + prof.clock + " clock): top functions", p);
      if (Array.isArray(prof.threads)) table(prof.threads.map(function (t) {
        return {thread: t.name, total_s: t.total_s, switches: t.switches, hottest: (t.top && t.top[0]) ? t.top[0].name : ""};
      }), null, "Profile per thread", p);
      if (Array.isArray(prof.tasks) && prof.tasks.length) table(prof.tasks.map(function (t) {
        return {task: t.name, own_s: t.own_s, calls: t.calls, hottest: (t.top && t.top[0]) ? t.top[0].name : ""};
      }), null, "Profile per asyncio task", p);
    }
    var other = document.getElementById("other");
    Object.keys(S).sort().forEach(function (name) {
      if (name === "profile" && prof && Array.isArray(prof.functions)) return;
      var v = S[name];
      if (name === "resources" && v && typeof v === "object") {
        var copy = {}; Object.keys(v).forEach(function (k) { if (k !== "series") copy[k] = v[k]; });
        v = copy;
      }
      genericSection(other, name, v);
    });
  }

  header(); problems(); setupTimeline(); resources(); tables();
  document.body.setAttribute("data-rendered", "1");
})();
