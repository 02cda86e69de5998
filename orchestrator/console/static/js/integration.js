// Integrations: the template gallery, the form generated from a template, and the detail page.

import { api, events } from "./api.js";
import { onLeave } from "./app.js";
import { chart, flash, h, render, stateBadge, when } from "./ui.js";

export async function galleryPage(appId) {
  const templates = await api("GET", "/templates");
  const categories = [...new Set(templates.map((template) => template.category))].sort();
  const search = h("input", { type: "search", id: "template-search", placeholder: "Name, platform or description", autocomplete: "off" });
  const category = h("select", { id: "template-category" },
    h("option", { value: "" }, "All categories"), categories.map((name) => h("option", { value: name }, name)));
  const count = h("p", { class: "muted", role: "status", id: "template-count" });
  const tiles = templates.map((template) => [template, templateTile(appId, template)]);
  const grid = h("div", { class: "grid" }, tiles.map(([, tile]) => tile));
  const none = h("p", { class: "muted", hidden: true }, "No template matches. Try another word, or clear the search.");
  function filter() {
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const [template, tile] of tiles) {
      const text = `${template.name} ${template.id} ${template.description} ${template.category}`.toLowerCase();
      const match = words.every((word) => text.includes(word)) && (!category.value || template.category === category.value);
      tile.hidden = !match;
      shown += match ? 1 : 0;
    }
    count.textContent = `${shown} of ${templates.length} templates`;
    none.hidden = shown > 0;
  }
  search.addEventListener("input", filter);
  category.addEventListener("change", filter);
  render(
    h("p", {}, h("a", { href: `#/apps/${appId}` }, `← ${appId}`)),
    h("h1", {}, "Add an integration"),
    h("div", { class: "row filters" },
      h("label", { for: "template-search" }, "Search"), search,
      h("label", { for: "template-category" }, "Category"), category),
    count, none, grid,
  );
  filter();
  search.focus();
}

// A template's logo, or its initial when it has none or the picture does not load (a URL may be gone).
function logo(template) {
  const initial = h("span", { class: "logo initial", "aria-hidden": "true" }, (template.name || "?").slice(0, 1).toUpperCase());
  if (!template.logo) return initial;
  const picture = h("img", { class: "logo", src: template.logo, alt: "", loading: "lazy", referrerpolicy: "no-referrer" });
  picture.addEventListener("error", () => picture.replaceWith(initial));
  return picture;
}

function templateTile(appId, template) {
  return h("article", { class: "card tile", "data-template": template.id },
    h("div", { class: "row" }, logo(template), h("h2", {}, template.name)),
    h("p", {}, template.description),
    h("div", { class: "row" },
      h("a", { class: "button", href: `#/apps/${appId}/add/${template.id}`, "aria-label": `Use ${template.name}` }, "Use"),
      template.documentation_url
        ? h("a", { href: template.documentation_url, target: "_blank", rel: "noopener" }, "Documentation") : null));
}

// One input per template field: masked secrets, defaults filled, help text, a slot for its error.
function fieldInput(field, current, secretSet) {
  const id = `field-${field.id}`;
  const described = `${id}-help`;
  let input;
  const value = current !== undefined ? current : field.default;
  if (field.enum) {
    input = h("select", { id, name: field.id }, field.enum.map((option) => h("option", { value: option, selected: String(option) === String(value) }, option)));
  } else if (field.type === "boolean") {
    input = h("input", { id, name: field.id, type: "checkbox", checked: value === true });
  } else if (field.type === "text" || field.type === "json") {
    const text = field.type === "json" && value !== undefined && value !== null && typeof value !== "string"
      ? JSON.stringify(value, null, 2) : value;
    input = h("textarea", { id, name: field.id, value: field.secret ? "" : text ?? "" });
  } else {
    input = h("input", {
      id, name: field.id,
      type: field.secret ? "password" : field.type === "integer" || field.type === "number" ? "number" : field.type === "url" ? "url" : "text",
      step: field.type === "number" ? "any" : null,
      value: field.secret ? "" : value ?? "",
      autocomplete: field.secret ? "new-password" : "off",
      placeholder: field.secret && secretSet ? "•••••••• saved — leave empty to keep" : field.placeholder,
    });
  }
  if (field.secret && field.type === "text") {
    input.setAttribute("placeholder", secretSet ? "•••••••• saved — leave empty to keep" : "");
    input.classList.add("secret");
  }
  input.setAttribute("aria-describedby", described);
  if (field.required && !(field.secret && secretSet)) input.setAttribute("aria-required", "true");
  const error = h("div", { class: "error", id: `${id}-error`, role: "alert" });
  const wrapper = h("div", { class: "field", "data-field": field.id },
    field.type === "boolean"
      ? h("label", { for: id }, input, " ", field.label)
      : [h("label", { for: id }, field.label, field.required ? " *" : "", field.secret ? " (secret)" : ""), input],
    h("div", { class: "help", id: described }, field.description || ""),
    error);
  return { field, input, error, wrapper };
}

function readValue({ field, input }) {
  if (field.type === "boolean") return input.checked;
  const text = input.value;
  if (text === "") return undefined;
  return text;
}

function showErrors(controls, errors, general) {
  for (const control of controls) {
    control.error.textContent = "";
    control.input.removeAttribute("aria-invalid");
  }
  const unmatched = [];
  for (const error of errors) {
    const name = error.field.replace(/^config\./, "");
    const control = controls.find((c) => c.field.id === name);
    if (control) {
      control.error.textContent = error.message;
      control.input.setAttribute("aria-invalid", "true");
    } else unmatched.push(`${error.field}: ${error.message}`);
  }
  general.textContent = unmatched.join("; ");
  const first = controls.find((c) => c.input.getAttribute("aria-invalid"));
  first?.input.focus();
}

async function integrationForm(appId, template, existing) {
  const controls = template.fields.map((field) => fieldInput(field, existing?.config[field.id],
    existing?.secrets_set.includes(field.id)));
  const idInput = h("input", { id: "integration-id", type: "text", value: existing?.id, disabled: Boolean(existing), placeholder: "optional" });
  const nameInput = h("input", { id: "integration-name", type: "text", value: existing?.name ?? template.name });
  const general = h("p", { class: "error-text", role: "alert" });
  const basic = controls.filter((c) => !c.field.advanced);
  const advanced = controls.filter((c) => c.field.advanced);
  const form = h("form", {
    class: "card", novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      const config = {};
      for (const control of controls) {
        const value = readValue(control);
        if (value !== undefined) config[control.field.id] = value;
        else if (existing && !control.field.secret && existing.config[control.field.id] !== undefined) config[control.field.id] = null;
      }
      try {
        let saved;
        if (existing) {
          saved = await api("PATCH", `/applications/${appId}/integrations/${existing.id}`, { name: nameInput.value, config });
        } else {
          const body = { template_id: template.id, name: nameInput.value, config };
          if (idInput.value.trim()) body.id = idInput.value.trim();
          saved = await api("POST", `/applications/${appId}/integrations`, body);
        }
        flash(`Integration ${saved.id} saved.`);
        location.hash = `#/apps/${appId}/integrations/${saved.id}`;
      } catch (err) {
        if (err.errors.length) showErrors(controls, err.errors, general);
        else general.textContent = err.message;
      }
    },
  },
  h("div", { class: "grid" },
    h("div", { class: "field" }, h("label", { for: "integration-id" }, "Id"), idInput),
    h("div", { class: "field" }, h("label", { for: "integration-name" }, "Name"), nameInput)),
  basic.map((c) => c.wrapper),
  advanced.length ? h("details", {}, h("summary", {}, "Advanced settings"), advanced.map((c) => c.wrapper)) : null,
  general,
  h("div", { class: "row" },
    h("button", { type: "submit" }, existing ? "Save changes" : "Create integration"),
    h("a", { class: "button secondary", href: existing ? `#/apps/${appId}/integrations/${existing.id}` : `#/apps/${appId}/gallery` }, "Cancel")));
  return form;
}

export async function addIntegrationPage(appId, templateId) {
  const template = await api("GET", `/templates/${templateId}`);
  render(
    h("p", {}, h("a", { href: `#/apps/${appId}/gallery` }, "← Gallery")),
    h("h1", {}, `New ${template.name} integration`),
    h("p", { class: "muted" }, template.description),
    await integrationForm(appId, template, null),
  );
}

export async function editIntegrationPage(appId, integrationId) {
  const integration = await api("GET", `/applications/${appId}/integrations/${integrationId}`);
  const template = await api("GET", `/templates/${integration.template_id}`);
  render(
    h("p", {}, h("a", { href: `#/apps/${appId}/integrations/${integrationId}` }, `← ${integration.name}`)),
    h("h1", {}, `Edit ${integration.name}`),
    h("p", { class: "muted" }, "Saving replaces the worker with one running the new configuration. Secrets are never shown; leave them empty to keep them."),
    await integrationForm(appId, template, integration),
  );
}

function activityList(items) {
  if (!items.length) return h("p", { class: "muted" }, "Nothing yet.");
  return h("div", {}, items.map((item) => {
    const request = item.details.request;
    const response = item.details.response;
    return h("details", { class: "event-item", "data-kind": item.kind },
      h("summary", {}, h("span", { class: `badge ${item.kind === "delivery" ? "state-running" : item.kind === "retry" ? "state-starting" : "state-failed"}` }, item.kind),
        " ", item.message, " ", h("span", { class: "muted small" }, when(item.at))),
      request ? h("div", {}, h("strong", {}, "Request "), `${request.method || ""} ${request.url || ""}`, request.body ? h("pre", {}, request.body) : null) : null,
      response ? h("div", {}, h("strong", {}, "Response "), `HTTP ${response.status}`, response.body ? h("pre", {}, response.body) : null) : null,
      h("pre", {}, JSON.stringify(item.details, null, 2)));
  }));
}

function deadLetterList(page, act) {
  if (!page.items.length) return h("p", { class: "muted" }, "None: nothing failed for good.");
  return h("div", {},
    h("div", { class: "row" },
      h("span", { class: "muted small" }, `${page.total} kept`),
      h("button", { type: "button", onclick: () => act("replay", { all: true }) }, "Replay all"),
      h("button", { type: "button", class: "danger", onclick: () => act("delete", { all: true }) }, "Delete all")),
    page.items.map((letter) => h("details", { class: "event-item dead-letter", "data-letter": String(letter.id) },
      h("summary", {}, h("span", { class: "badge state-failed" }, letter.event), " ", letter.device_id || "", " ",
        letter.error, " ", h("span", { class: "muted small" }, `${when(letter.at)}, ${letter.attempts} attempt(s)`)),
      h("div", { class: "row" },
        h("button", { type: "button", onclick: () => act("replay", { ids: [letter.id] }) }, "Replay"),
        h("button", { type: "button", class: "secondary", onclick: () => act("delete", { ids: [letter.id] }) }, "Delete")),
      h("strong", {}, "Message"), h("pre", {}, typeof letter.message === "string" ? letter.message : JSON.stringify(letter.message, null, 2)),
      h("strong", {}, "Request and answer"), h("pre", {}, JSON.stringify(letter.details, null, 2)))));
}

export async function integrationPage(appId, integrationId) {
  const base = `/applications/${appId}/integrations/${integrationId}`;
  let integration = await api("GET", base);
  const status = h("div", { "aria-live": "polite" });
  const counters = h("div", {});
  const graph = h("div", {});
  const activity = h("div", {});
  const deadLetters = h("div", {});
  const log = h("div", { class: "log", role: "log", "aria-label": "Worker log", tabindex: "0" });
  const testResult = h("div", { role: "status", "aria-live": "polite" });
  const toggle = h("button", { type: "button", class: "secondary" });

  const showStatus = () => {
    const s = integration.status;
    toggle.textContent = integration.enabled ? "Disable" : "Enable";
    status.replaceChildren(h("dl", { class: "kv" },
      h("dt", {}, "State"), h("dd", {}, stateBadge(s.actual), s.desired !== s.actual ? h("span", { class: "muted small" }, ` wanted: ${s.desired}`) : ""),
      h("dt", {}, "Since"), h("dd", {}, when(s.since)),
      h("dt", {}, "Last error"), h("dd", { class: s.last_error ? "error-text" : "" }, s.last_error ? `${s.last_error} (${when(s.last_error_at)})` : "none"),
      h("dt", {}, "Restarts"), h("dd", {}, String(s.restart_count)),
      h("dt", {}, "Runtime"), h("dd", {}, s.runtime || "—", s.handle ? h("span", { class: "muted small" }, ` ${JSON.stringify(s.handle)}`) : ""),
      h("dt", {}, "Template"), h("dd", {}, `${integration.template_id} ${integration.template_version}`),
    ));
    const c = integration.counters;
    counters.replaceChildren(h("dl", { class: "kv" },
      h("dt", {}, "Delivered"), h("dd", { "data-counter": "delivered" }, String(c.delivered)),
      h("dt", {}, "Failed"), h("dd", { "data-counter": "failed" }, String(c.failed)),
      h("dt", {}, "Retried"), h("dd", { "data-counter": "retried" }, String(c.retried)),
      h("dt", {}, "Dead letters"), h("dd", { "data-counter": "dead_lettered" }, String(c.dead_lettered)),
      h("dt", {}, "Last delivery"), h("dd", {}, when(c.last_delivery_at))));
  };
  const refresh = async () => {
    const before = integration.counters;
    integration = await api("GET", base);
    showStatus();
    if (before.delivered !== integration.counters.delivered || before.failed !== integration.counters.failed) {
      await refreshChart();
    }
  };
  const refreshActivity = async () => activity.replaceChildren(activityList(await api("GET", `${base}/activity?limit=30`)));
  const refreshDeadLetters = async () => deadLetters.replaceChildren(deadLetterList(await api("GET", `${base}/dead-letters?limit=50`), async (what, selection) => {
    if (what === "delete" && !confirm("Delete these dead letters? Their messages are gone for good.")) return;
    const outcome = await api("POST", `${base}/dead-letters/${what}`, selection);
    flash(`${outcome.count} dead letter(s) ${what === "replay" ? "sent again" : "deleted"}.`);
    await refreshDeadLetters();
  }));
  const refreshChart = async () => {
    const stats = await api("GET", `${base}/stats?hours=6`);
    graph.replaceChildren(chart(stats.minutes, 6), h("p", { class: "muted small" }, "Deliveries per minute, last 6 hours (green delivered, red failed)."));
  };

  toggle.addEventListener("click", async () => {
    integration = await api("POST", `${base}/${integration.enabled ? "disable" : "enable"}`);
    flash(`Integration ${integrationId} ${integration.enabled ? "enabled" : "disabled"}.`);
    showStatus();
  });
  const config = Object.entries(integration.config).map(([key, value]) => [key, typeof value === "string" ? value : JSON.stringify(value)]);
  render(
    h("p", {}, h("a", { href: `#/apps/${appId}` }, `← ${appId}`)),
    h("div", { class: "row spread" }, h("h1", {}, integration.name, " ", h("span", { class: "muted small" }, integrationId)),
      h("div", { class: "row" },
        h("button", { type: "button", onclick: () => runTest(base, testResult, refreshActivity) }, "Test"),
        toggle,
        h("button", { type: "button", class: "secondary", onclick: async () => { integration = await api("POST", `${base}/restart`); flash("Restarted."); showStatus(); } }, "Restart"),
        h("a", { class: "button secondary", href: `#/apps/${appId}/integrations/${integrationId}/edit` }, "Edit"),
        h("button", {
          type: "button", class: "danger",
          onclick: async () => {
            if (!confirm(`Delete integration ${integrationId}? Its worker stops and its configuration is gone.`)) return;
            await api("DELETE", base);
            flash(`Integration ${integrationId} deleted.`);
            location.hash = `#/apps/${appId}`;
          },
        }, "Delete"))),
    testResult,
    h("div", { class: "grid" }, h("section", { class: "card" }, h("h2", {}, "Status"), status),
      h("section", { class: "card" }, h("h2", {}, "Counters"), counters, graph)),
    h("section", { class: "card" }, h("h2", {}, "Configuration"), h("dl", { class: "kv" },
      config.map(([key, value]) => [h("dt", {}, key), h("dd", {}, value)]),
      integration.secrets_set.map((key) => [h("dt", {}, key), h("dd", {}, "•••••••• (secret, set)")]))),
    h("section", { class: "card" }, h("h2", {}, "Recent deliveries and errors"), activity),
    h("section", { class: "card", id: "dead-letters" }, h("h2", {}, "Dead letters"),
      h("p", { class: "muted small" }, "Messages that failed for good, kept in full: replay them once the target is fixed."), deadLetters),
    h("section", { class: "card" }, h("h2", {}, "Live log"), log),
  );
  showStatus();
  await Promise.all([refreshActivity(), refreshChart(), refreshDeadLetters()]);
  const timers = [setInterval(() => refresh().catch(() => {}), 2000), setInterval(() => refreshActivity().catch(() => {}), 5000),
    setInterval(() => refreshDeadLetters().catch(() => {}), 5000),
    setInterval(() => refreshChart().catch(() => {}), 30000)];
  const controller = new AbortController();
  onLeave(() => { timers.forEach(clearInterval); controller.abort(); });
  (async () => {
    for await (const line of events(`${base}/logs?follow=true&tail=100`, controller.signal)) {
      log.append(line.data + "\n");
      while (log.childNodes.length > 1000) log.firstChild.remove();
      log.scrollTop = log.scrollHeight;
    }
  })();
}

async function runTest(base, slot, after) {
  slot.replaceChildren(h("div", { class: "card" }, "Sending a sample message through this integration…"));
  try {
    const result = await api("POST", `${base}/test`, {});
    const details = result.event?.details || {};
    slot.replaceChildren(h("div", { class: "card", "data-test-outcome": result.outcome },
      h("h2", {}, result.outcome === "delivered" ? "Test delivered" : result.outcome === "failed" ? "Test failed" : "No answer"),
      h("p", { class: result.outcome === "delivered" ? "" : "error-text" }, result.message),
      details.request ? h("div", {}, h("strong", {}, "Request "), `${details.request.method} ${details.request.url}`, h("pre", {}, details.request.body || "")) : null,
      details.response ? h("div", {}, h("strong", {}, "Response "), `HTTP ${details.response.status}`, h("pre", {}, details.response.body || "")) : null,
      h("details", {}, h("summary", {}, "Sample message"), h("pre", {}, JSON.stringify(result.uplink, null, 2)))));
    after();
  } catch (err) {
    slot.replaceChildren(h("div", { class: "card", "data-test-outcome": "error" }, h("p", { class: "error-text" }, err.message)));
  }
}
