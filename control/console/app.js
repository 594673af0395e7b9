// The console's shell: sign-in (from the form or the address's #key= fragment), the page
// router (#/overview, #/segments, #/policies, #/security, #/webhooks) and sign-out.

import { ApiError, forgetKey, storedKey, storeKey, whoAmI } from "./api.js";
import * as overview from "./pages/overview.js";
import * as policies from "./pages/policies.js";
import * as security from "./pages/security.js";
import * as segments from "./pages/segments.js";
import * as webhooks from "./pages/webhooks.js";
import { h, notice } from "./ui.js";

const PAGES = { overview, segments, policies, security, webhooks };
const DEFAULT_PAGE = "overview";
const $ = (id) => document.getElementById(id);

const session = { admin: false, states: {} };

// A key handed over in the address (#key=…, for scripts) is taken into the tab's storage
// and removed from the address bar and the history at once.
function takeKeyFromAddress() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const key = fragment.get("key");
  if (key === null) return;
  const page = fragment.get("page");
  history.replaceState(null, "", `${location.pathname}${location.search}#/${page || DEFAULT_PAGE}`);
  if (key) storeKey(key);
}

function currentPage() {
  const name = location.hash.replace(/^#\//, "");
  return Object.hasOwn(PAGES, name) ? name : DEFAULT_PAGE;
}

function showSignIn(message = "") {
  $("nav").hidden = true;
  $("who").hidden = true;
  $("page").hidden = true;
  $("page").replaceChildren();
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("api-key").setAttribute("aria-invalid", message ? "true" : "false");
  $("api-key").focus();
}

async function signIn(key) {
  try {
    session.admin = (await whoAmI(key)).admin;
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      forgetKey();
      showSignIn(`That API key was refused: ${error.message}`);
    } else {
      showSignIn(`Could not sign in: ${error.message}`);
    }
    return false;
  }
  storeKey(key);
  $("sign-in").hidden = true;
  $("api-key").value = "";
  $("nav").hidden = false;
  $("who").hidden = false;
  $("role").textContent = session.admin ? "Admin key" : "Read-only key";
  return true;
}

function signOut() {
  forgetKey();
  session.admin = false;
  session.states = {};
  history.replaceState(null, "", `${location.pathname}${location.search}`);
  showSignIn();
}

let rendering = 0;

async function render({ focus }) {
  if (!storedKey()) return showSignIn();
  const name = currentPage();
  const page = PAGES[name];
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page.title} · RateWatch console`;
  const container = $("page");
  container.hidden = false;
  const heading = h("h1", { tabindex: "-1", id: "page-title" }, page.title);
  const status = h("p", { class: "updated", role: "status" }, "Loading…");
  const refresh = h("button", { type: "button", id: "refresh" }, "Refresh");
  refresh.addEventListener("click", () => render({ focus: false }));
  const body = h("div", { class: "page-body", "aria-busy": "true" });
  if (focus || !container.firstChild) {
    container.replaceChildren(h("div", { class: "page-head" }, heading, refresh), status, body);
    if (focus) heading.focus();
  } else {
    container.querySelector(".page-body")?.setAttribute("aria-busy", "true");
    container.querySelector(".updated").textContent = "Refreshing…";
  }
  const ticket = ++rendering;
  const state = (session.states[name] ??= {});
  let content;
  try {
    content = await page.render({
      admin: session.admin,
      state,
      refresh: () => render({ focus: false }),
    });
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      forgetKey();
      return showSignIn(`Signed out: ${error.message}`);
    }
    content = notice(`Could not load this page: ${error.message}`, "error");
  }
  const current = container.querySelector(".page-body");
  // a later render took over, or the reader signed out while this one was loading
  if (ticket !== rendering || !current) return;
  current.replaceChildren(content);
  current.setAttribute("aria-busy", "false");
  container.querySelector(".updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

function start() {
  takeKeyFromAddress();
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return showSignIn("Enter an API key.");
    if (await signIn(key)) {
      if (!location.hash.startsWith("#/")) history.replaceState(null, "", `#/${DEFAULT_PAGE}`);
      render({ focus: true });
    }
  });
  $("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", () => {
    if (location.hash.startsWith("#key=")) {
      takeKeyFromAddress();
      boot();
      return;
    }
    if (storedKey()) render({ focus: true });
  });
  boot();
}

async function boot() {
  const key = storedKey();
  if (!key) return showSignIn();
  if (await signIn(key)) render({ focus: false });
}

start();
