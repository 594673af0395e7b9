// Policies: the tenant's named policies (GET /v1/policies) with their windows, algorithm,
// mode and overrides (GET /v1/policies/{name}/overrides); for an admin key, forms that
// create or replace a policy (PUT /v1/policies/{name}) or an override (PUT …/overrides/
// {identifier}) and buttons that delete them.  A change rereads this page's data itself,
// so the focus can be put where the reader continues (the policy's overrides).

import { api } from "../api.js";
import { ruleForm } from "../rule-form.js";
import { count, h, moment, notice, table } from "../ui.js";

export const title = "Policies";

// limiter/policies/model.py's NAME_PATTERN: a name the URL's path can carry as it is
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const UNITS = [
  [86400, "d"],
  [3600, "h"],
  [60, "min"],
];
const ALGORITHM_NAMES = {
  sliding_window: "sliding window",
  token_bucket: "token bucket",
  fixed_window: "fixed window",
};
const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

const policyPath = (name) => `/v1/policies/${encodeURIComponent(name)}`;
const overridePath = (name, identifier) =>
  `${policyPath(name)}/overrides/${encodeURIComponent(identifier)}`;

function span(seconds) {
  for (const [size, unit] of UNITS) {
    if (seconds % size === 0) return `${number.format(seconds / size)} ${unit}`;
  }
  return `${number.format(seconds)} s`;
}

// "2 per 1 min, 100 per 1 h", each window kept on one line
function windows(limits) {
  return h(
    "span",
    {},
    limits.map((w, index) => [
      index ? ", " : null,
      h("span", { class: "nowrap" }, `${count(w.limit)} per ${span(w.window)}`),
    ]),
  );
}

function modeBadge(mode, inherited) {
  if (!mode) return inherited;
  return h("span", { class: `badge ${mode}` }, mode === "shadow" ? "Shadow" : "Enforce");
}

function checkName(name) {
  return NAME_PATTERN.test(name)
    ? ""
    : "A policy name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit.";
}

function checkIdentifier(identifier) {
  return identifier.slice(0, -1).includes("*") ? "'*' may only end an identifier (a prefix)." : "";
}

async function load() {
  const answer = await api("/v1/policies");
  const overrides = await Promise.all(
    answer.policies.map((p) => api(`${policyPath(p.name)}/overrides`)),
  );
  return answer.policies.map((policy, index) => ({
    ...policy,
    overrides: overrides[index].overrides,
  }));
}

export async function render({ admin, state }) {
  let policies;
  try {
    policies = await load();
  } catch (error) {
    if (error.status === 403) return notice("Policies are shown to admin keys only.");
    if (error.status === 404 || error.status === 405) {
      return notice("Named policies are not available on this server.");
    }
    throw error;
  }
  const live = h("p", { class: "visually-hidden", role: "status", id: "policies-status" });
  const announce = (text) => {
    live.textContent = text;
  };
  const content = h("div", {});
  const formCard = h("section", { class: "card", "aria-labelledby": "policy-form-title" });

  // reread the policies after a change and put the focus on the element with `focus`
  const reload = async (focus) => {
    try {
      policies = await load();
    } catch (error) {
      content.replaceChildren(notice(`Could not reload the policies: ${error.message}`, "error"));
      return;
    }
    draw();
    document.getElementById(focus)?.focus();
  };

  const savePolicy = async (name, body) => {
    const existed = policies.some((p) => p.name === name);
    await api(policyPath(name), { method: "PUT", body });
    state.editing = null;
    state.selected = name;
    drawForm();
    announce(`${existed ? "Saved" : "Created"} the policy ${name}.`);
    await reload("overrides-title");
  };

  const deletePolicy = async (policy, button) => {
    const overrides = policy.overrides.length;
    const also = overrides ? ` and its ${overrides} override${overrides === 1 ? "" : "s"}` : "";
    if (!confirm(`Delete the policy ${policy.name}${also}? Checks that name it are refused until it is made again.`)) {
      return;
    }
    button.disabled = true;
    try {
      await api(policyPath(policy.name), { method: "DELETE" });
    } catch (error) {
      button.disabled = false;
      announce(`Could not delete the policy ${policy.name}: ${error.message}`);
      return;
    }
    if (state.selected === policy.name) state.selected = null;
    if (state.editing === policy.name) {
      state.editing = null;
      drawForm();
    }
    announce(`Deleted the policy ${policy.name}.`);
    await reload("policies-title");
  };

  const saveOverride = async (policy, identifier, body) => {
    const existed = policy.overrides.some((o) => o.identifier === identifier);
    await api(overridePath(policy.name, identifier), { method: "PUT", body });
    state.editingOverride = null;
    announce(`${existed ? "Saved" : "Added"} the override ${identifier} of ${policy.name}.`);
    await reload("overrides-title");
  };

  const deleteOverride = async (policy, override, button) => {
    const question = `Delete the override ${override.identifier} of ${policy.name}? The identifiers it matched get the policy's own windows again.`;
    if (!confirm(question)) return;
    button.disabled = true;
    try {
      await api(overridePath(policy.name, override.identifier), { method: "DELETE" });
    } catch (error) {
      button.disabled = false;
      announce(`Could not delete the override ${override.identifier}: ${error.message}`);
      return;
    }
    if (state.editingOverride === override.identifier) state.editingOverride = null;
    announce(`Deleted the override ${override.identifier} of ${policy.name}.`);
    await reload("overrides-title");
  };

  function policyRow(policy) {
    const shown = state.selected === policy.name;
    const show = h(
      "button",
      {
        type: "button",
        class: "secondary",
        "aria-expanded": shown ? "true" : "false",
        "aria-controls": "overrides-card",
        "aria-label": `Show the overrides of ${policy.name}`,
      },
      shown ? "Shown" : "Show",
    );
    show.addEventListener("click", () => {
      state.selected = policy.name;
      state.editingOverride = null;
      draw();
      document.getElementById("overrides-title")?.focus();
    });
    const cells = [
      h("code", {}, policy.name),
      windows(policy.limits),
      ALGORITHM_NAMES[policy.algorithm] ?? "server default",
      modeBadge(policy.mode ?? "enforce"),
      h("span", { class: "inline" }, count(policy.overrides.length), show),
    ];
    if (admin) {
      const edit = h(
        "button",
        { type: "button", class: "secondary", "aria-label": `Edit the policy ${policy.name}` },
        "Edit",
      );
      edit.addEventListener("click", () => {
        state.editing = policy.name;
        drawForm().focus();
      });
      const remove = h(
        "button",
        { type: "button", class: "danger", "aria-label": `Delete the policy ${policy.name}` },
        "Delete",
      );
      remove.addEventListener("click", () => deletePolicy(policy, remove));
      cells.push(h("span", { class: "inline" }, edit, remove));
    }
    return cells;
  }

  function overridesCard(policy) {
    const rows = policy.overrides.map((override) => {
      const cells = [
        h("code", {}, override.identifier),
        windows(override.limits),
        ALGORITHM_NAMES[override.algorithm] ?? "as the policy",
        modeBadge(override.mode, "as the policy"),
        moment(override.updated_at),
      ];
      if (admin) {
        const edit = h(
          "button",
          {
            type: "button",
            class: "secondary",
            "aria-label": `Edit the override ${override.identifier}`,
          },
          "Edit",
        );
        edit.addEventListener("click", () => {
          state.editingOverride = override.identifier;
          draw();
          document.getElementById("override-form")?.querySelector("input:not([readonly])")?.focus();
        });
        const remove = h(
          "button",
          {
            type: "button",
            class: "danger",
            "aria-label": `Delete the override ${override.identifier}`,
          },
          "Delete",
        );
        remove.addEventListener("click", () => deleteOverride(policy, override, remove));
        cells.push(h("span", { class: "inline" }, edit, remove));
      }
      return cells;
    });
    const headers = ["Identifier", "Windows", "Algorithm", "Mode", "Updated"];
    const editing = policy.overrides.find((o) => o.identifier === state.editingOverride);
    let form = null;
    if (admin) {
      const made = ruleForm({
        subject: {
          label: "Identifier",
          hint: "The check's key exactly (acct:42), or a prefix ending in * (acct:enterprise-*). " +
            "An exact identifier wins over any prefix, a longer prefix over a shorter one.",
          value: editing?.identifier,
          readonly: Boolean(editing),
          check: checkIdentifier,
        },
        inherit: true,
        initial: editing,
        submitLabel: editing ? "Save the override" : "Add the override",
        onSave: (identifier, body) => saveOverride(policy, identifier, body),
        onCancel: editing
          ? () => {
              state.editingOverride = null;
              draw();
              document.getElementById("override-form")?.querySelector("input")?.focus();
            }
          : null,
      });
      form = h(
        "div",
        { id: "override-form" },
        h("h3", {}, editing ? `Edit the override ${editing.identifier}` : "Add an override"),
        made.element,
      );
    }
    return h(
      "section",
      { class: "card", id: "overrides-card", "aria-labelledby": "overrides-title" },
      h("h2", { id: "overrides-title", tabindex: "-1" }, `Overrides of ${policy.name}`),
      table(
        `Overrides of ${policy.name}`,
        admin ? [...headers, "Actions"] : headers,
        rows,
        "none: every identifier gets the policy's own windows.",
      ),
      form,
    );
  }

  function draw() {
    if (!policies.some((p) => p.name === state.selected)) state.selected = null;
    const headers = ["Name", "Windows", "Algorithm", "Mode", "Overrides"];
    const selected = policies.find((p) => p.name === state.selected);
    content.replaceChildren(
      h(
        "section",
        { class: "card", "aria-labelledby": "policies-title" },
        h("h2", { id: "policies-title", tabindex: "-1" }, "Policies"),
        table(
          "Named policies",
          admin ? [...headers, "Actions"] : headers,
          policies.map(policyRow),
          admin ? "none yet, create one below." : "none yet.",
        ),
      ),
      selected ? overridesCard(selected) : null,
    );
  }

  // the form of a new policy, or of the one being edited; its first field to focus
  function drawForm() {
    const editing = policies.find((p) => p.name === state.editing);
    if (!editing) state.editing = null;
    const made = ruleForm({
      subject: {
        label: "Name",
        hint: "1-64 letters, digits, '_', '.' or '-'. A check names it: " +
          '{"key": "acct:42", "policy": "free"}. Saving an existing name replaces it.',
        value: editing?.name,
        readonly: Boolean(editing),
        check: checkName,
      },
      inherit: false,
      initial: editing,
      submitLabel: editing ? "Save the policy" : "Create the policy",
      onSave: savePolicy,
      onCancel: editing
        ? () => {
            state.editing = null;
            drawForm().focus();
          }
        : null,
    });
    formCard.replaceChildren(
      h(
        "h2",
        { id: "policy-form-title", tabindex: "-1" },
        editing ? `Edit the policy ${editing.name}` : "New policy",
      ),
      made.element,
    );
    return made;
  }

  draw();
  if (admin) drawForm();
  return h(
    "div",
    {},
    live,
    admin ? null : h("p", { class: "hint" }, "Changing policies needs an admin key."),
    h(
      "p",
      { class: "hint" },
      "A policy is a named set of windows a check refers to; every window must allow. ",
      "An override gives some identifiers other windows. Changes are in force on every ",
      "instance within a second.",
    ),
    content,
    admin ? formCard : null,
  );
}
