// Small DOM helpers: build elements, show messages, format values.

// h("button", {class: "x", onclick}, "text", child, ...) -> element. Text is always text, never HTML.
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "value") element.value = value;
    else if (name === "checked") element.checked = Boolean(value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function render(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children);
}

export function flash(message, kind = "ok") {
  const box = document.getElementById("flash");
  box.replaceChildren(h("div", { class: `flash-${kind}` }, message));
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => box.replaceChildren(), 6000);
}

export function when(value) {
  if (!value) return "—";
  const date = new Date(value);
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  const ago = seconds < 60 ? `${seconds} s` : seconds < 3600 ? `${Math.round(seconds / 60)} min`
    : seconds < 86400 ? `${Math.round(seconds / 3600)} h` : `${Math.round(seconds / 86400)} d`;
  return `${date.toLocaleString()} (${ago} ago)`;
}

export function stateBadge(state) {
  return h("span", { class: `badge state-${state}`, "data-state": state }, state);
}

// A tiny bar chart of per-minute counts (delivered up, failed down), as inline SVG.
export function chart(minutes, hours) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 600 140");
  svg.setAttribute("role", "img");
  const total = minutes.reduce((sum, m) => sum + m.delivered, 0);
  const failed = minutes.reduce((sum, m) => sum + m.failed, 0);
  svg.setAttribute("aria-label", `Last ${hours} hours: ${total} delivered, ${failed} failed`);
  const start = Date.now() - hours * 3600 * 1000;
  const peak = Math.max(1, ...minutes.map((m) => Math.max(m.delivered, m.failed)));
  for (const m of minutes) {
    const x = ((new Date(m.minute).getTime() - start) / (hours * 3600 * 1000)) * 600;
    for (const [value, color, up] of [[m.delivered, "#15803d", true], [m.failed, "#b91c1c", false]]) {
      if (!value) continue;
      const height = (value / peak) * 60;
      const bar = document.createElementNS(ns, "rect");
      bar.setAttribute("x", String(Math.max(0, x - 1)));
      bar.setAttribute("width", "2");
      bar.setAttribute("y", String(up ? 70 - height : 70));
      bar.setAttribute("height", String(height));
      bar.setAttribute("fill", color);
      svg.append(bar);
    }
  }
  const axis = document.createElementNS(ns, "line");
  for (const [k, v] of [["x1", 0], ["x2", 600], ["y1", 70], ["y2", 70], ["stroke", "#94a3b8"]]) axis.setAttribute(k, v);
  svg.append(axis);
  return svg;
}

// Previous/Next for a paged API list ("51–100 of 523"); `go(offset)` loads another page.
export function pager(pageSize, go) {
  let offset = 0;
  const shown = h("span", { class: "muted small", "aria-live": "polite" });
  const previous = h("button", { type: "button", class: "secondary", onclick: () => go(Math.max(0, offset - pageSize)) }, "Previous");
  const next = h("button", { type: "button", class: "secondary", onclick: () => go(offset + pageSize) }, "Next");
  return {
    element: h("div", { class: "pager" }, shown, previous, next),
    show(page) {
      offset = page.offset;
      shown.textContent = page.total ? `${page.offset + 1}–${page.offset + page.items.length} of ${page.total}` : "";
      previous.disabled = page.offset === 0;
      next.disabled = page.offset + page.items.length >= page.total;
    },
  };
}
