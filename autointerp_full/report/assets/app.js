// AutoInterp dashboard: the one script of every page (index.html, latent.html, standalone.html).
// Data arrives as small scripts that call window.__aif_page / window.__aif_latent, because
// browsers refuse fetch() of local files. No libraries, no network.
(function () {
  "use strict";

  var meta = window.__aif_meta || { scorers: [], columns: [], scorer_fields: [], n_pages: 0 };
  var COL = {};
  (meta.columns || []).forEach(function (name, i) { COL[name] = i; });
  var NBASE = (meta.columns || []).length;
  var NFIELD = (meta.scorer_fields || []).length;

  // ------------------------------------------------------------------------ small helpers
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") node.textContent = attrs[k];
        else if (k === "cls") node.className = attrs[k];
        else node.setAttribute(k, attrs[k]);
      });
    }
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && isNaN(v))) return "–";
    if (typeof v !== "number") return String(v);
    if (v !== 0 && Math.abs(v) < 0.001) return v.toExponential(2);
    return v.toFixed(digits === undefined ? 3 : digits);
  }
  function interval(lo, hi) {
    return lo === null || lo === undefined ? "" : "[" + fmt(lo, 2) + ", " + fmt(hi, 2) + "]";
  }
  function scoreField(row, s, f) { return row[NBASE + s * NFIELD + f]; }
  function loadScript(src, onerror) {
    var s = document.createElement("script");
    s.src = src;
    s.onerror = onerror || null;
    document.head.appendChild(s);
  }
  function latentHref(id) { return "latent.html?id=" + id; }

  // Bar chart as SVG: bins given by edges (n+1) and counts (n).
  var SVGNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    var node = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }
  function barChart(edges, counts, opts) {
    opts = opts || {};
    var W = opts.width || 420, H = opts.height || 140, pad = 28, n = counts.length;
    var top = Math.max.apply(null, counts.concat([1]));
    var root = svg("svg", { width: W, height: H + 18, "class": "chart", role: "img" });
    var bw = (W - pad) / Math.max(1, n);
    counts.forEach(function (c, i) {
      var h = (H - 10) * c / top;
      var r = svg("rect", { x: pad + i * bw, y: H - h, width: Math.max(1, bw - 1), height: h });
      var t = svg("title", {});
      t.textContent = fmt(edges[i], 3) + "–" + fmt(edges[i + 1], 3) + ": " + c;
      r.appendChild(t);
      root.appendChild(r);
    });
    root.appendChild(svg("line", { x1: pad, y1: H, x2: W, y2: H, "class": "axis" }));
    [[pad, fmt(edges[0], 2), "start"], [W, fmt(edges[n], 2), "end"]].forEach(function (a) {
      var t = svg("text", { x: a[0], y: H + 14, "text-anchor": a[2] });
      t.textContent = a[1];
      root.appendChild(t);
    });
    var y = svg("text", { x: 2, y: 12 });
    y.textContent = String(top);
    root.appendChild(y);
    if (opts.label) {
      var l = svg("text", { x: (W + pad) / 2, y: H + 14, "text-anchor": "middle" });
      l.textContent = opts.label;
      root.appendChild(l);
    }
    return root;
  }

  // ================================================================================ index
  var state = {
    rows: [], loaded: 0, sortKey: "id", sortDir: 1, view: [], page: 0, pageSize: 100,
    search: "", hookpoint: "", status: "", minScorer: -1, minValue: null
  };
  window.__aif_state = state;

  function sortValue(row, key) {
    if (key === "id") return row[COL.id];
    if (key === "firing_rate") return row[COL.firing_rate];
    if (key === "status") return row[COL.status];
    if (key === "explanation") return row[COL.explanation].toLowerCase();
    if (key.indexOf("score:") === 0) return scoreField(row, +key.slice(6), 0);
    if (key.indexOf("null:") === 0) return scoreField(row, +key.slice(5), 3);
    return row[COL.id];
  }

  function applyView() {
    var q = state.search.trim().toLowerCase();
    var hp = state.hookpoint, st = state.status, ms = state.minScorer, mv = state.minValue;
    var out = state.rows.filter(function (r) {
      if (hp && r[COL.hookpoint] !== hp) return false;
      if (st === "ok" && r[COL.status]) return false;
      if (st === "flagged" && !r[COL.status]) return false;
      if (ms >= 0 && mv !== null) {
        var v = scoreField(r, ms, 0);
        if (v === null || v < mv) return false;
      }
      if (q) {
        var hay = r[COL.explanation].toLowerCase() + " " + r[COL.hookpoint] + " " + r[COL.latent];
        if (/^\d+$/.test(q)) return String(r[COL.latent]) === q || hay.indexOf(q) >= 0;
        return hay.indexOf(q) >= 0;
      }
      return true;
    });
    var key = state.sortKey, dir = state.sortDir;
    out.sort(function (a, b) {
      var x = sortValue(a, key), y = sortValue(b, key);
      // Missing values go last whichever the direction.
      var xn = x === null || x === undefined, yn = y === null || y === undefined;
      if (xn || yn) return xn === yn ? a[COL.id] - b[COL.id] : (xn ? 1 : -1);
      if (x < y) return -dir;
      if (x > y) return dir;
      return a[COL.id] - b[COL.id];
    });
    state.view = out;
    var last = Math.max(0, Math.ceil(out.length / state.pageSize) - 1);
    if (state.page > last) state.page = last;
    renderRows();
  }

  function statusCell(s) {
    if (!s) return el("td", { cls: "c-status" });
    return el("td", { cls: "c-status" }, [el("span", { cls: "badge " + s, text: s })]);
  }

  function renderRows() {
    var tbody = document.getElementById("rows");
    if (!tbody) return;
    var start = state.page * state.pageSize;
    var slice = state.view.slice(start, start + state.pageSize);
    var frag = document.createDocumentFragment();
    slice.forEach(function (r) {
      var name = r[COL.hookpoint] + " #" + r[COL.latent];
      var link = meta.standalone ? el("span", { text: name })
        : el("a", { href: latentHref(r[COL.id]), text: name });
      var tr = el("tr", { "data-id": r[COL.id] }, [
        el("td", { cls: "c-latent" }, [link]),
        el("td", { cls: "c-expl", text: r[COL.explanation] }),
        el("td", { cls: "c-rate num", text: fmt(r[COL.firing_rate], 4) })
      ]);
      meta.scorers.forEach(function (s, i) {
        var v = scoreField(r, i, 0);
        var td = el("td", { cls: "num c-score", "data-scorer": s.name }, [
          el("span", { cls: "v", text: fmt(v, 2) }),
          el("span", { cls: "ci", text: " " + interval(scoreField(r, i, 1), scoreField(r, i, 2)) })
        ]);
        tr.appendChild(td);
        if (meta.has_nulls) {
          tr.appendChild(el("td", { cls: "num c-null", text: fmt(scoreField(r, i, 3), 2) }));
        }
      });
      tr.appendChild(statusCell(r[COL.status]));
      frag.appendChild(tr);
    });
    tbody.textContent = "";
    tbody.appendChild(frag);
    var n = state.view.length;
    document.getElementById("count").textContent =
      (n ? (start + 1) + "–" + Math.min(n, start + state.pageSize) : "0") + " of " +
      n.toLocaleString("en") + " matching · " + state.loaded.toLocaleString("en") + " of " +
      (meta.n_latents || 0).toLocaleString("en") + " latents loaded";
    if (state.firstRenderMs === undefined) state.firstRenderMs = performance.now();
    document.body.setAttribute("data-rendered", String(+(document.body.getAttribute("data-rendered") || 0) + 1));
  }

  function header(label, key, cls) {
    var th = el("th", { cls: "sortable " + (cls || ""), "data-sort": key, text: label });
    th.addEventListener("click", function () {
      if (state.sortKey === key) state.sortDir = -state.sortDir;
      else { state.sortKey = key; state.sortDir = key.indexOf("score:") === 0 ? -1 : 1; }
      document.querySelectorAll("th.sortable").forEach(function (h) {
        h.classList.remove("asc", "desc");
      });
      th.classList.add(state.sortDir > 0 ? "asc" : "desc");
      state.page = 0;
      applyView();
    });
    return th;
  }

  function summaryTable() {
    if (!meta.summary || !meta.summary.length) return null;
    var rows = meta.summary.map(function (s) {
      var iv = s.intervals.filter(function (i) { return i.estimate !== null; }).map(function (i) {
        return i.name + " " + fmt(i.estimate) + " " + interval(i.low, i.high);
      }).join(" · ");
      return el("tr", {}, [
        el("td", { text: s.scorer }), el("td", { text: s.metric }),
        el("td", { cls: "num", text: fmt(s.mean) }), el("td", { cls: "num", text: fmt(s.pooled) }),
        el("td", { cls: "num", text: fmt(s.n_scored, 0) }),
        el("td", { cls: "num", text: fmt(s.n_failed, 0) }),
        el("td", { cls: "num", text: fmt(s.n_incomplete, 0) }),
        el("td", { text: iv || "–" })
      ]);
    });
    return el("table", { id: "summary", cls: "grid" }, [
      el("thead", {}, [el("tr", {}, ["scorer", "metric", "mean per latent", "pooled",
        "latents scored", "failed", "incomplete", "intervals (95%) and null baseline"]
        .map(function (h) { return el("th", { text: h }); }))]),
      el("tbody", {}, rows)
    ]);
  }

  function scoreCharts() {
    var box = document.getElementById("charts");
    if (!box) return;
    box.textContent = "";
    meta.scorers.forEach(function (s, i) {
      var vals = state.rows.map(function (r) { return scoreField(r, i, 0); })
        .filter(function (v) { return v !== null; });
      if (!vals.length) return;
      var lo = Math.min(0, Math.min.apply(null, vals)), hi = Math.max(1, Math.max.apply(null, vals));
      var n = 20, edges = [], counts = new Array(n).fill(0);
      for (var k = 0; k <= n; k++) edges.push(lo + (hi - lo) * k / n);
      vals.forEach(function (v) { counts[Math.min(n - 1, Math.floor((v - lo) / (hi - lo) * n))]++; });
      box.appendChild(el("figure", {}, [barChart(edges, counts, { width: 300, height: 100 }),
        el("figcaption", { text: s.name + " " + s.metric + " per latent (" + vals.length + ")" })]));
    });
  }

  function control(label, input) { return el("label", {}, [label + " ", input]); }

  function buildIndex() {
    var app = document.getElementById("app");
    app.textContent = "";
    app.appendChild(el("h1", { text: "AutoInterp: " + (meta.run || "") }));
    app.appendChild(el("p", { cls: "sub", text: "model " + meta.model + " · sparse model " +
      meta.sparse_model + " · hookpoints " + (meta.hookpoints || []).join(", ") }));
    if (meta.standalone) {
      app.appendChild(el("p", { cls: "note", id: "standalone-note", text: "This single page lists " +
        "the first " + meta.n_shown + " of " + meta.n_latents + " latents. The full dashboard, " +
        "with a page per latent, is in the report folder artifact: open report/index.html." }));
    }
    var s = summaryTable();
    if (s) app.appendChild(s);
    var notes = [];
    if (meta.null_baseline) notes.push("Null baseline: " + meta.null_baseline + ".");
    var iv = meta.interval_notes || {};
    if (iv.per_latent) notes.push("A latent's [interval]: " + iv.per_latent + ".");
    if (iv.over_latents) notes.push("Means: " + iv.over_latents + ".");
    if (iv.difference) notes.push("Difference: " + iv.difference + ".");
    if (notes.length) app.appendChild(el("details", { cls: "notes" }, [
      el("summary", { text: "How to read these numbers" })].concat(
        notes.map(function (t) { return el("p", { cls: "small", text: t }); }))));
    app.appendChild(el("div", { id: "charts", cls: "charts" }));

    var search = el("input", { id: "search", type: "search", placeholder: "explanation or latent" });
    search.addEventListener("input", function () { state.search = search.value; state.page = 0; applyView(); });
    var hp = el("select", { id: "hookpoint" }, [el("option", { value: "", text: "all" })]
      .concat((meta.hookpoints || []).map(function (h) { return el("option", { value: h, text: h }); })));
    hp.addEventListener("change", function () { state.hookpoint = hp.value; state.page = 0; applyView(); });
    var st = el("select", { id: "status" }, [["", "all"], ["ok", "complete"],
      ["flagged", "incomplete or failed"]].map(function (o) { return el("option", { value: o[0], text: o[1] }); }));
    st.addEventListener("change", function () { state.status = st.value; state.page = 0; applyView(); });
    var ms = el("select", { id: "min-scorer" }, [el("option", { value: "-1", text: "–" })]
      .concat(meta.scorers.map(function (x, i) { return el("option", { value: String(i), text: x.name }); })));
    var mv = el("input", { id: "min-value", type: "number", step: "0.05", placeholder: "min" });
    function minChanged() {
      state.minScorer = +ms.value;
      state.minValue = mv.value === "" ? null : +mv.value;
      state.page = 0;
      applyView();
    }
    ms.addEventListener("change", minChanged);
    mv.addEventListener("input", minChanged);
    var size = el("select", { id: "page-size" }, [50, 100, 500].map(function (n) {
      var o = el("option", { value: String(n), text: String(n) });
      if (n === state.pageSize) o.selected = true;
      return o;
    }));
    size.addEventListener("change", function () { state.pageSize = +size.value; state.page = 0; applyView(); });
    var prev = el("button", { id: "prev", text: "◀" }), next = el("button", { id: "next", text: "▶" });
    prev.addEventListener("click", function () { if (state.page > 0) { state.page--; renderRows(); } });
    next.addEventListener("click", function () {
      if ((state.page + 1) * state.pageSize < state.view.length) { state.page++; renderRows(); }
    });
    app.appendChild(el("div", { cls: "controls" }, [control("search", search),
      control("hookpoint", hp), control("state", st), control("score of", ms), mv,
      control("rows", size), prev, next, el("span", { id: "count" })]));

    var heads = [header("latent", "id", "c-latent"), header("explanation", "explanation"),
      header("firing rate", "firing_rate", "num")];
    meta.scorers.forEach(function (x, i) {
      heads.push(header(x.name + " " + x.metric + " [95%]", "score:" + i, "num"));
      if (meta.has_nulls) heads.push(header(x.name + " null", "null:" + i, "num"));
    });
    heads.push(header("state", "status"));
    app.appendChild(el("table", { id: "latents", cls: "grid" }, [
      el("thead", {}, [el("tr", {}, heads)]), el("tbody", { id: "rows" })]));
  }

  var refreshTimer = null;
  function addRows(rows) {
    Array.prototype.push.apply(state.rows, rows);
    state.loaded = state.rows.length;
    // Re-sort at most every 150 ms while pages stream in; the first page shows at once.
    if (state.loaded === rows.length) applyView();
    else if (!refreshTimer) refreshTimer = setTimeout(function () { refreshTimer = null; applyView(); }, 150);
  }

  function finishLoading() {
    if (refreshTimer) { clearTimeout(refreshTimer); refreshTimer = null; }
    applyView();
    scoreCharts();
    state.readyMs = performance.now(); // ms since navigation: what the benchmark reports
    document.body.setAttribute("data-ready", "1");
  }

  window.__aif_page = function (p, rows) {
    addRows(rows);
    if (p + 1 < meta.n_pages) loadPage(p + 1);
    else finishLoading();
  };
  function loadPage(p) {
    loadScript("data/index/" + p + ".js", function () {
      document.body.setAttribute("data-error", "index page " + p + " missing");
      finishLoading();
    });
  }

  function startIndex() {
    buildIndex();
    if (meta.standalone) {
      addRows(window.__aif_inline_rows || []);
      finishLoading();
    } else if (meta.n_pages > 0) {
      loadPage(0);
    } else {
      finishLoading();
    }
  }

  // =========================================================================== latent page
  function tokens(ex, top) {
    var div = el("div", { cls: "example" });
    ex.t.forEach(function (tok, i) {
      var a = ex.a[i] || 0;
      var span = el("span", { cls: a > 0 ? "tok on" : "tok", text: tok });
      if (a > 0) {
        var alpha = top > 0 ? Math.min(1, a / top) : 0;
        span.style.background = "rgba(220, 50, 47, " + alpha.toFixed(2) + ")";
      }
      span.setAttribute("title", JSON.stringify(tok) + ": " + fmt(a, 3));
      span.setAttribute("data-act", String(a));
      div.appendChild(span);
    });
    return div;
  }

  function section(title, id, children) {
    return el("section", { id: id }, [el("h2", { text: title })].concat(children));
  }

  function scoresSection(d) {
    var names = Object.keys(d.scores);
    if (!names.length) return section("Scores", "scores", [el("p", { cls: "note", text: "not scored" })]);
    var rows = names.map(function (s) {
      var x = d.scores[s], nul = d.null_scores[s];
      var other = Object.keys(x.metrics).filter(function (k) { return k !== x.metric; })
        .map(function (k) {
          var v = x.metrics[k];
          return k + " " + (Number.isInteger(v) ? String(v) : fmt(v));
        }).join(", ");
      return el("tr", {}, [el("td", { text: s }), el("td", { text: x.metric }),
        el("td", { cls: "num", text: fmt(x.value) + " " + interval(x.low, x.high) }),
        el("td", { cls: "num", text: nul ? fmt(nul.value) : "–" }),
        statusCell(x.status), el("td", { cls: "small", text: x.error || other })]);
    });
    var kids = [el("table", { cls: "grid" }, [el("thead", {}, [el("tr", {},
      ["scorer", "metric", "score [95% Wilson]", "null", "state", "details"].map(function (h) {
        return el("th", { text: h });
      }))]), el("tbody", {}, rows)])];
    names.forEach(function (s) {
      var ex = d.scores[s].examples;
      if (!ex.length) return;
      var right = ex.filter(function (e) { return e.correct === true; }).length;
      var list = ex.map(function (e) {
        var mark = e.correct === true ? "✔" : e.correct === false ? "✘" : "?";
        var cls = e.correct === true ? "right" : e.correct === false ? "wrong" : "unanswered";
        var what = e.activating ? "activating q" + e.quantile : "non-activating";
        var pred = e.prediction === null || e.prediction === undefined ? "no answer" : "said " + e.prediction;
        if (e.probability !== null && e.probability !== undefined) pred += " (p " + fmt(e.probability, 2) + ")";
        return el("li", { cls: "scored " + cls }, [el("span", { cls: "mark", text: mark }),
          el("span", { cls: "what", text: what + " · " + pred }), el("span", { cls: "text", text: e.text })]);
      });
      var box = el("details", { cls: "scorer-examples", "data-scorer": s }, [
        el("summary", { text: s + ": " + right + " of " + ex.length + " examples right" }),
        el("ul", {}, list)]);
      if (kids.length === 1) box.open = true; // the first scorer's examples show at once
      kids.push(box);
    });
    return section("Scores", "scores", kids);
  }

  function histogramSection(d) {
    if (!d.histogram) return section("Activations", "histogram", [el("p", { cls: "note", text: "no activations recorded" })]);
    var src = d.histogram_source === "cache" ? "every activation in the cache"
      : "the activations in the examples' windows (the cache is not in this run folder)";
    return section("Activations", "histogram", [barChart(d.histogram.edges, d.histogram.counts,
      { label: "activation" }), el("p", { cls: "note", text: "Histogram of " + src + "." })]);
  }

  function examplesSection(d) {
    var top = d.max_activation || 0;
    d.quantiles.forEach(function (g) { g.examples.forEach(function (e) {
      top = Math.max(top, Math.max.apply(null, e.a.concat([0])));
    }); });
    var kids = [];
    if (!d.quantiles.length) kids.push(el("p", { cls: "note", text: "no activating examples" }));
    var nq = d.quantiles.length;
    d.quantiles.forEach(function (g, i) {
      var label = "quantile " + g.quantile + (i === 0 ? " (strongest)" : i === nq - 1 ? " (weakest)" : "");
      kids.push(el("h3", { text: label + " · " + g.examples.length + (g.examples.length === 1 ? " window" : " windows") }));
      var box = el("div", { cls: "quantile", "data-quantile": g.quantile });
      g.examples.forEach(function (e) { box.appendChild(tokens(e, top)); });
      kids.push(box);
    });
    var non = el("div", { id: "non-activating-list" });
    d.non_activating.forEach(function (e) { var t = tokens(e, top); t.classList.add("non"); non.appendChild(t); });
    return [section("Top examples per quantile", "examples", kids),
      section("Non-activating examples", "non-activating",
        d.non_activating.length ? [non] : [el("p", { cls: "note", text: "none" })])];
  }

  function neighbourList(list, note) {
    if (!list) return el("p", { cls: "note", text: "not available: " + (note || "not computed") });
    if (!list.length) return el("p", { cls: "note", text: "none found" });
    return el("ol", {}, list.map(function (n) {
      var name = "#" + n.latent;
      var link = n.id === null ? el("span", { text: name }) : el("a", { href: latentHref(n.id), text: name });
      return el("li", {}, [link, " ", el("span", { cls: "num", text: fmt(n.similarity, 3) }), " ",
        el("span", { cls: "small", text: n.explanation || "" })]);
    }));
  }

  function neighboursSection(d) {
    var nb = d.neighbours || {};
    return section("Nearest latents", "neighbours", [el("div", { cls: "two" }, [
      el("div", { id: "nb-decoder" }, [el("h3", { text: "by decoder similarity (cosine)" }), neighbourList(nb.decoder, nb.decoder_note)]),
      el("div", { id: "nb-cooccurrence" }, [el("h3", { text: "by co-occurrence (Jaccard)" }), neighbourList(nb.cooccurrence, nb.cooccurrence_note)])
    ])]);
  }

  // The output side as the output stage records it: lists of [token, value] or {token, value}.
  function tokenList(list) {
    return el("ol", { cls: "tokens" }, (list || []).map(function (x) {
      var tok = Array.isArray(x) ? x[0] : (x.token !== undefined ? x.token : x.str_token);
      var val = Array.isArray(x) ? x[1] : (x.value !== undefined ? x.value : x.logit);
      return el("li", {}, [el("code", { text: JSON.stringify(String(tok)) }), " ", el("span", { cls: "num", text: fmt(val, 3) })]);
    }));
  }
  function outputSection(d) {
    var o = d.output;
    if (!o) return section("Output side (logit lens)", "output", [el("p", { cls: "note", text: d.output_note || "not computed" })]);
    var lens = o.logit_lens || {};
    var kids = [el("p", { cls: "note", text: "Tokens whose logits the latent's " +
      (o.transcoder ? "output" : "decoder") + " direction raises and lowers most through the " +
      "final norm and unembedding (centred logits)." }), el("div", { cls: "two" }, [
      el("div", { id: "promoted" }, [el("h3", { text: "promoted" }), tokenList(lens.promoted)]),
      el("div", { id: "suppressed" }, [el("h3", { text: "suppressed" }), tokenList(lens.suppressed)])])];
    var st = o.steering;
    if (st) {
      kids.push(el("h3", { text: "steering: clamped at " + fmt(st.clamp, 2) + " on " +
        st.n_contexts + " of its windows (mean change in log-probability)" }));
      kids.push(el("div", { cls: "two" }, [
        el("div", {}, [el("h3", { text: "rises" }), tokenList(st.promoted)]),
        el("div", {}, [el("h3", { text: "falls" }), tokenList(st.suppressed)])]));
    }
    return section("Output side (logit lens)", "output", kids);
  }

  function buildLatent(d) {
    var app = document.getElementById("app");
    app.textContent = "";
    var nav = el("p", { cls: "nav" }, [el("a", { href: "index.html", text: "◀ all latents" })]);
    if (d.id > 0) nav.appendChild(el("a", { href: latentHref(d.id - 1), text: "previous" }));
    if (d.id + 1 < meta.n_latents) nav.appendChild(el("a", { href: latentHref(d.id + 1), text: "next" }));
    app.appendChild(nav);
    app.appendChild(el("h1", {}, [d.hookpoint + " latent " + d.latent + " ",
      d.status ? el("span", { cls: "badge " + d.status, text: d.status }) : null]));
    app.appendChild(el("p", { id: "explanation", cls: d.explanation === null ? "expl err" : "expl",
      text: d.explanation !== null ? d.explanation : "No explanation: " + (d.explain_error || "missing") }));
    app.appendChild(el("p", { cls: "sub", text: "firing rate " + fmt(d.firing_rate, 5) + " · " +
      fmt(d.n_activating, 0) + " activations · max activation " + fmt(d.max_activation, 3) }));
    app.appendChild(scoresSection(d));
    app.appendChild(histogramSection(d));
    examplesSection(d).forEach(function (s) { app.appendChild(s); });
    app.appendChild(neighboursSection(d));
    app.appendChild(outputSection(d));
    document.title = d.hookpoint + " latent " + d.latent + " · AutoInterp";
    document.body.setAttribute("data-ready", "1");
  }

  window.__aif_latent = function (d) { buildLatent(d); };

  function startLatent() {
    var m = /[?&]id=(\d+)/.exec(window.location.search);
    var app = document.getElementById("app");
    if (!m) { app.textContent = "No latent given: open latent.html?id=<n> from the index."; return; }
    var id = +m[1], bucket = meta.bucket || 1000;
    loadScript("data/latent/" + Math.floor(id / bucket) + "/" + id + ".js", function () {
      app.textContent = "No data for latent id " + id + " in this report.";
      document.body.setAttribute("data-error", "missing");
    });
  }

  if (document.body.getAttribute("data-page") === "latent") startLatent();
  else startIndex();
})();
