// Building blocks of the pages: elements made with text nodes only (never HTML from data),
// number and time formats, tables, and the window picker.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

export function count(value) {
  return value === null || value === undefined ? "–" : integer.format(value);
}

export function percent(ratio) {
  return ratio === null || ratio === undefined ? "–" : `${decimal.format(ratio * 100)} %`;
}

// latency arrives in microseconds
export function micros(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? `${decimal.format(value / 1000)} ms` : `${decimal.format(value)} µs`;
}

// epoch seconds, epoch milliseconds or ISO text, shown in the reader's time zone
export function moment(value) {
  if (value === null || value === undefined || value === "") return "–";
  let date;
  if (typeof value === "number") date = new Date(value > 1e12 ? value : value * 1000);
  else date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function until(epochSeconds) {
  const left = Math.round(epochSeconds - Date.now() / 1000);
  if (left <= 0) return "expiring";
  if (left < 120) return `${left} s left`;
  if (left < 7200) return `${Math.round(left / 60)} min left`;
  if (left < 172800) return `${Math.round(left / 3600)} h left`;
  return `${Math.round(left / 86400)} days left`;
}

// a table with a caption and a header row; `rows` are arrays of cells (text or nodes)
export function table(caption, headers, rows, empty = "Nothing yet.") {
  if (!rows.length) return h("p", { class: "empty" }, `${caption}: ${empty}`);
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))),
    ),
  );
}

export const WINDOWS = ["1h", "24h", "7d", "30d"];

// a radio group of the usage API's windows; `onChange` gets the chosen one
export function windowPicker(current, onChange) {
  const name = `window-${Math.random().toString(36).slice(2)}`;
  return h(
    "fieldset",
    { class: "windows" },
    h("legend", {}, "Time window"),
    WINDOWS.map((window) =>
      h(
        "label",
        {},
        h("input", {
          type: "radio",
          name,
          value: window,
          checked: window === current,
          onchange: () => onChange(window),
        }),
        window,
      ),
    ),
  );
}

export function stat(label, value, key) {
  return h("div", { class: "stat" }, h("dt", {}, label), h("dd", { "data-stat": key }, value));
}

export function notice(text, kind = "info") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}
