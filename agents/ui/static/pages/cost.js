// Cost over time: one stacked bar per step (the API's own window and step), a series per team,
// model, app or namespace; token, GPU and idle cost apart. Clicking a series (its legend chip
// or its part of a bar) filters the table below, which holds the window's allocation rows by
// that dimension and a second one, downloadable as CSV.

import { allocationRows, steppedSets } from "../api.js";
import { stackedBars } from "../charts.js";
import { el, panel, select, suggest } from "../dom.js";
import { count, divRound, money, ms, pico, rowLabel, timeElement } from "../format.js";
import { COST_KINDS, colors, seriesOf, stepTimes } from "../series.js";
import { csv, download, table } from "../table.js";

/** The dimensions to stack by: the API's aggregate, and the one the table splits each by. */
const DIMENSIONS = {
  team: { aggregate: "label:team", second: "model" },
  model: { aggregate: "model", second: "label:team" },
  app: { aggregate: "label:app", second: "model" },
  namespace: { aggregate: "namespace", second: "model" },
};
export const WINDOWS = [
  ["today", "today (UTC)"], ["yesterday", "yesterday"], ["24h", "last 24 hours"],
  ["48h", "last 48 hours"], ["week", "this week (from Sunday)"], ["7d", "last 7 days"],
  ["month", "this month"], ["30d", "last 30 days"], ["lastmonth", "last month"],
];
export const STEPS = [["1m", "1 minute"], ["5m", "5 minutes"], ["15m", "15 minutes"],
                      ["1h", "1 hour"], ["6h", "6 hours"], ["1d", "1 day"]];
const STEP_MS = { "1m": 60e3, "5m": 300e3, "15m": 900e3, "1h": 3600e3, "6h": 21600e3,
                  "1d": 86400e3 };

export async function render(main, params, ctx) {
  const by = DIMENSIONS[params.get("by")] ? params.get("by") : "team";
  const windowParam = params.get("window") || "today";
  const step = STEP_MS[params.get("step")] ? params.get("step") : "1h";
  const kind = COST_KINDS[params.get("cost")] ? params.get("cost") : "total";
  const { aggregate, second } = DIMENSIONS[by];

  const [sets, rows] = await Promise.all([
    steppedSets("model/allocation", { window: windowParam, step, aggregate }),
    allocationRows({ window: windowParam, aggregate: `${aggregate},${second}` }),
  ]);
  if (!ctx.current()) return;

  const settings = () => new URLSearchParams({ by, window: windowParam, step, cost: kind });
  const [byBox, bySelect] = select("stacked by", "by",
                                   Object.keys(DIMENSIONS).map((d) => [d, d]), by);
  const [windowBox, windowInput] = suggest("window (API `window`: a keyword, 36h, or start,end)",
                                           "window", WINDOWS, windowParam);
  const [stepBox, stepSelect] = select("step", "step", STEPS, step);
  const [kindBox, kindSelect] = select(
    "cost", "cost", Object.entries(COST_KINDS).map(([value, k]) => [value, k.label]), kind);
  const apply = () => ctx.navigate(new URLSearchParams({
    by: bySelect.value, window: windowInput.value.trim(), step: stepSelect.value,
    cost: kindSelect.value }));
  for (const box of [bySelect, stepSelect, kindSelect]) box.addEventListener("change", apply);
  windowInput.addEventListener("change", apply);

  const chart = el("div", { class: "chart", data: { chart: "cost" } });
  const tableSlot = el("div");
  const note = el("p", { class: "filter-note" });
  const groupOf = (row) => groupName(row.name, by);
  main.replaceChildren(
    el("h1", { text: "Cost over time" }),
    el("div", { class: "controls" }, byBox, windowBox, stepBox, kindBox),
    summary(rows),
    panel(`${COST_KINDS[kind].label} by ${by}, per ${step}`, chart),
    panel(`Allocation by ${by} and ${second.replace("label:", "")}`, note, tableSlot),
  );
  // A relative window ends at the newest event; start,end says nothing of the data.
  if (rows.length && !windowParam.includes(",")) ctx.asOf(ms(rows[0].window.end));

  const times = stepTimes(sets, STEP_MS[step]);
  let selected = params.get("filter");
  const series = seriesOf(sets, COST_KINDS[kind].pick, COST_KINDS[kind].total)
    .filter((s) => s.total !== 0n || kind === "total");
  const palette = colors(series.map((s) => s.name));
  const drawn = series.map((s) => ({   // largest first: the bottom of the stack
    ...s, label: rowLabel(s.name), color: palette.get(s.name), total: money(s.total),
  }));

  const pick = (name) => {
    selected = selected === name ? null : name;  // a second click clears the filter
    const kept = settings();
    if (selected) kept.set("filter", selected);
    ctx.remember(kept);
    draw();
  };
  const draw = () => {
    if (times && drawn.length) {
      stackedBars(chart, { times, stepSeconds: STEP_MS[step] / 1000, series: drawn, selected,
                           onPick: pick, format: (v) => money(v), yFormat: shortMoney });
    } else {
      chart.replaceChildren(el("p", { class: "empty", text: "No cost in this window." }));
    }
    const shown = selected ? rows.filter((row) => groupOf(row) === selected) : rows;
    note.replaceChildren(...(selected
      ? [`Showing ${rowLabel(selected)} only. `,
         el("button", { type: "button", text: "Show all" })]
      : ["Click a series in the chart or its legend to show its rows only."]));
    note.querySelector("button")?.addEventListener("click", () => pick(selected));
    tableSlot.replaceChildren(allocationTable(shown, by, second),
                              csvButton(shown, fileName(by, windowParam, selected)));
  };
  draw();
}

/** The group part of a combined row name ("search/gpt-4" by team is "search"): model names
 *  may hold "/" (meta-llama/Llama-2-70b), so a model is split off from the other side. */
export function groupName(name, by) {
  if (name.startsWith("__")) return name;  // __idle__, __unallocated__ stand alone
  const cut = by === "model" ? name.lastIndexOf("/") : name.indexOf("/");
  return cut < 0 ? name : name.slice(0, cut);
}

function summary(rows) {
  const sum = (field) => rows.reduce((total, row) => total + pico(row[field]), 0n);
  const item = (label, key, value) => el("div", {},
    el("div", { class: "muted small", text: label }),
    el("div", { class: "big", data: { metric: key }, text: money(value) }));
  const span = rows.length ? rows[0].window : null;
  return el("div", { class: "panel" },
    el("div", { class: "grid stats" },
       item("total cost", "total", sum("totalCostExact")),
       item("token cost", "token", sum("tokenCost")),
       item("GPU cost (not idle)", "gpu", sum("gpuCost")),
       item("idle GPU cost", "idle", sum("idleCost"))),
    span ? el("p", { class: "muted small" }, timeElement(ms(span.start)), " to ",
              timeElement(ms(span.end)))
         : el("p", { class: "empty", text: "No cost in this window." }));
}

function allocationTable(rows, by, second) {
  const tokens = (row) => Number(row.inputTokens) + Number(row.outputTokens);
  const sorted = [...rows].sort((a, b) => {
    const diff = pico(b.totalCostExact) - pico(a.totalCostExact);
    return diff === 0n ? a.name.localeCompare(b.name) : (diff > 0n ? 1 : -1);
  });
  const sum = (pick) => sorted.reduce((total, row) => total + pick(row), 0n);
  // The footer is the rows' sum, its unit costs computed from the exact total.
  const total = {
    footer: true, requests: sorted.reduce((n, row) => n + Number(row.requests), 0),
    tokens: sorted.reduce((n, row) => n + tokens(row), 0),
    tokenCost: sum((row) => pico(row.tokenCost)), gpuCost: sum((row) => pico(row.gpuCost)),
    idleCost: sum((row) => pico(row.idleCost)),
    totalCostExact: sum((row) => pico(row.totalCostExact)),
  };
  const secondLabel = second.replace("label:", "");
  const columns = [
    { label: by, key: "group",
      value: (row) => (row.footer ? "total" : rowLabel(groupName(row.name, by))) },
    { label: secondLabel, key: "second", value: (row) => (row.footer || row.name.startsWith("__")
      ? "" : row.name.slice(groupName(row.name, by).length + 1)) },
    { label: "requests", num: true, key: "requests", value: (row) => count(row.requests) },
    { label: "tokens", num: true, key: "tokens",
      value: (row) => count(row.footer ? row.tokens : tokens(row)) },
    { label: "token cost", num: true, key: "tokenCost", value: (row) => money(row.tokenCost) },
    { label: "GPU cost", num: true, key: "gpuCost", value: (row) => money(row.gpuCost) },
    { label: "idle cost", num: true, key: "idleCost", value: (row) => money(row.idleCost) },
    { label: "total", num: true, key: "total", value: (row) => money(row.totalCostExact) },
    { label: "per request", num: true, key: "perRequest", title: "total / requests",
      value: (row) => {
        if (!Number(row.requests)) return "–";
        return money(row.footer ? divRound(row.totalCostExact, BigInt(row.requests))
                                : row.costPerRequest);
      } },
    { label: "per 1K tokens", num: true, key: "per1k",
      title: "total / (input + output tokens) × 1000",
      value: (row) => {
        const n = row.footer ? row.tokens : tokens(row);
        if (!n) return "–";
        return money(row.footer ? divRound(row.totalCostExact * 1000n, BigInt(n))
                                : row.costPerToken * 1000);
      } },
  ];
  return table(columns, sorted, { footer: total, empty: "No allocation rows in this window." });
}

/** CSV of the rows shown: a column per API field, each value exactly as the API sent it. */
function csvButton(rows, name) {
  const button = el("button", { type: "button", data: { download: "csv" },
                                text: `Download CSV (${rows.length} rows)` });
  button.addEventListener("click", () => download(`${name}.csv`, csv(csvFields(rows), rows)));
  return el("p", {}, button);
}

/** The API rows' scalar fields, in the API's order (``window`` and the per-component
 *  ``otherCosts`` maps are objects: their values are in start, end and otherCostExact). */
function csvFields(rows) {
  const fields = [];
  for (const row of rows) {
    for (const [field, value] of Object.entries(row)) {
      if (value !== null && typeof value === "object") continue;
      if (!fields.includes(field)) fields.push(field);
    }
  }
  return fields;
}

/** Axis labels: short, no more digits than the ticks differ by ("$250", "$2.5k", "$0.015"). */
export function shortMoney(value) {
  const size = Math.abs(value);
  if (size >= 1000) return `$${Number((value / 1000).toPrecision(3))}k`;
  if (size >= 1 || size === 0) return `$${Number(value.toPrecision(4))}`;
  return `$${Number(value.toPrecision(2))}`;
}

/** A file name from the view: costflux-team-24h-search.csv (no ":" or "," from a window). */
function fileName(by, windowParam, selected) {
  return ["costflux", by, windowParam, selected].filter(Boolean).join("-")
    .replace(/[^A-Za-z0-9._-]+/g, "_");
}
