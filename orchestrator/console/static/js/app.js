// The console's entry point: a hash router, sign-in, and the applications page.

import { api, setToken, token } from "./api.js";
import { applicationPage } from "./application.js";
import { addIntegrationPage, editIntegrationPage, galleryPage, integrationPage } from "./integration.js";
import { flash, h, render, when } from "./ui.js";

// Pages clean up (timers, streams) when the route changes.
let cleanups = [];
export function onLeave(cleanup) {
  cleanups.push(cleanup);
}

const routes = [
  [/^#\/login$/, loginPage],
  [/^#\/apps$/, applicationsPage],
  [/^#\/apps\/([^/]+)\/gallery$/, galleryPage],
  [/^#\/apps\/([^/]+)\/add\/([^/]+)$/, addIntegrationPage],
  [/^#\/apps\/([^/]+)\/integrations\/([^/]+)\/edit$/, editIntegrationPage],
  [/^#\/apps\/([^/]+)\/integrations\/([^/]+)$/, integrationPage],
  [/^#\/apps\/([^/]+)(?:\/(integrations|devices|events))?$/, applicationPage],
];

async function route() {
  for (const cleanup of cleanups) cleanup();
  cleanups = [];
  const hash = location.hash || "#/apps";
  if (!token() && hash !== "#/login") {
    location.hash = "#/login";
    return;
  }
  renderNav();
  for (const [pattern, page] of routes) {
    const match = hash.match(pattern);
    if (match) {
      try {
        await page(...match.slice(1).map((part) => (part ? decodeURIComponent(part) : part)));
      } catch (error) {
        render(h("div", { class: "card" }, h("h1", {}, "Something went wrong"), h("p", { class: "error-text" }, error.message)));
      }
      document.getElementById("main").focus();
      return;
    }
  }
  render(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/apps" }, "Back to applications")));
}

function renderNav() {
  const nav = document.getElementById("nav");
  if (!token()) {
    nav.replaceChildren();
    return;
  }
  nav.replaceChildren(
    h("a", { href: "#/apps" }, "Applications"),
    h("a", { href: "/docs", target: "_blank", rel: "noopener" }, "API docs"),
    h("button", { class: "secondary", type: "button", onclick: () => { setToken(null); location.hash = "#/login"; } }, "Sign out"),
  );
}

function loginPage() {
  const input = h("input", { id: "token", type: "password", autocomplete: "current-password", required: true });
  const error = h("p", { class: "error-text", role: "alert" });
  const form = h("form", {
    class: "card",
    onsubmit: async (event) => {
      event.preventDefault();
      setToken(input.value.trim());
      try {
        await api("GET", "/applications");
        location.hash = "#/apps";
      } catch (err) {
        setToken(null);
        error.textContent = err.status === 401 ? "That token is not valid." : `Cannot sign in: ${err.message}`;
      }
    },
  },
  h("h1", {}, "Sign in"),
  h("div", { class: "field" },
    h("label", { for: "token" }, "API token"),
    input,
    h("div", { class: "help" }, "The admin token (in .orchestrator/admin.token) or an application key (ik.…).")),
  error,
  h("button", { type: "submit" }, "Sign in"));
  render(form);
}

async function applicationsPage() {
  const applications = await api("GET", "/applications");
  const id = h("input", { id: "app-id", type: "text", required: true, placeholder: "greenhouse" });
  const name = h("input", { id: "app-name", type: "text", placeholder: "Greenhouse sensors" });
  const error = h("p", { class: "error-text", role: "alert" });
  const form = h("form", {
    class: "card",
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api("POST", "/applications", { id: id.value.trim(), name: name.value.trim() });
        flash(`Application ${id.value} created.`);
        location.hash = `#/apps/${encodeURIComponent(id.value.trim())}`;
      } catch (err) {
        error.textContent = err.errors.length ? err.errors.map((e) => `${e.field}: ${e.message}`).join("; ") : err.message;
      }
    },
  },
  h("h2", {}, "New application"),
  h("div", { class: "row" },
    h("div", { class: "field" }, h("label", { for: "app-id" }, "Id"), id),
    h("div", { class: "field" }, h("label", { for: "app-name" }, "Name"), name)),
  error,
  h("button", { type: "submit" }, "Create application"));
  render(
    h("h1", {}, "Applications"),
    applications.length
      ? h("div", { class: "grid" }, applications.map((app) => h("a", { class: "card tile", href: `#/apps/${app.id}` },
        h("strong", {}, app.name || app.id), h("span", { class: "muted small" }, app.id),
        h("span", { class: "muted small" }, `created ${when(app.created_at)}`))))
      : h("p", { class: "muted" }, "No applications yet."),
    form,
  );
}

window.addEventListener("hashchange", route);
route();
