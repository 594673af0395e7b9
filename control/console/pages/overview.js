// Overview: the tenant's traffic over a window (GET /v1/analytics/usage): totals, deny
// rate, latency quantiles, requests over time, the top keys and routes.

import { api } from "../api.js";
import { timeChart } from "../chart.js";
import { count, h, micros, percent, stat, table, windowPicker } from "../ui.js";

export const title = "Overview";

export const TRAFFIC_LINES = [
  { field: "requests", label: "Requests", colour: "--chart-requests" },
  { field: "allowed", label: "Allowed", colour: "--chart-allowed" },
  { field: "denied", label: "Denied", colour: "--chart-denied" },
];

export function groupRows(groups) {
  return groups.map((group) => [
    h("code", {}, group.value === "" ? "(none)" : group.value),
    count(group.requests),
    count(group.allowed),
    count(group.denied),
    percent(group.deny_rate),
  ]);
}

export const GROUP_HEADERS = ["Requests", "Allowed", "Denied", "Deny rate"];

export async function render({ state, refresh }) {
  state.window ??= "24h";
  const usage = (params) =>
    api(`/v1/analytics/usage?${new URLSearchParams({ window: state.window, ...params })}`);
  const [all, keys, routes] = await Promise.all([
    usage({}),
    usage({ group_by: "key", top: "10" }),
    usage({ group_by: "route", top: "10" }),
  ]);
  const totals = all.totals;
  const latency = totals.latency_us;
  return h(
    "div",
    {},
    windowPicker(state.window, (window) => {
      state.window = window;
      refresh();
    }),
    h(
      "section",
      { "aria-labelledby": "totals-title", class: "card" },
      h("h2", { id: "totals-title" }, `Totals, last ${state.window}`),
      h(
        "dl",
        { class: "stats" },
        stat("Requests", count(totals.requests), "requests"),
        stat("Allowed", count(totals.allowed), "allowed"),
        stat("Denied", count(totals.denied), "denied"),
        // allowed by a shadow-mode policy that would have denied them (counted in Allowed)
        stat("Shadow denials", count(totals.shadow_denied), "shadow_denied"),
        stat("Deny rate", percent(totals.deny_rate), "deny_rate"),
        stat("Latency p50", micros(latency.p50), "p50"),
        stat("Latency p90", micros(latency.p90), "p90"),
        stat("Latency p99", micros(latency.p99), "p99"),
      ),
    ),
    timeChart(`Requests per ${all.granularity}, last ${state.window}`, all.series, TRAFFIC_LINES),
    h(
      "div",
      { class: "columns" },
      h(
        "section",
        { class: "card", "aria-labelledby": "top-keys" },
        h("h2", { id: "top-keys" }, "Top keys"),
        table("Top keys by requests", ["Key", ...GROUP_HEADERS], groupRows(keys.groups)),
      ),
      h(
        "section",
        { class: "card", "aria-labelledby": "top-routes" },
        h("h2", { id: "top-routes" }, "Top routes"),
        table("Top routes by requests", ["Route", ...GROUP_HEADERS], groupRows(routes.groups)),
      ),
    ),
  );
}
