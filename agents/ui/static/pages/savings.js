// Savings: what each change would save a month (/api/advice), the ROI table, and what the
// caches already save.

import { api } from "../api.js";
import { el, panel, suggest } from "../dom.js";
import { money, ms, timeElement } from "../format.js";
import { table } from "../table.js";
import { WINDOWS } from "./cost.js";

export async function render(main, params, ctx) {
  const windowParam = params.get("window") || "7d";
  const { data } = await api("api/advice", { window: windowParam });
  if (!ctx.current()) return;
  const [windowBox, windowInput] = suggest("measured over (API `window`)", "window", WINDOWS,
                                           windowParam);
  windowInput.addEventListener("change", () => ctx.navigate(new URLSearchParams({
    window: windowInput.value.trim() })));
  main.replaceChildren(el("h1", { text: "Savings" }), el("div", { class: "controls" }, windowBox));
  if (!data.window) {
    main.append(panel(null, el("p", { class: "empty",
                                      text: "No usage measured in this window." })));
    return;
  }
  ctx.asOf(ms(data.window.end));  // the measured span ends at the newest event
  const total = data.roi.find((row) => row.item === "Total");
  const named = (rows, prefix) => rows.map((row, i) => ({ ...row, name: `${prefix}${i}` }));
  main.append(
    el("div", { class: "grid row-gap" },
      panel("Current monthly cost",
            big("monthly", money(data.currentMonthlyCostExact)),
            el("p", { class: "muted small" }, "measured ", timeElement(ms(data.window.start)),
               " to ", timeElement(ms(data.window.end)), ", scaled to a month")),
      panel("Estimated saving a month",
            big("saving", total ? money(total.monthlySavingExact) : "$0.00"),
            el("p", { class: "muted small", text: total
              ? `${pct(total.savingPct)} of the monthly cost, the changes applied in order`
              : "" }))),
    panel("Advice", table(adviceColumns(), named(data.advice, ""),
                          { empty: "Nothing to change: no saving found in this window." })),
    panel("Return on investment",
          table(roiColumns(), data.roi.map((row) => ({ ...row, name: row.item })))),
  );
  if (data.cacheAchieved.length) {
    main.append(panel("Already saved by caches (a month at this rate)",
                      table(adviceColumns(), named(data.cacheAchieved, "cache-"))));
  }
}

const big = (metric, text) => el("div", { class: "big", data: { metric }, text });
const pct = (value) => `${Number(value).toFixed(1)} %`;

function adviceColumns() {
  return [
    { label: "change", key: "title", value: (row) => row.title },
    { label: "on", key: "target", value: (row) => row.target },
    ...moneyColumns("/ month"),
    { label: "assuming", value: (row) => el("details", {},
      el("summary", { text: `${row.assumptions.length} assumptions` }),
      el("ul", {}, ...row.assumptions.map((text) => el("li", { text })))) },
  ];
}

function roiColumns() {
  return [{ label: "item", key: "item", value: (row) => row.item }, ...moneyColumns("")];
}

function moneyColumns(unit) {
  return [
    { label: `before ${unit}`, num: true, key: "before",
      value: (row) => money(row.monthlyBeforeExact) },
    { label: `after ${unit}`, num: true, key: "after",
      value: (row) => money(row.monthlyAfterExact) },
    { label: `saving ${unit}`, num: true, key: "saving",
      value: (row) => money(row.monthlySavingExact) },
    { label: "saving %", num: true, key: "pct", value: (row) => pct(row.savingPct) },
  ];
}
