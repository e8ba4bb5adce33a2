// Inflate the inlined plotly.js (gzip, base64) with the browser's DecompressionStream, then draw every figure
// from its JSON block; wire the SAE selectors, the table switches and the sortable tables. No network requests.
(function () {
  function b64bytes(text) {
    var bin = atob(text.trim()), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function gunzip(bytes) {
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text();
  }
  // Plots in view are drawn first (the page is ready: data-ready-ms); the rest follow one per idle moment, or at
  // once when scrolled to, so a long report never blocks its first screen.
  function drawAll() {
    var blocks = Array.from(document.querySelectorAll('script[type="application/json"][data-plot]'));
    var pending = new Map(), drawn = 0;
    function draw(el) {
      if (!pending.has(el.dataset.plot)) return;
      pending.delete(el.dataset.plot);
      var fig = JSON.parse(el.textContent), div = document.getElementById(el.dataset.plot);
      div.style.height = (fig.layout.height || 380) + "px";  // resizing the window keeps each plot's height
      Plotly.newPlot(div, fig.data, fig.layout, {displayModeBar: false, responsive: true});
      drawn += 1;
      document.body.dataset.plotsDrawn = String(drawn);
      if (drawn === blocks.length) document.body.dataset.allDrawnMs = String(Math.round(performance.now()));
    }
    blocks.forEach(function (el) { pending.set(el.dataset.plot, el); });
    var inView = function (el) {
      var r = document.getElementById(el.dataset.plot).getBoundingClientRect();
      return r.bottom > 0 && r.top < window.innerHeight;
    };
    blocks.filter(inView).forEach(draw);
    document.body.dataset.readyMs = String(Math.round(performance.now()));
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.isIntersecting) draw(pending.get(e.target.id) || {dataset: {}});
      });
    }, {rootMargin: "300px"});
    blocks.forEach(function (el) { observer.observe(document.getElementById(el.dataset.plot)); });
    var later = window.requestIdleCallback || function (f) { return setTimeout(f, 30); };
    (function next() {
      var el = pending.values().next().value;
      if (el) later(function () { draw(el); next(); });
    })();
    document.querySelectorAll("select[data-pick]").forEach(function (sel) {
      sel.addEventListener("change", function () {
        var div = document.getElementById(sel.dataset.pick), pick = Number(sel.value);
        if (!div.data) draw(pending.get(sel.dataset.pick));
        Plotly.restyle(div, {visible: div.data.map(function (t) { return t.meta === pick; })});
      });
    });
  }
  document.querySelectorAll("select[data-switch]").forEach(function (sel) {
    sel.addEventListener("change", function () {
      document.querySelectorAll('[data-switch-of="' + sel.dataset.switch + '"]').forEach(function (box) {
        box.hidden = box.dataset.choice !== sel.value;
      });
    });
  });
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0], rows = Array.from(body.rows);
        var asc = th.dataset.dir !== "asc";
        th.dataset.dir = asc ? "asc" : "desc";
        rows.sort(function (a, b) {
          var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
          var nx = parseFloat(x), ny = parseFloat(y);
          var cmp = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
          return asc ? cmp : -cmp;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  if (typeof DecompressionStream === "undefined") {
    document.body.dataset.plotsDrawn = "unsupported";
    document.querySelectorAll(".plot").forEach(function (div) {
      div.textContent = "This browser cannot inflate the embedded plotting library (it needs DecompressionStream: Chrome 80+, Firefox 113+, Safari 16.4+).";
    });
    return;
  }
  gunzip(b64bytes(document.getElementById("plotly-gz").textContent)).then(function (code) {
    var s = document.createElement("script");
    s.text = code;
    document.head.appendChild(s);
    drawAll();
  });
})();
