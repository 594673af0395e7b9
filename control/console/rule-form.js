// The form of a rule, a policy's or an override's: its name or identifier, one to eight
// limit/window rows, the algorithm and the mode.  The server is the one that validates:
// its problem detail is shown next to the form, and the field it names (`$.limits[0].window`)
// is marked and focused.  Only what cannot be sent at all (an empty field) is caught here.

import { h } from "./ui.js";

export const MAX_WINDOWS = 8; // limiter/policies/model.py
export const ALGORITHMS = [
  ["sliding_window", "Sliding window"],
  ["token_bucket", "Token bucket"],
  ["fixed_window", "Fixed window"],
];

let made = 0;

// "12" → 12; anything else is sent as typed, and the API says what is wrong with it
function whole(text) {
  const trimmed = text.trim();
  return /^-?\d+$/.test(trimmed) ? Number(trimmed) : trimmed;
}

function modeChoices(name, inherit, current, describedBy) {
  const choices = [
    ...(inherit ? [["", "As the policy"]] : []),
    ["enforce", "Enforce: deny over the limit"],
    ["shadow", "Shadow: allow, record what it would deny"],
  ];
  const selected = current ?? (inherit ? "" : "enforce");
  return h(
    "fieldset",
    { class: "choices" },
    h("legend", {}, "Mode"),
    choices.map(([value, text]) =>
      h(
        "label",
        {},
        h("input", {
          type: "radio",
          name,
          value,
          checked: value === selected,
          "aria-describedby": describedBy,
        }),
        text,
      ),
    ),
  );
}

/**
 * A form for one rule.
 *   subject: {label, hint, value, readonly, check(value) → message or ""}
 *   inherit: an override's form (algorithm and mode may be left to the policy)
 *   initial: {limits, algorithm, mode} to edit, else one empty row
 *   onSave(subject, body): resolves when saved, throws ApiError with the problem detail
 *   onCancel: shown as a Cancel button when given
 */
export function ruleForm({ subject, inherit, initial, submitLabel, onSave, onCancel }) {
  const id = `rule-${++made}`;
  const errorId = `${id}-error`;
  const error = h("p", { class: "error", role: "alert", id: errorId });
  const subjectInput = h("input", {
    id: `${id}-subject`,
    type: "text",
    class: "text",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    readonly: subject.readonly,
    value: subject.value ?? "",
    "aria-describedby": `${id}-subject-hint ${errorId}`,
  });
  const rows = h("ol", { class: "limit-rows" });
  const addButton = h("button", { type: "button", class: "secondary" }, "Add a window");

  const renumber = () => {
    const items = [...rows.children];
    items.forEach((row, index) => {
      row.querySelector("legend").textContent = `Window ${index + 1}`;
      const remove = row.querySelector("button");
      remove.setAttribute("aria-label", `Remove window ${index + 1}`);
      remove.hidden = items.length === 1;
    });
    addButton.disabled = items.length >= MAX_WINDOWS;
  };

  const addRow = (limit = "", window = "") => {
    const rowId = `${id}-w${++made}`;
    const remove = h("button", { type: "button", class: "secondary" }, "Remove");
    const row = h(
      "li",
      {},
      h(
        "fieldset",
        { class: "limit-row" },
        h("legend", {}),
        h(
          "span",
          { class: "field" },
          h("label", { for: `${rowId}-limit` }, "Limit (requests)"),
          h("input", {
            id: `${rowId}-limit`,
            type: "number",
            class: "number",
            inputmode: "numeric",
            min: "1",
            step: "1",
            "data-field": "limit",
            value: limit,
            "aria-describedby": errorId,
          }),
        ),
        h(
          "span",
          { class: "field" },
          h("label", { for: `${rowId}-window` }, "Window (seconds)"),
          h("input", {
            id: `${rowId}-window`,
            type: "number",
            class: "number",
            inputmode: "numeric",
            min: "1",
            step: "1",
            "data-field": "window",
            value: window,
            "aria-describedby": errorId,
          }),
        ),
        remove,
      ),
    );
    remove.addEventListener("click", () => {
      const next = row.nextElementSibling ?? row.previousElementSibling;
      row.remove();
      renumber();
      next?.querySelector("input")?.focus();
    });
    rows.append(row);
    renumber();
    return row;
  };

  addButton.addEventListener("click", () => addRow().querySelector("input").focus());
  const limits = initial?.limits?.length ? initial.limits : [{ limit: "", window: "" }];
  for (const item of limits) addRow(String(item.limit), String(item.window));

  const algorithm = h(
    "select",
    { id: `${id}-algorithm`, "aria-describedby": errorId },
    h("option", { value: "" }, inherit ? "As the policy" : "The server's default"),
    ALGORITHMS.map(([value, text]) =>
      h("option", { value, selected: value === initial?.algorithm }, text),
    ),
  );
  const mode = modeChoices(`${id}-mode`, inherit, initial?.mode, errorId);
  const save = h("button", { type: "submit" }, submitLabel);
  const cancel = onCancel
    ? h("button", { type: "button", class: "secondary", onclick: onCancel }, "Cancel")
    : null;

  const form = h(
    "form",
    { class: "rule-form", novalidate: true },
    h("label", { for: subjectInput.id }, subject.label),
    subjectInput,
    h("p", { class: "hint", id: `${id}-subject-hint` }, subject.hint),
    h("p", { class: "group-label" }, "Limits"),
    rows,
    addButton,
    h("label", { for: algorithm.id }, "Algorithm"),
    algorithm,
    mode,
    h("div", { class: "actions" }, save, cancel),
    error,
  );

  const fields = () =>
    [...rows.children].map((row) => ({
      limit: row.querySelector("[data-field=limit]"),
      window: row.querySelector("[data-field=window]"),
    }));

  const clear = () => {
    error.textContent = "";
    for (const input of form.querySelectorAll("[aria-invalid]")) {
      input.removeAttribute("aria-invalid");
    }
  };

  // the message next to the form, and the field it names marked and focused
  const fail = (message, field) => {
    error.textContent = message;
    if (field) {
      field.setAttribute("aria-invalid", "true");
      field.focus();
    }
  };

  // the field a problem detail names: `$.limits[1].window`, `$.algorithm`, a name
  const fieldOf = (detail) => {
    const limit = /\$\.limits\[(\d+)\](?:\.(limit|window))?/.exec(detail);
    if (limit) {
      const row = fields()[Number(limit[1])];
      return row ? row[limit[2] ?? "limit"] : null;
    }
    if (detail.includes("$.algorithm")) return algorithm;
    if (detail.includes("$.mode")) return mode.querySelector("input:checked");
    if (/policy name|identifier/.test(detail)) return subjectInput;
    return null;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear();
    const name = subjectInput.value.trim();
    const wrong = name ? subject.check?.(name) : `Enter ${subject.label.toLowerCase()}.`;
    if (wrong) return fail(wrong, subjectInput);
    const rule = [];
    for (const [index, row] of fields().entries()) {
      for (const key of ["limit", "window"]) {
        if (!row[key].value.trim()) {
          const what = key === "limit" ? "its limit (requests)" : "its length in seconds";
          return fail(`Window ${index + 1}: enter ${what}, a whole number.`, row[key]);
        }
      }
      rule.push({ limit: whole(row.limit.value), window: whole(row.window.value) });
    }
    const body = { limits: rule };
    if (algorithm.value) body.algorithm = algorithm.value;
    const chosen = mode.querySelector("input:checked")?.value;
    if (chosen) body.mode = chosen;
    save.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      await onSave(name, body);
    } catch (problem) {
      fail(`Not saved: ${problem.message}`, fieldOf(problem.message));
    } finally {
      save.disabled = false;
      form.setAttribute("aria-busy", "false");
    }
  });

  return {
    element: form,
    focus: () => (subject.readonly ? rows.querySelector("input") : subjectInput).focus(),
  };
}
