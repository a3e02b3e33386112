// Overview: spend today and month to date with their projections, the budgets, the top teams
// and models of the last day with their hourly trend, and the alerts firing now.

import { allocationRows, api, steppedSets } from "../api.js";
import { sparkline } from "../charts.js";
import { el, badge, meter, panel } from "../dom.js";
import { dollars, divRound, money, ms, percent, pico, rowLabel, timeElement } from "../format.js";
import { colors, seriesOf } from "../series.js";
import { table } from "../table.js";

const DAY_MS = 86_400_000;
const TOP = 6;

export async function render(main, params, ctx) {
  const [today, month, budgets, alerts, teams, models] = await Promise.all([
    allocationRows({ window: "today", aggregate: "namespace" }),
    allocationRows({ window: "month", aggregate: "namespace" }),
    api("api/budgets"),
    api("api/alerts"),
    steppedSets("model/allocation", { window: "24h", step: "1h", aggregate: "label:team" }),
    steppedSets("model/allocation", { window: "24h", step: "1h", aggregate: "model" }),
  ]);
  if (!ctx.current()) return;
  ctx.asOf(today.length ? ms(today[0].window.end) : null);

  main.replaceChildren(
    el("h1", { text: "Overview" }),
    el("div", { class: "grid row-gap" },
       spendCard("Spend today", "today", today, (start) => start + DAY_MS, "day"),
       spendCard("Month to date", "month", month, nextMonth, "month")),
    budgetsPanel(budgets.data),
    el("div", { class: "grid row-gap" },
       topPanel("Top teams, last 24 h", "teams", teams),
       topPanel("Top models, last 24 h", "models", models)),
    alertsPanel(alerts.data),
  );
}

function nextMonth(startMs) {
  const start = new Date(startMs);
  return Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + 1, 1);
}

/** Spend of a calendar period so far, and where it ends at this rate (spend / elapsed ×
 *  the period's length: the budgets' own projection). */
function spendCard(title, metric, rows, periodEnd, unit) {
  const total = rows.reduce((sum, row) => sum + pico(row.totalCostExact), 0n);
  const body = [el("div", { class: "big", data: { metric: `spend-${metric}` },
                            text: money(total) })];
  if (rows.length) {
    const start = ms(rows[0].window.start);
    const end = ms(rows[0].window.end);
    const projected = divRound(total * BigInt(periodEnd(start) - start), BigInt(end - start));
    body.push(
      el("p", {}, "projected for the whole ", unit, ": ",
         el("strong", { data: { metric: `projected-${metric}` }, text: money(projected) }),
         " at this rate"),
      el("p", { class: "muted small" }, timeElement(start), " to ", timeElement(end)));
  } else {
    body.push(el("p", { class: "muted" }, "No usage in this period yet."));
  }
  return panel(title, ...body);
}

function budgetsPanel(budgets) {
  const columns = [
    { label: "budget", value: (b) => el("a", { href: "#budgets", text: b.name }) },
    { label: "scope", value: (b) => scopeText(b.scope) },
    { label: "period", value: (b) => b.period },
    { label: "spent", num: true, key: "spend", value: (b) => money(b.spend) },
    { label: "of", num: true, key: "limit", value: (b) => money(b.limit) },
    { label: "", value: (b) => meter(dollars(b.spend), dollars(b.limit)) },
    { label: "used", num: true, key: "used", value: (b) => percent(b.spend, b.limit) },
    { label: "projected", num: true, key: "projected", value: (b) => money(b.projected) },
    { label: "status", key: "status", value: (b) => badge(b.status) },
  ];
  return panel("Budgets", table(columns, budgets, {
    empty: "No budgets configured (COSTFLUX_BUDGETS_FILE).",
  }));
}

export function scopeText(scope) {
  const parts = Object.entries(scope).map(([label, value]) => `${label}=${value}`);
  return parts.length ? parts.join(", ") : "everything";
}

/** The largest spenders of the last day: total, share and an hourly sparkline. */
function topPanel(title, name, sets) {
  const series = seriesOf(sets, (row) => dollars(row.totalCostExact));
  const all = series.reduce((sum, s) => sum + s.total, 0n);
  const palette = colors(series.map((s) => s.name));
  const columns = [
    { label: name === "teams" ? "team" : "model", value: (s) => rowLabel(s.name) },
    { label: "cost", num: true, key: "total", value: (s) => money(s.total) },
    { label: "share", num: true, key: "share", value: (s) => percent(s.total, all) },
    { label: "hourly trend", value: (s) => sparkline(s.values, palette.get(s.name)) },
  ];
  const shown = series.slice(0, TOP).map((s) => ({ ...s }));
  const more = series.length - shown.length;
  const rest = more > 0 ? el("p", { class: "muted small" }, `and ${more} more: see `,
                             el("a", { href: "#cost", text: "Cost over time" })) : null;
  return panel(title, el("div", { data: { top: name } }, table(columns, shown)), rest);
}

function alertsPanel(alerts) {
  const columns = [
    { label: "severity", value: (a) => badge(a.severity) },
    { label: "alert", key: "rule", value: (a) => a.rule },
    { label: "labels", value: (a) => (Object.keys(a.labels).length ? scopeText(a.labels) : "–") },
    { label: "value", num: true, value: (a) => Number(a.value).toPrecision(4) },
    { label: "threshold", num: true, value: (a) => String(a.threshold) },
    { label: "since", value: (a) => timeElement(ms(a.starts_at)) },
    { label: "", value: (a) => a.summary },
  ];
  const rows = alerts.map((a) => ({ ...a, name: a.alert_id }));
  return panel(`Firing alerts (${alerts.length})`, el("div", { data: { alerts: alerts.length } },
    table(columns, rows, { empty: "No alert is firing." })));
}
