// Security: the active blocks with why they were made (GET /v1/blocks) and, for an admin
// key, a button that lifts one (DELETE /v1/blocks/{id}); incidents (GET /v1/incidents,
// where the server has them), the detection's alerts (GET /v1/alerts) and the allowlist
// (GET /v1/allowlist).

import { api } from "../api.js";
import { count, h, moment, notice, table, until } from "../ui.js";

export const title = "Security";

const ALERTS_SHOWN = 20;
const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

// a section whose content is built from `load`, or a notice of why it could not be
async function section(id, heading, load) {
  let content;
  try {
    content = await load();
  } catch (error) {
    content = notice(`Could not load ${heading.toLowerCase()}: ${error.message}`, "error");
  }
  return h(
    "section",
    { class: "card", "aria-labelledby": id },
    h("h2", { id }, heading),
    content,
  );
}

function explanation(block) {
  const why = block.explanation;
  if (!why) return null;
  const reasons = Array.isArray(why.reasons) ? why.reasons : [];
  const signals = Array.isArray(why.signals) ? why.signals : [];
  return h(
    "div",
    { class: "explanation" },
    reasons.length ? h("p", { class: "why" }, "Why the detector blocked it:") : null,
    reasons.length ? h("ul", { class: "reasons" }, reasons.map((text) => h("li", {}, text))) : null,
    why.threshold !== undefined
      ? h("p", {}, `Score ${number.format(why.score ?? block.score)} against a threshold of `,
          `${number.format(why.threshold)} (${why.detector ?? block.detector}).`)
      : null,
    signals.length
      ? h(
          "details",
          {},
          h("summary", {}, "Signals"),
          table(
            "Signals behind the score",
            ["Feature", "Value", "Baseline", "Weight"],
            signals.map((s) => [
              s.feature,
              number.format(s.value),
              s.baseline === null || s.baseline === undefined ? "–" : number.format(s.baseline),
              number.format(s.weight),
            ]),
          ),
        )
      : null,
  );
}

function blockCard(block, admin, onLift) {
  const subject = `${block.scope} ${block.value}`;
  const source = block.source === "manual" ? "Manual" : `Detector ${block.detector ?? block.source}`;
  const lift = admin
    ? h("button", { type: "button", class: "danger", "aria-label": `Lift the block on ${subject}` },
        "Lift")
    : null;
  lift?.addEventListener("click", () => onLift(block, subject, lift));
  return h(
    "li",
    { class: "block", "data-block-id": block.id },
    h(
      "div",
      { class: "block-head" },
      h("h3", {}, h("span", { class: "scope" }, block.scope), " ", h("code", {}, block.value)),
      h("span", { class: `badge ${block.mode}` }, block.mode === "shadow" ? "Shadow" : "Enforced"),
      lift,
    ),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Reason"),
      h("dd", { class: "reason" }, block.reason || "–"),
      h("dt", {}, "Source"),
      h("dd", {}, source),
      block.score !== null && block.score !== undefined
        ? [h("dt", {}, "Score"), h("dd", {}, number.format(block.score))]
        : null,
      h("dt", {}, "Since"),
      h("dd", {}, moment(block.created_at)),
      h("dt", {}, "Expires"),
      h("dd", {}, `${moment(block.expires_at)} (${until(block.expires_at)})`),
    ),
    explanation(block),
  );
}

async function blocks(admin, announce) {
  const answer = await api("/v1/blocks");
  const onLift = async (block, subject, button) => {
    if (!confirm(`Lift the block on ${subject}? Its traffic is decided by the limits again.`)) {
      return;
    }
    button.disabled = true;
    try {
      await api(`/v1/blocks/${encodeURIComponent(block.id)}`, { method: "DELETE" });
      const item = button.closest("li");
      const list = item.parentElement;
      item.remove();
      if (!list.children.length) list.replaceWith(h("p", { class: "empty" }, "No active blocks."));
      announce(`Lifted the block on ${subject}.`);
    } catch (error) {
      button.disabled = false;
      announce(`Could not lift the block on ${subject}: ${error.message}`);
    }
  };
  return h(
    "div",
    {},
    admin ? null : h("p", { class: "hint" }, "Lifting a block needs an admin key."),
    answer.blocks.length
      ? h("ul", { class: "blocks" }, answer.blocks.map((b) => blockCard(b, admin, onLift)))
      : h("p", { class: "empty" }, "No active blocks."),
  );
}

// a listed incident carries its member count (the list itself is its own route's)
function members(incident) {
  if (incident.counts && typeof incident.counts.members === "number") {
    return count(incident.counts.members);
  }
  return Array.isArray(incident.members) ? count(incident.members.length) : "–";
}

function text(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "string" || typeof value === "number") return String(value);
  if (Array.isArray(value)) return value.map(text).join(", ");
  return JSON.stringify(value);
}

// why the blocks belong together: the incident's reasons, and what its members share
function why(incident) {
  const reasons = Array.isArray(incident.reasons) ? incident.reasons : [];
  const evidence = incident.evidence && typeof incident.evidence === "object"
    ? Object.entries(incident.evidence)
    : [];
  return h(
    "div",
    {},
    reasons.length ? reasons.join(" ") : null,
    evidence.length
      ? h(
          "details",
          {},
          h("summary", {}, "Evidence"),
          h("dl", { class: "facts" }, evidence.map(([name, value]) => [
            h("dt", {}, name.replaceAll("_", " ")),
            h("dd", {}, text(value)),
          ])),
        )
      : null,
    !reasons.length && !evidence.length ? text(incident.evidence) : null,
  );
}

async function incidents() {
  let answer;
  try {
    answer = await api("/v1/incidents");
  } catch (error) {
    if (error.status === 404 || error.status === 405) {
      return h("p", { class: "empty" }, "Incidents are not available on this server.");
    }
    if (error.status === 403) {
      return h("p", { class: "empty" }, "Incidents are shown to admin keys only.");
    }
    throw error;
  }
  const list = Array.isArray(answer) ? answer : answer.incidents ?? [];
  return table(
    "Incidents, latest activity first",
    ["Incident", "Family", "State", "Members", "Why", "First seen", "Last seen"],
    list.map((incident) => [
      h("code", {}, incident.id ?? "–"),
      incident.family ?? "–",
      incident.state ?? "–",
      members(incident),
      why(incident),
      moment(incident.first_seen),
      moment(incident.last_seen),
    ]),
    "none open.",
  );
}

async function alerts() {
  const answer = await api(`/v1/alerts?limit=${ALERTS_SHOWN}`);
  return table(
    `The latest ${ALERTS_SHOWN} alerts`,
    ["Time", "Kind", "Subject", "Detector", "Score", "Why"],
    answer.alerts.map((alert) => {
      const why = alert.explanation;
      const first = why && Array.isArray(why.reasons) ? why.reasons[0] : "";
      return [
        moment(alert.ts),
        alert.kind,
        h("span", {}, `${alert.scope} `, h("code", {}, alert.subject)),
        alert.detector ?? "–",
        alert.score === null || alert.score === undefined ? "–" : number.format(alert.score),
        first || "–",
      ];
    }),
    "none.",
  );
}

async function allowlist() {
  const answer = await api("/v1/allowlist");
  return table(
    "Allowlist entries",
    ["Scope", "Value", "Note", "Added"],
    answer.entries.map((entry) => [
      entry.scope,
      h("code", {}, entry.value),
      entry.note || "–",
      moment(entry.added_at),
    ]),
    "empty.",
  );
}

export async function render({ admin }) {
  const live = h("p", { class: "visually-hidden", role: "status", id: "security-status" });
  const announce = (text) => {
    live.textContent = text;
  };
  const sections = await Promise.all([
    section("blocks-title", "Active blocks", () => blocks(admin, announce)),
    section("incidents-title", "Incidents", incidents),
    section("alerts-title", "Alerts", alerts),
    section("allowlist-title", "Allowlist", allowlist),
  ]);
  return h("div", {}, live, sections);
}
