// The balance over time on a user's page, drawn by uPlot (vendor/uplot, MIT) from the points the
// page embeds as JSON (#balance-data: [unix seconds, balance after the entry]). The only script
// of the console: every other page works without JavaScript.
(function () {
  "use strict";
  var holder = document.getElementById("balance-chart");
  var source = document.getElementById("balance-data");
  if (!holder || !source || typeof uPlot === "undefined") {
    return;
  }
  var points = JSON.parse(source.textContent);
  if (points.length === 0) {
    holder.textContent = "No ledger entries to draw.";
    return;
  }
  var times = points.map(function (point) { return point[0]; });
  var balances = points.map(function (point) { return point[1]; });
  var options = {
    width: Math.max(holder.clientWidth, 400),
    height: 260,
    scales: { x: { time: true } },
    series: [
      {},
      {
        label: "balance (credits)",
        stroke: "#2563eb",
        fill: "rgba(37, 99, 235, 0.08)",
        width: 2,
        // A balance holds its value until the next entry changes it: a step, not a slope.
        paths: uPlot.paths.stepped({ align: 1 }),
        points: { show: points.length <= 60 },
      },
    ],
    axes: [{}, { label: "credits" }],
  };
  var chart = new uPlot(options, [times, balances], holder);
  holder.dataset.drawn = String(points.length);
  window.addEventListener("resize", function () {
    chart.setSize({ width: Math.max(holder.clientWidth, 400), height: 260 });
  });
})();
