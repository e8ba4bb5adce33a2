// Draw every figure from its JSON block, and make tables with class "sortable" sort on a header click.
(function () {
  document.querySelectorAll('script[type="application/json"][data-plot]').forEach(function (el) {
    var fig = JSON.parse(el.textContent);
    Plotly.newPlot(el.dataset.plot, fig.data, fig.layout, {displaylogo: false, responsive: true});
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
})();
