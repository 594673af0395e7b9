// A time-series chart (uPlot, vendored) in the page's colours, light or dark, with the same
// numbers in a table beside it for screen readers and keyboard users.

import { count, h, moment, table } from "./ui.js";

const charts = new Set();

function colour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function options(width, lines) {
  const ink = colour("--muted");
  const grid = colour("--line");
  const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
  return {
    width,
    height: 260,
    scales: { x: { time: true } },
    axes: [{ ...axis }, { ...axis, size: 60 }],
    legend: { live: true },
    series: [
      {},
      ...lines.map((line) => ({
        label: line.label,
        stroke: colour(line.colour),
        width: 2,
        points: { show: false },
      })),
    ],
  };
}

// `series`: the usage API's points; `lines`: [{field, label, colour (a CSS variable)}]
export function timeChart(title, series, lines) {
  const holder = h("div", { class: "chart", role: "img", "aria-label": `${title} (chart)` });
  const xs = series.map((point) => Date.parse(point.ts) / 1000);
  const data = [xs, ...lines.map((line) => series.map((point) => point[line.field]))];
  const figure = h(
    "figure",
    { class: "card" },
    h("figcaption", {}, title),
    holder,
    h(
      "details",
      {},
      h("summary", {}, "Show the numbers"),
      table(
        title,
        ["Time", ...lines.map((line) => line.label)],
        series.map((point) => [moment(point.ts), ...lines.map((line) => count(point[line.field]))]),
      ),
    ),
  );
  // drawn once the figure is in the page and has a width
  requestAnimationFrame(() => {
    if (!holder.isConnected || typeof uPlot === "undefined") return;
    const entry = { holder, lines, data, plot: null };
    draw(entry);
    charts.add(entry);
  });
  return figure;
}

function draw(entry) {
  if (entry.plot) entry.plot.destroy();
  const width = Math.max(240, entry.holder.clientWidth);
  entry.plot = new uPlot(options(width, entry.lines), entry.data, entry.holder);
}

function redrawAll() {
  for (const entry of charts) {
    if (entry.holder.isConnected) draw(entry);
    else {
      entry.plot.destroy();
      charts.delete(entry);
    }
  }
}

let pending = 0;
window.addEventListener("resize", () => {
  cancelAnimationFrame(pending);
  pending = requestAnimationFrame(redrawAll);
});
// the colours follow the reader's light or dark setting
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redrawAll);
