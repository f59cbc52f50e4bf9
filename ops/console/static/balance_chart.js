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
  // The last balance holds until now: the line runs on to the right edge.
  var now = Math.floor(Date.now() / 1000);
  if (now > times[times.length - 1]) {
    times.push(now);
    balances.push(balances[balances.length - 1]);
  }
  // Entries a few seconds apart (or one alone) still get a readable time axis.
  function padded(chart, low, high) {
    var pad = Math.max((high - low) * 0.03, 60);
    return [low - pad, high + pad];
  }
  var options = {
    width: Math.max(holder.clientWidth, 400),
    height: 260,
    scales: { x: { time: true, range: padded } },
    // Times in UTC, as every table of the console shows them.
    tzDate: function (seconds) { return uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"); },
    series: [
      {},
      {
        label: "balance (credits)",
        stroke: "#2563eb",
        fill: "rgba(37, 99, 235, 0.08)",
        width: 2,
        // A balance holds its value until the next entry changes it: a step, not a slope.
        paths: uPlot.paths.stepped({ align: 1 }),
        points: { show: points.length <= 60, filter: lastIsNow },
      },
    ],
    axes: [{}, { label: "credits" }],
  };
  // No dot on the point added for "now": it is not a ledger entry.
  function lastIsNow(chart, seriesIndex, show) {
    if (!show) {
      return null;
    }
    var indexes = [];
    for (var i = 0; i < points.length; i++) {
      indexes.push(i);
    }
    return indexes;
  }
  var chart = new uPlot(options, [times, balances], holder);
  holder.dataset.drawn = String(points.length);
  window.addEventListener("resize", function () {
    chart.setSize({ width: Math.max(holder.clientWidth, 400), height: 260 });
  });
})();
