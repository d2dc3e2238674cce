// The attention page's script: decodes the float16 data block and draws the chosen view, the
// chosen query's row, the head panel and the overview. See neural_attn/client/_html.py.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("attention-data").textContent);
  // float16 bits -> value, for every 16-bit pattern.
  var F16 = new Float32Array(65536);
  for (var bits = 0; bits < 65536; bits++) {
    var e = (bits >> 10) & 31, f = bits & 1023, sign = bits & 32768 ? -1 : 1;
    F16[bits] = sign * (e === 0 ? f * 5.960464477539063e-8
      : e === 31 ? (f ? NaN : Infinity) : (1 + f / 1024) * Math.pow(2, e - 15));
  }
  var COLORS = [];
  for (var i = 0; i < 256; i++) {
    var hex = data.colormap.substr(6 * i, 6);
    COLORS.push([parseInt(hex.substr(0, 2), 16), parseInt(hex.substr(2, 2), 16),
                 parseInt(hex.substr(4, 2), 16)]);
  }
  var MASKED = [217, 217, 217];
  var decoded = {};
  function decode(b64) {  // -> Float32Array, NaN where masked; cached per view
    if (decoded[b64]) { return decoded[b64]; }
    var bin = atob(b64), n = bin.length >> 1, out = new Float32Array(n);
    for (var j = 0; j < n; j++) {
      out[j] = F16[bin.charCodeAt(2 * j) | (bin.charCodeAt(2 * j + 1) << 8)];
    }
    decoded[b64] = out;
    return out;
  }
  function rowsOf(flat, rows, cols) {  // plotly's z: rows of numbers, null where masked
    var z = new Array(rows);
    for (var r = 0; r < rows; r++) {
      var row = new Array(cols);
      for (var c = 0; c < cols; c++) {
        var v = flat[r * cols + c];
        row[c] = v === v ? v : null;
      }
      z[r] = row;
    }
    return z;
  }
  function $(id) { return document.getElementById(id); }
  var itemSelect = $("item-select"), layerSelect = $("layer-select");
  var viewSelect = $("view-select"), querySelect = $("query-select");
  var plot = $("attention-plot"), queryPlot = $("query-plot"), panel = $("head-panel");
  var status = $("view-status"), queryStatus = $("query-status"), overview = $("overview");
  function option(select, value, text) {
    var o = document.createElement("option");
    o.value = String(value);
    o.textContent = text;
    select.appendChild(o);
  }
  function byItem(list) {
    var wanted = Number(itemSelect.value);
    for (var k = 0; k < list.length; k++) {
      if (list[k].index === wanted) { return list[k]; }
    }
    return list[0];
  }
  function layer() { return data.layers[Number(layerSelect.value)]; }
  // The views of a layer: the mean, each head, then the rollout (through every layer).
  function views(l) {
    var out = byItem(l.items).views.map(function (v, k) {
      return {label: v.label, title: v.title, data: v.data, head: k - 1, source: l};
    });
    if (data.rollout) {
      var r = data.rollout;
      out.push({label: "rollout", title: r.title, data: byItem(r.items).data, head: null,
                source: r, rollout: true});
    }
    return out;
  }
  function current() {
    var l = layer(), view = views(l)[Number(viewSelect.value)] || views(l)[0];
    var src = view.source;
    return {layer: l, view: view, rows: src.display_shape[0], cols: src.display_shape[1],
            x: src.x, y: src.y, pooling: src.pooling, note: src.note,
            flat: decode(view.data)};
  }
  function fillViews(keep) {
    var previous = Number(viewSelect.value) || 0;
    viewSelect.innerHTML = "";
    views(layer()).forEach(function (v, k) { option(viewSelect, k, v.label); });
    viewSelect.value = String(keep && previous < viewSelect.options.length ? previous : 0);
  }
  function fillQueries(keep) {
    var y = current().y, previous = Number(querySelect.value) || 0;
    querySelect.innerHTML = "";
    y.forEach(function (label, k) { option(querySelect, k, String(label)); });
    querySelect.value = String(keep && previous < y.length ? previous : 0);
  }
  function fmt(v) { return typeof v === "number" ? v.toFixed(4) : "–"; }
  function drawPanel(cur) {
    var m = cur.layer.metrics, h = cur.view.head, rowsHtml = "", title, pattern = "";
    if (cur.view.rollout) {
      panel.innerHTML = "<h3>Rollout</h3><p>How much each output position draws on each " +
        "input position through all " + data.layers.length + " layer(s): the head means, " +
        "each plus the identity (the residual), multiplied from the first layer.</p>";
      return;
    }
    if (!m) {
      panel.innerHTML = "<h3>" + cur.view.label + "</h3><p>No metrics: this layer arrived " +
        "pooled (they are in analysis.json).</p>";
      return;
    }
    Object.keys(m.per_head).forEach(function (name) {
      var v = h === null || h < 0 ? m.mean[name] : m.per_head[name][h];
      rowsHtml += "<tr><th>" + name + "</th><td>" + fmt(v) + "</td></tr>";
    });
    if (h === null || h < 0) {
      title = cur.layer.name + ": mean of " + cur.layer.heads + " heads";
      pattern = "patterns: " + m.pattern.join(", ");
    } else {
      title = cur.layer.name + ": head " + h;
      pattern = m.pattern[h];
    }
    panel.innerHTML = "<h3></h3><p class='pattern'></p><table>" + rowsHtml + "</table>";
    panel.querySelector("h3").textContent = title;
    panel.querySelector(".pattern").textContent = pattern;
    panel.setAttribute("data-head", String(h === null || h < 0 ? "mean" : h));
  }
  function drawQuery() {
    var cur = current(), q = Number(querySelect.value) || 0, row = [], sum = 0, max = -1, at = 0;
    for (var c = 0; c < cur.cols; c++) {
      var v = cur.flat[q * cur.cols + c];
      row.push(v === v ? v : 0);
      if (v === v) { sum += v; if (v > max) { max = v; at = c; } }
    }
    var label = String(cur.y[q]);
    var trace = {type: "bar", x: cur.x, y: row, marker: {color: "#31688e"},
                 hovertemplate: "key: %{x}<br>attention: %{y:.4f}<extra></extra>"};
    var layout = {title: {text: "Query " + label + " attends to (" + cur.view.title + ")",
                          x: 0, xanchor: "left"},
                  height: 320, margin: {t: 50},
                  xaxis: {type: "category", title: {text: "key"}, automargin: true},
                  yaxis: {title: {text: "attention"}, rangemode: "tozero"}};
    queryStatus.removeAttribute("data-drawn");
    return Plotly.react(queryPlot, [trace], layout, {displaylogo: false, responsive: true})
      .then(function () {
        queryStatus.textContent = "Query " + label + " (row " + q + "): strongest key " +
          String(cur.x[at]) + " (" + fmt(max) + ").";
        queryStatus.setAttribute("data-query", String(q));
        queryStatus.setAttribute("data-label", label);
        queryStatus.setAttribute("data-sum", String(sum));
        queryStatus.setAttribute("data-argmax", String(at));
        queryStatus.setAttribute("data-drawn", "1");
      });
  }
  function markCurrent() {
    var l = Number(layerSelect.value), h = current().view.head;
    Array.prototype.forEach.call(overview.querySelectorAll("figure"), function (fig) {
      var on = Number(fig.getAttribute("data-layer")) === l &&
        Number(fig.getAttribute("data-head")) === h;
      fig.className = on ? "current" : "";
    });
  }
  function draw() {
    var cur = current(), rows = cur.rows, cols = cur.cols, pool = cur.pooling;
    var pooled = pool && (pool.query_block > 1 || pool.key_block > 1);
    var value = pooled ? pool.mode + " attention" : "attention";
    var z = rowsOf(cur.flat, rows, cols);
    var trace = {
      type: "heatmap", z: z, x: cur.x, y: cur.y, zmin: 0, colorscale: "Viridis",
      hoverongaps: false, colorbar: {title: {text: value}},
      hovertemplate: "query: %{y}<br>key: %{x}<br>" + value + ": %{z:.4f}<extra></extra>"
    };
    var layout = {
      title: {text: cur.view.title + (cur.note ? " (" + cur.note + ")" : ""),
              x: 0, xanchor: "left", xref: "paper"},
      height: 640, margin: {t: 60}, plot_bgcolor: data.masked_color,
      xaxis: {title: {text: "key"}, side: "bottom", type: "category", automargin: true},
      yaxis: {title: {text: "query"}, autorange: "reversed", type: "category", automargin: true}
    };
    var sum = 0, max = -Infinity, at = "0,0", masked = 0;
    for (var r = 0; r < rows; r++) {
      for (var c = 0; c < cols; c++) {
        var v = cur.flat[r * cols + c];
        if (v !== v) { masked++; continue; }
        sum += v;
        if (v > max) { max = v; at = r + "," + c; }
      }
    }
    $("masked-legend").hidden = masked === 0;
    drawPanel(cur);
    markCurrent();
    status.removeAttribute("data-drawn");
    var shown = Plotly.react(plot, [trace], layout, {displaylogo: false, responsive: true});
    return shown.then(function () {
      status.textContent = "Showing " + cur.view.title + ": " + rows + "×" + cols + " cells" +
        (masked ? ", " + masked + " masked" : "") +
        (pooled ? ", each the " + pool.mode + " over a block of " + pool.query_block + "×" +
         pool.key_block + " positions (exact values: " + data.exact_values + ")" : "") + ".";
      status.setAttribute("data-title", cur.view.title);
      status.setAttribute("data-shape", rows + "x" + cols);
      status.setAttribute("data-sum", String(sum));
      status.setAttribute("data-max", String(max));
      status.setAttribute("data-argmax", at);
      status.setAttribute("data-masked", String(masked));
      status.setAttribute("data-drawn", "1");
      return drawQuery();
    });
  }
  function thumbnail(l, v, k) {
    var rows = v.source.display_shape[0], cols = v.source.display_shape[1];
    var flat = decode(v.data), max = 0, sum = 0;
    for (var j = 0; j < flat.length; j++) {
      if (flat[j] === flat[j]) { sum += flat[j]; if (flat[j] > max) { max = flat[j]; } }
    }
    var canvas = document.createElement("canvas");
    canvas.width = cols;
    canvas.height = rows;
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(cols, rows);
    for (var p = 0; p < flat.length; p++) {
      var x = flat[p], rgb = x === x ? COLORS[Math.min(255, Math.floor(256 * x / (max || 1)))]
        : MASKED;
      img.data[4 * p] = rgb[0]; img.data[4 * p + 1] = rgb[1]; img.data[4 * p + 2] = rgb[2];
      img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    var fig = document.createElement("figure"), caption = document.createElement("figcaption");
    var pattern = l.metrics ? l.metrics.pattern[v.head] : "";
    caption.textContent = "head " + v.head + (pattern ? " · " + pattern : "");
    fig.title = l.name + " head " + v.head + (pattern ? " (" + pattern + ")" : "");
    fig.setAttribute("data-layer", String(k));
    fig.setAttribute("data-head", String(v.head));
    fig.setAttribute("data-sum", String(sum));
    fig.appendChild(canvas);
    fig.appendChild(caption);
    fig.addEventListener("click", function () {
      layerSelect.value = String(k);
      fillViews(false);
      viewSelect.value = String(v.head + 1);
      fillQueries(true);
      draw();
      if (plot.scrollIntoView) { plot.scrollIntoView({block: "start"}); }
    });
    return fig;
  }
  function drawOverview() {
    overview.innerHTML = "";
    var most = 1, count = 0;
    data.layers.forEach(function (l) { most = Math.max(most, l.heads); });
    overview.style.gridTemplateColumns = "max-content repeat(" + most + ", 112px)";
    data.layers.forEach(function (l, k) {
      var name = document.createElement("div");
      name.className = "layer-name";
      name.textContent = l.name;
      overview.appendChild(name);
      views(l).forEach(function (v) {
        if (v.head === null || v.head < 0) { return; }
        overview.appendChild(thumbnail(l, v, k));
        count++;
      });
      for (var pad = l.heads; pad < most; pad++) {
        overview.appendChild(document.createElement("div"));
      }
    });
    overview.setAttribute("data-thumbnails", String(count));
    markCurrent();
  }
  data.layers[0].items.forEach(function (it) { option(itemSelect, it.index, "item " + it.index); });
  data.layers.forEach(function (l, k) { option(layerSelect, k, l.name); });
  var wanted = new URLSearchParams(location.hash.slice(1));
  itemSelect.value = String(wanted.has("item") ? wanted.get("item") : data.batch_index);
  if (itemSelect.selectedIndex < 0) { itemSelect.selectedIndex = 0; }
  layerSelect.value = wanted.get("layer") || "0";
  if (layerSelect.selectedIndex < 0) { layerSelect.selectedIndex = 0; }
  fillViews(false);
  var view = wanted.get("view") || "0";
  viewSelect.value = view === "rollout" ? String(viewSelect.options.length - 1) : view;
  if (viewSelect.selectedIndex < 0) { viewSelect.selectedIndex = 0; }
  fillQueries(false);
  querySelect.value = wanted.get("query") || "0";
  if (querySelect.selectedIndex < 0) { querySelect.selectedIndex = 0; }
  itemSelect.addEventListener("change", function () {
    fillViews(true); fillQueries(true); drawOverview(); draw();
  });
  layerSelect.addEventListener("change", function () { fillViews(true); fillQueries(true); draw(); });
  viewSelect.addEventListener("change", function () { fillQueries(true); draw(); });
  querySelect.addEventListener("change", drawQuery);
  drawOverview();
  draw().then(function () {
    plot.on("plotly_click", function (event) {
      var point = event.points && event.points[0];
      if (!point || !point.pointIndex) { return; }
      querySelect.value = String(point.pointIndex[0]);
      drawQuery();
    });
  });
})();
