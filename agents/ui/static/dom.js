// Building DOM without HTML strings: API values (team names are free text) are never parsed
// as markup.

/** el("td", {class: "num", data: {key: "total"}, title: "…"}, child, "text", …) */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "data") Object.assign(node.dataset, value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

/** A titled panel. */
export function panel(title, ...children) {
  return el("section", { class: "panel" }, title ? el("h2", { text: title }) : null, ...children);
}

/** A labelled <select> of [value, text] options. */
export function select(label, name, options, chosen) {
  const box = el("select", { name });
  for (const [value, text] of options) {
    box.append(el("option", { value, text, selected: value === chosen }));
  }
  return [el("label", {}, label, box), box];
}

/** A labelled text input with suggestions (the API accepts more than any fixed list). */
export function suggest(label, name, options, chosen) {
  const id = `${name}-choices`;
  const input = el("input", { name, value: chosen, list: id, spellcheck: "false",
                              autocomplete: "off" });
  const list = el("datalist", { id }, ...options.map(([value, text]) => el("option",
    { value, label: text })));
  return [el("label", {}, label, input, list), input];
}

/** A status badge (OK, WARNING, CRITICAL, or an alert's severity). */
export function badge(text) {
  return el("span", { class: `badge ${text}`, text });
}

/** A horizontal bar filled to part/whole (capped), red past the whole. */
export function meter(part, whole) {
  const fill = el("span");
  const ratio = whole > 0 ? part / whole : 0;
  fill.style.width = `${Math.min(100, 100 * ratio).toFixed(1)}%`;
  return el("div", { class: ratio > 1 ? "bar over" : "bar", role: "img",
                     "aria-label": `${(100 * ratio).toFixed(1)} % of the amount` }, fill);
}

/** A definition list of [term, value (text or Node), data-key] facts. */
export function facts(...entries) {
  return el("dl", { class: "kv" }, ...entries.flatMap(([term, value, key]) => [
    el("dt", { text: term }),
    el("dd", { data: key ? { key } : undefined }, value)]));
}
