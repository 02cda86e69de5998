// One application: its integrations (live status), its devices, and its live event stream.

import { api, events } from "./api.js";
import { onLeave } from "./app.js";
import { flash, h, pager, render, stateBadge, when } from "./ui.js";

export async function applicationPage(appId, tab = "integrations") {
  const application = await api("GET", `/applications/${appId}`);
  const tabs = h("nav", { class: "tabs", "aria-label": "Application" },
    ["integrations", "devices", "events"].map((name) => h("a", {
      href: `#/apps/${appId}/${name}`, "aria-current": name === tab ? "page" : null,
    }, name[0].toUpperCase() + name.slice(1))));
  const body = h("section", {});
  render(h("h1", {}, application.name || application.id, " ", h("span", { class: "muted small" }, application.id)), tabs, body);
  if (tab === "devices") await devicesTab(appId, body);
  else if (tab === "events") eventsTab(appId, body);
  else await integrationsTab(appId, body);
}

const PAGE_SIZE = 50;
const STATES = ["running", "starting", "failed", "stopped", "pending"];

async function integrationsTab(appId, body) {
  const table = h("tbody", {});
  const state = h("select", { id: "state-filter" },
    h("option", { value: "" }, "All states"), ...STATES.map((name) => h("option", { value: name }, name)));
  let offset = 0;
  const pages = pager(PAGE_SIZE, (to) => { offset = to; refresh().catch(() => {}); });
  const refresh = async () => {
    const filter = state.value ? `&state=${state.value}` : "";
    const page = await api("GET", `/applications/${appId}/integrations?limit=${PAGE_SIZE}&offset=${offset}${filter}`);
    if (!page.items.length && offset > 0) {  // the last page emptied meanwhile: step back
      offset = Math.max(0, offset - PAGE_SIZE);
      return refresh();
    }
    const empty = state.value ? `No ${state.value} integrations.` : "No integrations yet: add one from the gallery.";
    table.replaceChildren(...(page.items.length ? page.items.map((item) => h("tr", { "data-integration": item.id },
      h("td", {}, h("a", { href: `#/apps/${appId}/integrations/${item.id}` }, item.name), h("div", { class: "muted small" }, item.id)),
      h("td", {}, item.template_id),
      h("td", {}, stateBadge(item.status.actual), item.enabled ? "" : h("div", { class: "muted small" }, "disabled")),
      h("td", {}, `${item.counters.delivered} delivered`, h("div", { class: "muted small" },
        `${item.counters.failed} failed · ${item.counters.retried} retried`)),
      h("td", { class: "small" }, item.status.last_error ? h("span", { class: "error-text" }, item.status.last_error.slice(0, 120)) : "—"),
    )) : [h("tr", {}, h("td", { colspan: 5, class: "muted" }, empty))]));
    pages.show(page);
  };
  state.addEventListener("change", () => { offset = 0; refresh().catch(() => {}); });
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 2000);
  onLeave(() => clearInterval(timer));
  body.replaceChildren(
    h("div", { class: "row spread" }, h("h2", {}, "Integrations"), h("a", { class: "button", href: `#/apps/${appId}/gallery` }, "Add integration")),
    h("div", { class: "row filters" }, h("label", { for: "state-filter" }, "Show"), state, pages.element),
    h("div", { class: "card table-wrap" }, h("table", { "aria-label": "Integrations", "aria-live": "polite" },
      h("thead", {}, h("tr", {}, ["Name", "Template", "State", "Deliveries", "Last error"].map((t) => h("th", { scope: "col" }, t)))),
      table)),
  );
}

function deviceForm(appId, device, done) {
  const editing = Boolean(device);
  const fields = {
    device_id: h("input", { id: "dev-id", type: "text", required: true, value: device?.device_id, disabled: editing }),
    name: h("input", { id: "dev-name", type: "text", value: device?.name }),
    dev_eui: h("input", { id: "dev-eui", type: "text", value: device?.dev_eui, placeholder: "0004A30B001C0530" }),
    attributes: h("textarea", { id: "dev-attributes", value: JSON.stringify(device?.attributes || {}, null, 1) }),
  };
  const error = h("p", { class: "error-text", role: "alert" });
  return h("form", {
    class: "card",
    onsubmit: async (event) => {
      event.preventDefault();
      let attributes;
      try {
        attributes = JSON.parse(fields.attributes.value || "{}");
      } catch {
        error.textContent = "Attributes must be a JSON object, like {\"room\": \"lab\"}.";
        return;
      }
      const data = { name: fields.name.value, dev_eui: fields.dev_eui.value || null, attributes };
      try {
        if (editing) await api("PATCH", `/applications/${appId}/devices/${device.device_id}`, data);
        else await api("POST", `/applications/${appId}/devices`, { device_id: fields.device_id.value.trim(), ...data });
        flash(`Device ${editing ? device.device_id : fields.device_id.value} saved.`);
        done();
      } catch (err) {
        error.textContent = err.errors.length ? err.errors.map((e) => `${e.field}: ${e.message}`).join("; ") : err.message;
      }
    },
  },
  h("h2", {}, editing ? `Edit ${device.device_id}` : "Add a device"),
  h("div", { class: "grid" },
    h("div", { class: "field" }, h("label", { for: "dev-id" }, "Device id"), fields.device_id),
    h("div", { class: "field" }, h("label", { for: "dev-name" }, "Name"), fields.name),
    h("div", { class: "field" }, h("label", { for: "dev-eui" }, "DevEUI"), fields.dev_eui)),
  h("div", { class: "field" }, h("label", { for: "dev-attributes" }, "Attributes (JSON)"), fields.attributes),
  error,
  h("div", { class: "row" }, h("button", { type: "submit" }, "Save device"),
    editing ? h("button", { type: "button", class: "secondary", onclick: done }, "Cancel") : null));
}

async function devicesTab(appId, body, offset = 0) {
  const page = await api("GET", `/applications/${appId}/devices?limit=${PAGE_SIZE}&offset=${offset}`);
  if (!page.items.length && offset > 0) return devicesTab(appId, body, Math.max(0, offset - PAGE_SIZE));
  const reload = () => devicesTab(appId, body, offset);
  const pages = pager(PAGE_SIZE, (to) => devicesTab(appId, body, to));
  pages.show(page);
  const formSlot = h("div", {}, deviceForm(appId, null, reload));
  body.replaceChildren(
    h("div", { class: "row spread" }, h("h2", {}, `Devices (${page.total})`), pages.element),
    h("div", { class: "card table-wrap" }, h("table", { "aria-label": "Devices" },
      h("thead", {}, h("tr", {}, ["Id", "Name", "DevEUI", "Attributes", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, page.items.map((device) => h("tr", { "data-device": device.device_id },
        h("td", {}, device.device_id), h("td", {}, device.name || "—"), h("td", {}, device.dev_eui || "—"),
        h("td", { class: "small" }, Object.entries(device.attributes).map(([k, v]) => `${k}=${v}`).join(", ") || "—"),
        h("td", {}, h("div", { class: "row" },
          h("button", { type: "button", class: "secondary", onclick: () => formSlot.replaceChildren(deviceForm(appId, device, reload)) }, "Edit"),
          h("button", {
            type: "button", class: "danger",
            onclick: async () => {
              if (!confirm(`Delete device ${device.device_id}?`)) return;
              await api("DELETE", `/applications/${appId}/devices/${device.device_id}`);
              flash(`Device ${device.device_id} deleted.`);
              reload();
            },
          }, "Delete")))))))),
    formSlot,
  );
}

function eventsTab(appId, body) {
  const list = h("div", { "aria-live": "polite", "aria-label": "Events" });
  const prefix = h("input", { id: "prefix", type: "text", placeholder: "uplink, downlink., device., integration." });
  const older = h("button", { type: "button", id: "older-events", onclick: () => loadOlder() }, "Older events");
  let controller = null;
  let oldest = null; // the smallest log id shown: "Older events" pages back from it
  const item = (name, id, text) => {
    let data = text;
    try { data = JSON.stringify(JSON.parse(text), null, 2); } catch { /* shown as is */ }
    const summary = h("summary", {}, h("strong", {}, name), " ", h("span", { class: "muted small" }, describe({ data: text })));
    if (id && (oldest === null || Number(id) < oldest)) oldest = Number(id);
    return h("details", { class: "event-item", "data-event": name, "data-id": id }, summary, h("pre", {}, data));
  };
  const start = () => {
    controller?.abort();
    controller = new AbortController();
    list.replaceChildren();
    oldest = null;
    older.disabled = false;
    older.textContent = "Older events";
    const query = `?replay=true&prefix=${encodeURIComponent(prefix.value.trim())}`;
    (async () => {
      for await (const event of events(`/applications/${appId}/events${query}`, controller.signal)) {
        list.prepend(item(event.event, event.id, event.data));
      }
    })();
  };
  // The log keeps what the stream showed before: page back through it, 50 at a time.
  const loadOlder = async () => {
    const params = new URLSearchParams({ limit: "50", type: prefix.value.trim() });
    if (oldest !== null) params.set("before_id", String(oldest));
    const page = await api("GET", `/applications/${appId}/events/history?${params}`);
    for (const event of page.items) list.append(item(event.name, String(event.id), JSON.stringify(event.data)));
    if (!page.more) {
      older.disabled = true;
      older.textContent = "No older events";
    }
  };
  onLeave(() => controller?.abort());
  body.replaceChildren(
    h("h2", {}, "Events"),
    h("form", { class: "row", onsubmit: (event) => { event.preventDefault(); start(); } },
      h("label", { for: "prefix" }, "Filter by name prefix"), prefix, h("button", { type: "submit" }, "Apply")),
    h("p", { class: "muted small" }, "Live, newest first; every event is kept in the log, so the stream resumes where it "
      + "left off after a network drop or a restart, and older events are a click away."),
    h("div", { class: "card" }, list, h("div", { class: "row" }, older)),
  );
  start();
}

function describe(event) {
  try {
    const data = JSON.parse(event.data);
    const device = data.end_device_ids?.device_id;
    const integration = data.integration_id;
    const at = data.received_at || data.time;
    return [device && `device ${device}`, integration && `integration ${integration}`, data.message, at && new Date(at).toLocaleTimeString()]
      .filter(Boolean).join(" · ");
  } catch {
    return "";
  }
}
