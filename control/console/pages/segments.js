// Segments: usage by customer segment or tier (GET /v1/analytics/usage?group_by=segment),
// so that a product manager sees each tier's share of the traffic, how often its limits
// deny, and how its use moves over time.

import { api } from "../api.js";
import { timeChart } from "../chart.js";
import { count, h, percent, table, windowPicker } from "../ui.js";

export const title = "Segments";

const CHARTED = 4; // the largest segments drawn over time
const COLOURS = ["--chart-1", "--chart-2", "--chart-3", "--chart-4"];

const label = (segment) => (segment === "" ? "(none)" : segment);

export async function render({ state, refresh }) {
  state.window ??= "7d";
  const usage = (params) =>
    api(`/v1/analytics/usage?${new URLSearchParams({ window: state.window, ...params })}`);
  const grouped = await usage({ group_by: "segment", top: "100" });
  const groups = grouped.groups;
  const total = groups.reduce((sum, group) => sum + group.requests, 0);
  // the API filters by a named segment only: traffic without one is in the table alone
  const charted = groups.filter((group) => group.value !== "").slice(0, CHARTED);
  const perSegment = await Promise.all(charted.map((group) => usage({ segment: group.value })));
  const points = mergeSeries(perSegment);
  const rows = groups.map((group) => {
    const share = total ? group.requests / total : 0;
    return [
      h("code", {}, label(group.value)),
      count(group.requests),
      h(
        "span",
        { class: "share" },
        h("meter", { min: "0", max: "1", value: share.toFixed(4), "aria-hidden": "true" }),
        percent(share),
      ),
      count(group.allowed),
      count(group.denied),
      percent(group.deny_rate),
    ];
  });
  const lines = charted.map((group, index) => ({
    field: `s${index}`,
    label: label(group.value),
    colour: COLOURS[index],
  }));
  return h(
    "div",
    {},
    windowPicker(state.window, (window) => {
      state.window = window;
      refresh();
    }),
    h(
      "p",
      { class: "hint" },
      "A check's segment is the one it sends, else its API key's segment. A tier whose deny ",
      "rate is high is hitting its limits: a candidate for a larger plan.",
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "segments-title" },
      h("h2", { id: "segments-title" }, `Usage by segment, last ${state.window}`),
      table(
        "Usage by segment",
        ["Segment", "Requests", "Share", "Allowed", "Denied", "Deny rate"],
        rows,
        "no traffic in this window.",
      ),
    ),
    lines.length
      ? timeChart(`Requests per ${grouped.granularity} by segment`, points, lines)
      : null,
  );
}

// one point per time of the first answer, with each segment's requests as s0, s1, …
function mergeSeries(answers) {
  if (!answers.length) return [];
  const byTime = answers.map((answer) => new Map(answer.series.map((p) => [p.ts, p.requests])));
  return answers[0].series.map((point) => {
    const merged = { ts: point.ts };
    byTime.forEach((values, index) => {
      merged[`s${index}`] = values.get(point.ts) ?? 0;
    });
    return merged;
  });
}
