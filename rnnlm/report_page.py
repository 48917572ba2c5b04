"""The page rnnlm/report.py fills in: inline CSS and script, `{{name}}` where report.py puts a part.

The script reads the data block, cuts the text into chunks at line ends and turns a chunk into coloured
token spans only when it scrolls into view (a 100,000-character text stays light). One function, `apply`,
shows a selection: the picker's controls only write the URL hash, and the hash's change calls `apply`,
so a link, a ranked unit clicked and the picker all take the same path. Script errors are shown on the page
(`#errors`), for the reader and for the headless-browser test.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rnnlm inspect: {{title}}</title>
<script>
window.onerror = function (message, source, line) {
  var box = document.getElementById("errors");
  if (box) { box.textContent += message + " (line " + line + ")\n"; box.hidden = false; }
};
</script>
<style>
:root { --blue: 31,111,209; --red: 214,69,65; --ink: #1d2430; --muted: #6b7280; --line: #e3e6eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
  background: #f6f7f9; }
header { padding: 14px 24px; background: #fff; border-bottom: 1px solid var(--line); }
header h1 { font-size: 18px; margin: 0; }
header p { margin: 2px 0 0; color: var(--muted); }
main { display: grid; grid-template-columns: minmax(0, 1fr) 470px; gap: 18px; padding: 18px 24px; }
@media (max-width: 1100px) { main { grid-template-columns: minmax(0, 1fr); } }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px;
  margin-bottom: 18px; }
h2 { font-size: 15px; margin: 0 0 8px; }
.picker { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-bottom: 8px; }
.picker label { color: var(--muted); }
select { font: inherit; padding: 2px 4px; max-width: 360px; }
#why { color: var(--muted); }
#legend { display: flex; align-items: center; gap: 8px; color: var(--muted); font-size: 12px; margin-bottom: 8px; }
#legend .scale { width: 180px; height: 12px; border: 1px solid var(--line); border-radius: 2px; }
#text { font: 13px/1.6 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; white-space: pre-wrap;
  word-break: break-all; max-height: 72vh; overflow-y: auto; border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 12px; background: #fff; }
#text span:hover { outline: 1px solid #000; }
#status { min-height: 1.5em; color: var(--muted); font: 12px ui-monospace, Menlo, Consolas, monospace;
  margin-top: 6px; }
#notice { color: #9a3412; }
#errors { color: #b91c1c; white-space: pre-wrap; }
table.rank { border-collapse: collapse; width: 100%; font-size: 13px; }
table.rank th { text-align: left; color: var(--muted); font-weight: 600; border-bottom: 1px solid var(--line);
  padding: 3px 6px; }
table.rank td { padding: 2px 6px; border-bottom: 1px solid #f0f1f4; white-space: nowrap; }
table.rank tr.first td { border-top: 1px solid var(--line); }
table.rank tr.chosen td { background: #eef4fd; }
a.unit { color: rgb(var(--blue)); text-decoration: none; }
a.unit:hover { text-decoration: underline; }
.bar { display: inline-block; height: 8px; background: rgba(var(--blue), .55); border-radius: 2px;
  vertical-align: middle; }
.muted { color: var(--muted); }
svg.chart { font: 11px system-ui, sans-serif; fill: var(--ink); max-width: 100%; height: auto; }
svg .grid { stroke: #eceef2; }
svg .curve { fill: none; stroke-width: 2; }
svg .curve.h, svg .legend.h { stroke: rgb(var(--blue)); fill: rgb(var(--blue)); }
svg .curve.h { fill: none; }
svg .curve.c { stroke: rgb(var(--red)); fill: none; }
svg .legend.c { fill: rgb(var(--red)); }
svg rect.mid { fill: #eceef2; }
svg rect.low, svg .low-t { fill: rgb(var(--red)); }
svg rect.high, svg .high-t { fill: rgb(var(--blue)); }
svg text.in { fill: #fff; font-weight: 600; }
svg text.out { fill: var(--muted); }
.note { color: var(--muted); font-size: 12px; margin: 6px 0 0; }
</style></head>
<body>
<header><h1>rnnlm inspect: {{title}}</h1><p>{{summary}}</p><pre id="errors" hidden></pre></header>
<main>
<div>
<section>
<div class="picker">
<label>layer <select id="layer"></select></label>
<label>quantity <select id="quantity"></select></label>
<label>unit <select id="unit"></select></label>
<span id="why"></span>
</div>
<div id="legend"><span id="low-label"></span><span class="scale" id="scale"></span><span id="high-label"></span>
<span id="notice"></span></div>
<div id="text"></div>
<div id="status">Point at a token to read its value.</div>
</section>
</div>
<div>
<section><h2>Units that track properties of the text</h2>{{property_table}}
<p class="note">Pearson correlation between the unit's value after each token and the property there, over
all tokens; click a unit to colour the text by it.</p></section>
<section><h2>Units that hold memory longest</h2>{{memory_table}}
<p class="note">Half-life: tokens until the product of the unit's keep gate falls to 1/2, from its mean log.</p>
</section>
<section><h2>Gate saturation</h2>{{saturation_chart}}
<p class="note">Share of all gate values below 0.1 (left) and above 0.9 (right), per layer.</p></section>
<section><h2>Gradient flow through time</h2>{{flow_chart}}<p class="note">{{flow_note}}</p></section>
</div>
</main>
<script type="application/json" id="data">{{data}}</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("data").textContent);
  var text = document.getElementById("text"), status = document.getElementById("status");
  var controls = { layer: document.getElementById("layer"), q: document.getElementById("quantity"),
    unit: document.getElementById("unit") };
  var NAMES = { i: "input gate i", f: "forget gate f", o: "output gate o", c: "cell c", h: "hidden h",
    z: "update gate z", r: "reset gate r" };
  var cache = {}, chunks = [], visible = new Set(), current = null, version = 0;

  function show(token) { return token.replace(/\n/g, "\u21b5\n"); }

  function column(layer, q, unit) {  // the dequantized values of one stored column, decoded once
    var key = layer + ":" + q + ":" + unit;
    if (!cache[key]) {
      var stored = D.values[layer][unit][q], bytes = atob(stored[2]), low = stored[0];
      var step = (stored[1] - stored[0]) / 255, out = new Float32Array(bytes.length);
      for (var i = 0; i < bytes.length; i++) out[i] = low + bytes.charCodeAt(i) * step;
      cache[key] = { values: out, low: stored[0], high: stored[1] };
    }
    return cache[key];
  }

  function colour(v, signed, scale) {
    // at most 0.7 opaque: black text stays readable on the strongest colour
    if (!signed) return "rgba(31,111,209," + (0.7 * Math.max(0, Math.min(1, v))).toFixed(3) + ")";
    var a = 0.7 * Math.min(1, Math.abs(v) / scale);
    return (v < 0 ? "rgba(214,69,65," : "rgba(31,111,209,") + a.toFixed(3) + ")";
  }

  function build(chunk) {
    var fragment = document.createDocumentFragment();
    for (var i = chunk.start; i < chunk.end; i++) {
      var span = document.createElement("span");
      span.textContent = show(D.tokens[i]);
      span.index = i;
      fragment.appendChild(span);
    }
    chunk.textContent = "";
    chunk.appendChild(fragment);
    chunk.built = true;
  }

  function paint(chunk) {
    if (!chunk.built) build(chunk);
    if (chunk.painted === version || !current) return;
    var spans = chunk.children, values = current.column.values;
    for (var i = 0; i < spans.length; i++) {
      spans[i].style.backgroundColor = colour(values[chunk.start + i], current.signed, current.scale);
    }
    chunk.painted = version;
  }

  function cut() {  // chunks of about 2,000 tokens ending at a line end (or 8,000 tokens without one)
    var start = 0, n = D.tokens.length;
    while (start < n) {
      var end = Math.min(n, start + 2000);
      while (end < n && end < start + 8000 && D.tokens[end - 1].indexOf("\n") < 0) end++;
      var chunk = document.createElement("div");
      chunk.className = "chunk";
      chunk.start = start; chunk.end = end; chunk.built = false; chunk.painted = -1;
      chunk.textContent = D.tokens.slice(start, end).map(show).join("");  // the same lines, not yet spans
      text.appendChild(chunk);
      chunks.push(chunk);
      start = end;
    }
  }

  function watch() {  // the chunks in view now are painted by the first apply; the others when they come into view
    chunks.forEach(function (c) {
      if (!("IntersectionObserver" in window) || c.offsetTop - text.offsetTop < text.clientHeight + 600) visible.add(c);
    });
    if (!("IntersectionObserver" in window)) return;
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting) { visible.add(entry.target); paint(entry.target); } else visible.delete(entry.target);
      });
    }, { root: text, rootMargin: "600px 0px" });
    chunks.forEach(function (c) { observer.observe(c); });
  }

  function parse(hash) {
    var out = {};
    hash.replace(/^#/, "").split("&").forEach(function (pair) {
      var kv = pair.split("=");
      if (kv.length === 2) out[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1]);
    });
    if (out.layer === undefined && out.q === undefined && out.unit === undefined) return null;
    return { layer: Number(out.layer), q: out.q, unit: Number(out.unit) };
  }

  function problem(sel) {
    if (!(sel.layer >= 0 && sel.layer < D.layers)) return "there is no layer " + sel.layer;
    if (D.quantities.indexOf(sel.q) < 0) return "a " + D.cell.toUpperCase() + " has no quantity " + sel.q;
    if (!D.values[sel.layer] || !D.values[sel.layer][sel.unit])
      return "unit " + sel.unit + " of layer " + sel.layer +
        " is not on this page (it holds the ranked units; see --top)";
    return null;
  }

  function fillUnits(layer) {
    controls.unit.innerHTML = "";
    Object.keys(D.values[layer] || {}).map(Number).sort(function (a, b) { return a - b; }).forEach(function (u) {
      var why = D.units[layer + ":" + u];
      controls.unit.add(new Option(u + (why ? " \u2014 " + why.split("; ")[0] : ""), String(u)));
    });
  }

  function apply(sel) {  // the one way a selection is shown: from the hash, the picker and the tables alike
    var wrong = problem(sel);
    document.getElementById("notice").textContent = wrong ? "Not shown: " + wrong + "." : "";
    if (wrong) return;
    var col = column(sel.layer, sel.q, sel.unit), signed = D.gates.indexOf(sel.q) < 0;
    var scale = Math.max(Math.abs(col.low), Math.abs(col.high)) || 1;  // h and c: this unit's largest |value|
    current = { sel: sel, column: col, signed: signed, scale: scale };
    version++;
    controls.layer.value = String(sel.layer);
    fillUnits(sel.layer);
    controls.q.value = sel.q;
    controls.unit.value = String(sel.unit);
    document.getElementById("why").textContent = D.units[sel.layer + ":" + sel.unit] || "";
    legend(signed, scale);
    visible.forEach(paint);
    chunks.forEach(function (c) { if (c.built && !visible.has(c)) c.painted = -1; });
    document.querySelectorAll("a.unit").forEach(function (a) {
      var on = Number(a.dataset.layer) === sel.layer && Number(a.dataset.unit) === sel.unit;
      a.closest("tr").classList.toggle("chosen", on);
    });
    text.dataset.selection = sel.layer + ":" + sel.q + ":" + sel.unit;
  }

  function legend(signed, scale) {
    var s = document.getElementById("scale");
    s.style.background = signed
      ? "linear-gradient(to right, rgba(var(--red), .7), #fff, rgba(var(--blue), .7))"
      : "linear-gradient(to right, #fff, rgba(var(--blue), .7))";
    document.getElementById("low-label").textContent = signed ? (-scale).toFixed(2) : "0";
    document.getElementById("high-label").textContent = signed ? "+" + scale.toFixed(2) : "1";
  }

  function fromControls() {
    return "#layer=" + controls.layer.value + "&q=" + controls.q.value + "&unit=" + controls.unit.value;
  }

  for (var k = 0; k < D.layers; k++) controls.layer.add(new Option(String(k), String(k)));
  D.quantities.forEach(function (q) { controls.q.add(new Option(NAMES[q] || q, q)); });
  controls.layer.addEventListener("change", function () {
    fillUnits(Number(controls.layer.value));  // the first stored unit of the layer chosen
    location.hash = fromControls();
  });
  controls.q.addEventListener("change", function () { location.hash = fromControls(); });
  controls.unit.addEventListener("change", function () { location.hash = fromControls(); });
  window.addEventListener("hashchange", function () { var sel = parse(location.hash); if (sel) apply(sel); });
  text.addEventListener("mouseover", function (event) {
    var i = event.target.index;
    if (i === undefined || !current) return;
    status.textContent = "token " + i + " " + JSON.stringify(D.tokens[i]) + ": " +
      (NAMES[current.sel.q] || current.sel.q) + " = " + current.column.values[i].toFixed(3);
  });

  cut();
  watch();
  apply(parse(location.hash) || D.default);
})();
</script>
</body></html>
"""
