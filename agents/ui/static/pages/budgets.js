// Budgets: per budget, spend to date as a burn-up over its period, the projection to the
// period's end, the amount and each threshold.
//
// /api/budgets gives each budget's spend, projection and status; the curve is the budget's
// scope read from /model/allocation per step since the period's start, with idle GPU time
// shared among users (shareIdle=true), as budgets count it. Its last point is the budget's
// spend, to a pico-dollar per step (each step's exact total is rounded down to the pico).
// A cost center's member scopes are not in the API: it gets the figures and the projection
// without the curve.

import { api, steppedSets } from "../api.js";
import { burnUp } from "../charts.js";
import { badge, el, facts, meter, panel } from "../dom.js";
import { dollars, exactText, money, ms, percent, pico, timeElement } from "../format.js";
import { stepTimes } from "../series.js";
import { shortMoney } from "./cost.js";
import { scopeText } from "./overview.js";

const HOUR_MS = 3_600_000;

export async function render(main, params, ctx) {
  const answer = await api("api/budgets");
  const budgets = answer.data;
  const curves = await Promise.all(budgets.map((budget) => spendCurve(budget)));
  if (!ctx.current()) return;
  main.replaceChildren(el("h1", { text: "Budgets" }));
  if (!budgets.length) {
    main.append(panel(null, el("p", { class: "empty",
      text: "No budgets configured: set COSTFLUX_BUDGETS_FILE (see the README, Budgets)." })));
    return;
  }
  const charts = budgets.map((budget, i) => {
    const slot = el("div", { class: "chart" });
    main.append(card(budget, curves[i], slot));
    return [slot, budget, curves[i]];
  });
  for (const [slot, budget, curve] of charts) draw(slot, budget, curve);
}

/** The dimensions /model/allocation aggregates a scope by, and the row name it answers. */
function scopeQuery(scope) {
  const labels = Object.keys(scope);
  if (labels.includes("cost_center")) return null;
  const byLabel = { model: "model", namespace: "namespace", deployment: "deployment",
                    cluster: "cluster" };
  if (!labels.length) return { aggregate: "namespace", row: null };  // {}: every row
  return { aggregate: labels.map((label) => byLabel[label] ?? `label:${label}`).join(","),
           row: labels.map((label) => scope[label]).join("/") };
}

/** The period's step: whole hours, as budgets count spend (hour windows, minutes only at the
 *  ends; finer steps would split GPU cost per minute and draw another curve), and a curve
 *  of at most a few hundred points. */
function stepFor(lengthMs) {
  if (lengthMs <= 8 * 24 * HOUR_MS) return ["1h", HOUR_MS];
  if (lengthMs <= 200 * 24 * HOUR_MS) return ["6h", 6 * HOUR_MS];
  return ["1d", 24 * HOUR_MS];
}

/** [[epoch s, pico-dollars spent by then]] from the period's start to the evaluation. */
async function spendCurve(budget) {
  const query = scopeQuery(budget.scope);
  const start = ms(budget.periodStart);
  const now = Math.min(ms(budget.evaluatedAt), ms(budget.periodEnd));
  if (!query || now <= start) return null;
  const [step, stepMs] = stepFor(ms(budget.periodEnd) - start);
  const sets = await steppedSets("model/allocation", {
    window: `${new Date(start).toISOString()},${new Date(now).toISOString()}`,
    step, aggregate: query.aggregate, shareIdle: "true",
  });
  const starts = stepTimes(sets, stepMs);
  const points = [[start / 1000, 0n]];
  if (!starts) return [...points, [now / 1000, 0n]];  // nothing spent yet
  let spent = 0n;
  sets.forEach((rows, i) => {
    for (const row of rows) {
      if (query.row === null || row.name === query.row) spent += pico(row.totalCostExact);
    }
    const end = i + 1 < sets.length ? starts[i + 1] : now / 1000;
    points.push([end, spent]);
  });
  return points;
}

function card(budget, curve, slot) {
  const final = curve ? curve[curve.length - 1][1] : null;
  const period = el("span", {}, `${budget.period}: `, timeElement(ms(budget.periodStart)),
                    " to ", timeElement(ms(budget.periodEnd)));
  const used = el("span", {}, el("span", { data: { key: "used" },
                                           text: percent(budget.spend, budget.limit) }),
                  " ", meter(dollars(budget.spend), dollars(budget.limit)));
  return el("section", { class: "panel", data: {
    budget: budget.name, burnupFinal: final === null ? "" : exactText(final) } },
    el("h2", {}, `${budget.name} `, badge(budget.status)),
    el("div", { class: "grid" },
      facts(["scope", scopeText(budget.scope)], ["period", period],
            ["amount", money(budget.limit), "limit"],
            ["thresholds", thresholdsText(budget), "thresholds"]),
      facts(["spent", money(budget.spend), "spend"], ["used", used],
            ["projected", money(budget.projected), "projected"],
            ["evaluated at", timeElement(ms(budget.evaluatedAt))])),
    curve ? slot : el("p", { class: "muted small", text: "No spend curve: a cost center's "
                                                          + "member scopes are not in the API." }));
}

/** The configured thresholds (older workers send only those reached) and their amounts. */
function thresholdsOf(budget) {
  return budget.thresholds ?? budget.thresholdsReached;
}

function thresholdsText(budget) {
  const limit = pico(budget.limit);
  const shown = thresholdsOf(budget).map((pct) => `${pct} % (${money(limit * BigInt(pct) / 100n)})`
    + (budget.thresholdsReached.includes(pct) ? " reached" : ""));
  return shown.length ? shown.join(", ") : "none";
}

function draw(slot, budget, curve) {
  if (!curve) return;
  const limit = dollars(budget.limit);
  // The amount is a line of its own; a 100 % threshold would draw over it.
  const marks = [{ value: limit, label: `amount ${money(budget.limit)}`, color: "#b3261e" },
    ...thresholdsOf(budget).filter((pct) => pct !== 100).map((pct) => ({
      value: (limit * pct) / 100, label: `${pct} %`, color: "#8a93a3", dash: true }))];
  burnUp(slot, {
    start: ms(budget.periodStart) / 1000, end: ms(budget.periodEnd) / 1000,
    points: curve.map(([t, units]) => [t, Number(units) / 1e12]),
    now: Math.min(ms(budget.evaluatedAt), ms(budget.periodEnd)) / 1000,
    spend: dollars(budget.spend), projected: dollars(budget.projected), marks,
    format: (v) => money(v), yFormat: shortMoney,
  });
}
