/* granite-bench dashboard: draws every chart as SVG from the JSON embedded in the page. No network, no library.
 * Each chart element gets data-drawn = number of marks drawn (cells, points, bars, rows); the page's body gets
 * data-status="ok" when everything drew, "error" when a script error happened (data-errors says what). */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var errors = [];

  window.addEventListener("error", function (event) {
    errors.push(String(event.message || event));
    document.body.setAttribute("data-status", "error");
    document.body.setAttribute("data-errors", errors.join(" | "));
  });

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function html(name, attrs, text) {
    var node = document.createElement(name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) return "-";
    if (typeof value === "number") {
      if (value === 0) return "0";
      var magnitude = Math.abs(value);
      if (magnitude < 1e-3 || magnitude >= 1e5) return value.toExponential(2);
      return Number(value.toPrecision(digits || 3)).toString();
    }
    return String(value);
  }

  function noData(container, text) {
    container.appendChild(html("p", { "class": "empty" }, text || "no data"));
    container.setAttribute("data-drawn", "0");
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= value) return steps[i] * power;
    }
    return 10 * power;
  }

  /* ---- parity verdict matrix ------------------------------------------------------------------------------- */
  function drawMatrix(container, parity) {
    if (!parity.cells.length) return noData(container, "no parity results yet: run granite-bench parity");
    var byKey = {};
    parity.cells.forEach(function (cell) { byKey[cell.model + "\u0000" + cell.column] = cell; });
    var table = html("table", { "class": "matrix" });
    var head = html("tr");
    head.appendChild(html("th", {}, "model"));
    parity.columns.forEach(function (column) { head.appendChild(html("th", {}, column)); });
    table.appendChild(head);
    var drawn = 0;
    parity.rows.forEach(function (model) {
      var row = html("tr");
      row.appendChild(html("th", {}, model));
      parity.columns.forEach(function (column) {
        var cell = byKey[model + "\u0000" + column];
        if (!cell) { row.appendChild(html("td", { "class": "none" }, "")); return; }
        var td = html("td", { "class": "cell " + (cell.passed ? "pass" : "fail"), "data-mark": "1",
                              "title": "run " + cell.run_id + " · " + cell.git_sha + " · " + cell.utc_time +
                                       " · " + cell.history + " runs" });
        td.appendChild(html("div", { "class": "verdict" }, cell.passed ? "pass" : "FAIL"));
        var judged = cell.judged || {};
        Object.keys(cell.errors).forEach(function (name) {
          var limit = judged[name] !== undefined ? " (limit " + fmt(judged[name]) + ")" : "";
          td.appendChild(html("div", { "class": "err" + (limit ? " judged" : "") },
                              name.replace("worst_", "") + " " + fmt(cell.errors[name]) + limit));
        });
        if (cell.greedy !== null) {
          var accepted = cell.greedy < 1 && cell.passed && cell.divergence_accepted ? " (near-tie divergence accepted)" : "";
          td.appendChild(html("div", { "class": "err" }, "greedy match " + fmt(cell.greedy) + accepted));
        }
        row.appendChild(td);
        drawn += 1;
      });
      table.appendChild(row);
    });
    container.appendChild(table);
    container.setAttribute("data-drawn", String(drawn));
  }

  /* ---- perf trend with change points ----------------------------------------------------------------------- */
  function drawTrend(container, chart) {
    if (!chart) return noData(container, "no perf history yet: run granite-bench perf");
    var width = 460, height = 200, left = 56, right = 12, top = 12, bottom = 44;
    var points = chart.points;
    var values = points.map(function (p) { return p.value; });
    var low = Math.min.apply(null, values), high = Math.max.apply(null, values);
    var pad = (high - low) * 0.1 || Math.abs(high) * 0.1 || 1;
    low = Math.max(0, low - pad); high = high + pad;
    var x = function (i) { return left + (points.length > 1 ? i * (width - left - right) / (points.length - 1) : (width - left - right) / 2); };
    var y = function (v) { return top + (high - v) / (high - low) * (height - top - bottom); };
    var svg = el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img" });
    container.appendChild(html("div", { "class": "chart-title", style: "max-width:" + width + "px" }, chart.title));
    svg.appendChild(el("text", { x: left, y: height - 4, "class": "axis" }, chart.machine));
    [low, (low + high) / 2, high].forEach(function (tick) {
      svg.appendChild(el("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), "class": "grid" }));
      svg.appendChild(el("text", { x: left - 4, y: y(tick) + 4, "class": "axis", "text-anchor": "end" }, fmt(tick)));
    });
    chart.change_points.forEach(function (cp) {
      var cx = (x(cp.index - 1) + x(cp.index)) / 2;
      svg.appendChild(el("line", { x1: cx, x2: cx, y1: top - 6, y2: height - bottom, "class": "changepoint",
                                   "data-changepoint": cp.sha }));
      svg.appendChild(el("text", { x: cx + 3, y: top + 4, "class": "cp-label" },
                         cp.sha + " " + (cp.change >= 0 ? "+" : "") + fmt(100 * cp.change, 2) + "%"));
    });
    var path = points.map(function (p, i) { return (i ? "L" : "M") + x(i).toFixed(1) + "," + y(p.value).toFixed(1); });
    svg.appendChild(el("path", { d: path.join(" "), "class": "line" }));
    var drawn = 0;
    var every = Math.max(1, Math.ceil(points.length / 8));
    points.forEach(function (p, i) {
      var dot = el("circle", { cx: x(i), cy: y(p.value), r: 3, "class": "point", "data-mark": "1" });
      dot.appendChild(el("title", {}, p.sha + " · " + p.time + " · " + fmt(p.value, 4) + " " + chart.metric));
      svg.appendChild(dot);
      drawn += 1;
      var last = points.length - 1;
      if ((i % every === 0 && last - i >= every) || i === last) {
        svg.appendChild(el("text", { x: x(i), y: height - bottom + 14, "class": "axis", "text-anchor": "middle" }, p.sha));
      }
    });
    container.appendChild(svg);
    container.setAttribute("data-drawn", String(drawn));
    container.setAttribute("data-changepoints", String(chart.change_points.length));
  }

  /* ---- grouped horizontal bars ----------------------------------------------------------------------------- */
  var COLORS = ["#3b6fb6", "#e08a2c", "#4a9a5b", "#b64a7a", "#7a5cb6", "#888"];

  /* Widest rendered width of `texts` in an SVG text of `cls` (measured in the page, so labels are never clipped). */
  function textWidth(texts, cls) {
    var probe = el("svg", { width: 1, height: 1, style: "position:absolute;visibility:hidden" });
    document.body.appendChild(probe);
    var widest = 0;
    texts.forEach(function (t) {
      var node = el("text", { "class": cls }, t);
      probe.appendChild(node);
      widest = Math.max(widest, node.getComputedTextLength());
    });
    document.body.removeChild(probe);
    return Math.ceil(widest);
  }

  /* Bars start at zero; the scale ends at the largest value (rounded up). The reference line (1 = HF speed, or the
   * measured ceiling) is drawn when it falls inside that scale, labelled above the bars so it never sits on an axis
   * tick. The label column is as wide as the widest label; the legend wraps onto as many rows as needed. */
  function drawBars(container, items, metrics, reference, emptyText, referenceText) {
    if (!items.length || !metrics.length) return noData(container, emptyText);
    var plotWidth = 480, barHeight = 12, gap = 10, right = 60, legendStep = 170;
    var labelWidth = Math.min(560, textWidth(items.map(function (i) { return i.label; }), "label") + 12);
    var width = labelWidth + plotWidth + right;
    var perRow = Math.max(1, Math.floor(plotWidth / legendStep));
    var legendHeight = 16 * Math.ceil(metrics.length / perRow);
    var groupHeight = metrics.length * barHeight + gap;
    var top = legendHeight + 26;
    var height = top + items.length * groupHeight + 22;
    var max = 0;
    items.forEach(function (item) {
      metrics.forEach(function (m) { if (item.values[m] !== null && item.values[m] > max) max = item.values[m]; });
    });
    max = niceMax(max);
    var scale = function (v) { return plotWidth * v / max; };
    var svg = el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img" });
    metrics.forEach(function (m, i) {
      var lx = labelWidth + (i % perRow) * legendStep, ly = 4 + 16 * Math.floor(i / perRow);
      svg.appendChild(el("rect", { x: lx, y: ly, width: 10, height: 10, fill: COLORS[i % COLORS.length] }));
      svg.appendChild(el("text", { x: lx + 14, y: ly + 9, "class": "axis" }, m));
    });
    var drawn = 0;
    items.forEach(function (item, g) {
      var y0 = top + g * groupHeight;
      svg.appendChild(el("text", { x: labelWidth - 6, y: y0 + metrics.length * barHeight / 2 + 4, "class": "label",
                                   "text-anchor": "end", "data-label": "1" }, item.label));
      metrics.forEach(function (m, i) {
        var value = item.values[m];
        if (value === null || value === undefined) return;
        var bar = el("rect", { x: labelWidth, y: y0 + i * barHeight, width: Math.max(1, scale(value)),
                               height: barHeight - 2, fill: COLORS[i % COLORS.length], "data-mark": "1" });
        bar.appendChild(el("title", {}, item.label + " · " + m + " = " + fmt(value, 4)));
        svg.appendChild(bar);
        svg.appendChild(el("text", { x: labelWidth + scale(value) + 4, y: y0 + i * barHeight + 9, "class": "axis" },
                           fmt(value)));
        drawn += 1;
      });
    });
    var bottom = height - 8;
    svg.appendChild(el("line", { x1: labelWidth, x2: labelWidth + plotWidth, y1: bottom - 10, y2: bottom - 10,
                                 "class": "grid" }));
    [0, max / 2, max].forEach(function (tick, i) {
      svg.appendChild(el("text", { x: labelWidth + scale(tick), y: bottom, "class": "axis",
                                   "text-anchor": ["start", "middle", "end"][i] }, fmt(tick)));
    });
    if (reference && reference <= max) {
      var rx = labelWidth + scale(reference);
      svg.appendChild(el("line", { x1: rx, x2: rx, y1: top - 8, y2: bottom - 10, "class": "reference" }));
      svg.appendChild(el("text", { x: rx, y: top - 12, "class": "axis reference-label",
                                   "text-anchor": rx > labelWidth + plotWidth - 40 ? "end" : "middle" },
                         referenceText || fmt(reference)));
    }
    container.appendChild(svg);
    container.setAttribute("data-drawn", String(drawn));
    container.setAttribute("data-clipped", String(clippedTexts(svg, width)));
  }

  /* How many texts of an SVG (drawn in the page) reach outside its 0..width box: 0 when nothing is cut. */
  function clippedTexts(svg, width) {
    var clipped = 0;
    svg.querySelectorAll("text").forEach(function (node) {
      var box = node.getBBox();
      if (box.x < -0.5 || box.x + box.width > width + 0.5) clipped += 1;
    });
    return clipped;
  }

  /* ---- latest comparison table ----------------------------------------------------------------------------- */
  function drawComparison(container, comparison) {
    if (!comparison.rows.length) return noData(container, "no comparison yet: run granite-bench compare");
    container.appendChild(html("p", { "class": "meta" }, "baseline " + comparison.baseline + " · candidate " +
                               comparison.candidate + " · " + comparison.utc_time + " · " +
                               (comparison.regressed ? "REGRESSION" : "no regression")));
    var table = html("table", { "class": "comparison" });
    var columns = ["kind", "group", "metric", "baseline", "candidate", "ratio", "95% CI", "p (Holm)", "verdict"];
    var head = html("tr");
    columns.forEach(function (c) { head.appendChild(html("th", {}, c)); });
    table.appendChild(head);
    var drawn = 0;
    comparison.rows.forEach(function (r) {
      var tr = html("tr", { "class": "verdict-" + r.verdict, "data-mark": "1" });
      var ci = r.ci_low === null ? "-" : "[" + fmt(r.ci_low) + ", " + fmt(r.ci_high) + "]";
      [r.kind, r.group, r.metric, r.baseline_text, r.candidate_text, fmt(r.ratio), ci, fmt(r.p_adjusted),
       r.verdict].forEach(function (value) { tr.appendChild(html("td", {}, value === null ? "-" : String(value))); });
      table.appendChild(tr);
      drawn += 1;
    });
    container.appendChild(table);
    container.setAttribute("data-drawn", String(drawn));
  }

  /* ---- timing gate power curve ----------------------------------------------------------------------------- */
  var GATE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

  function drawPower(container, power) {
    if (!power.gates.length) return noData(container, "no gate calibration yet: run granite-bench gate-power");
    var width = 640, height = 280, left = 48, right = 150, top = 12, bottom = 36;
    var maxLevel = 0;
    power.gates.forEach(function (g) { g.points.forEach(function (p) { maxLevel = Math.max(maxLevel, p.level); }); });
    maxLevel = maxLevel > 0 ? maxLevel * 1.1 : 1;
    var xAt = function (v) { return left + v / maxLevel * (width - left - right); };
    var y = function (v) { return top + (1 - v) * (height - top - bottom); };
    var svg = el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, "class": "power" });
    [0, 0.5, 1].forEach(function (tick) {
      svg.appendChild(el("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), "class": "grid" }));
      svg.appendChild(el("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end" }, fmt(tick)));
    });
    svg.appendChild(el("text", { x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle" },
                       "injected slowdown (fraction of a step)"));
    var drawn = 0;
    power.gates.forEach(function (g, i) {
      var colour = GATE_COLOURS[i % GATE_COLOURS.length];
      var shift = (i - (power.gates.length - 1) / 2) * 5;   // side by side, so intervals at one level stay apart
      var x = function (v) { return xAt(v) + shift; };
      var curve = g.points.filter(function (p) { return p.kind !== "prefill"; });
      curve.sort(function (a, b) { return a.level - b.level; });
      if (curve.length > 1) {
        svg.appendChild(el("path", { d: curve.map(function (p, j) {
          return (j ? "L" : "M") + x(p.level).toFixed(1) + "," + y(p.rate).toFixed(1); }).join(" "),
          stroke: colour, fill: "none" }));
      }
      g.points.forEach(function (p) {
        var title = g.gate + " " + p.kind + " " + fmt(p.level) + ": " + p.detected + "/" + p.comparisons +
          " [" + fmt(p.ci_low) + ", " + fmt(p.ci_high) + "], median " + fmt(p.median_gate_minutes) + " min";
        svg.appendChild(el("line", { x1: x(p.level), x2: x(p.level), y1: y(p.ci_low), y2: y(p.ci_high),
                                     stroke: colour }));
        var mark = p.kind === "prefill"
          ? el("rect", { x: x(p.level) - 4, y: y(p.rate) - 4, width: 8, height: 8, fill: colour, "data-mark": "1" })
          : el("circle", { cx: x(p.level), cy: y(p.rate), r: 4, fill: colour, "data-mark": "1" });
        mark.appendChild(el("title", {}, title));
        svg.appendChild(mark);
        drawn += 1;
      });
      var label = g.gate + (g.aa ? " · A/A " + g.aa.aa_false_alarms + "/" + g.aa.aa_resamples : "");
      svg.appendChild(el("text", { x: width - right + 8, y: top + 14 + 16 * i, fill: colour }, label));
    });
    curveTicks(svg, maxLevel, xAt, height - bottom);
    container.appendChild(svg);
    container.setAttribute("data-drawn", String(drawn));
  }

  function curveTicks(svg, maxLevel, x, base) {
    [0, 0.05, 0.1, 0.2, 0.3].forEach(function (tick) {
      if (tick <= maxLevel) svg.appendChild(el("text", { x: x(tick), y: base + 14, "text-anchor": "middle" },
                                               fmt(tick)));
    });
  }

  function draw() {
    var data = JSON.parse(document.getElementById("dashboard-data").textContent);
    drawMatrix(document.getElementById("parity-matrix"), data.parity);
    document.querySelectorAll("[data-chart=trend]").forEach(function (container) {
      drawTrend(container, data.perf_trends[Number(container.getAttribute("data-index"))]);
    });
    var grid = data.perf_grid;
    drawBars(document.getElementById("perf-ratios"), grid.ratios, grid.ratio_metrics, 1,
             "no implementation/HF ratios yet: run granite-bench perf with HF baselines", "1 = as fast as HF");
    drawBars(document.getElementById("perf-roofline"), grid.roofline, grid.roofline_metrics, 1,
             "no roofline fractions yet: run granite-bench perf", "1 = the measured ceiling");
    drawBars(document.getElementById("accuracy"), data.accuracy.tasks, data.accuracy.metrics, 0,
             "no accuracy results yet: run granite-bench eval");
    drawComparison(document.getElementById("comparison"), data.comparison);
    drawPower(document.getElementById("gate-power"), data.gate_power);
    var short = [];
    document.querySelectorAll("[data-chart]").forEach(function (c) {
      if (c.getAttribute("data-drawn") !== c.getAttribute("data-expected")) short.push(c.id);
    });
    if (!errors.length) document.body.setAttribute("data-status", short.length ? "incomplete" : "ok");
    if (short.length) document.body.setAttribute("data-incomplete", short.join(" "));
  }

  try {
    draw();
  } catch (err) {
    errors.push(String(err && err.stack || err));
    document.body.setAttribute("data-status", "error");
    document.body.setAttribute("data-errors", errors.join(" | "));
    console.error(err);
  }
})();
