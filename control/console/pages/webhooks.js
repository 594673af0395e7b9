// Webhooks: each endpoint's delivery health (GET /v1/webhooks, admin keys only): when it
// last succeeded or failed, its last HTTP status and error, failures in a row.

import { api } from "../api.js";
import { count, h, moment, notice, table } from "../ui.js";

export const title = "Webhooks";

// what one webhook's health says, in a word the reader can scan for
function state(hook) {
  const health = hook.health;
  if (!hook.enabled) return ["Disabled", "muted"];
  if (health.last_attempt_at === null) return ["No deliveries yet", "muted"];
  if (health.consecutive_failures > 0) return ["Failing", "bad"];
  return ["Healthy", "good"];
}

export async function render({ admin }) {
  if (!admin) {
    return notice("Webhooks and their delivery health are shown to admin keys only.");
  }
  const answer = await api("/v1/webhooks");
  const hooks = answer.webhooks;
  const failing = hooks.filter((hook) => hook.enabled && hook.health.consecutive_failures > 0);
  return h(
    "div",
    {},
    h(
      "p",
      { class: "hint" },
      `${count(hooks.length)} webhook${hooks.length === 1 ? "" : "s"}, `,
      `${count(failing.length)} failing. Deliveries are retried with backoff over hours.`,
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "webhooks-title" },
      h("h2", { id: "webhooks-title" }, "Delivery health"),
      table(
        "Webhook delivery health",
        [
          "Endpoint",
          "State",
          "Events",
          "Last success",
          "Last failure",
          "Last status",
          "Failures in a row",
          "Last error",
        ],
        hooks.map((hook) => {
          const [word, tone] = state(hook);
          const health = hook.health;
          return [
            h("span", {}, h("code", {}, hook.url), hook.description ? ` ${hook.description}` : ""),
            h("span", { class: `badge ${tone}` }, word),
            hook.events === null || hook.events === undefined ? "all" : hook.events.join(", "),
            moment(health.last_success_at),
            moment(health.last_failure_at),
            health.last_status ?? "–",
            count(health.consecutive_failures),
            health.last_error ?? "–",
          ];
        }),
        "none registered (POST /v1/webhooks adds one).",
      ),
    ),
  );
}
