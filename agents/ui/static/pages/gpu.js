// GPU: utilization and idle cost per node (or GPU type, model, namespace) over time, and the
// window's GPU-hours and cost per tier, from /model/gpu.

import { api, steppedSets } from "../api.js";
import { lines, stackedBars } from "../charts.js";
import { el, panel, select, suggest } from "../dom.js";
import { money, ms, pico, ratioPercent, rowLabel, timeElement } from "../format.js";
import { colors, seriesOf, stepTimes } from "../series.js";
import { table } from "../table.js";
import { STEPS, WINDOWS, shortMoney } from "./cost.js";

const GROUPS = [["node", "node"], ["gpu_type", "GPU type"], ["model", "model"],
                ["namespace", "namespace"], ["pricing_tier", "pricing tier"]];
const STEP_MS = { "1m": 60e3, "5m": 300e3, "15m": 900e3, "1h": 3600e3, "6h": 21600e3,
                  "1d": 86400e3 };

export async function render(main, params, ctx) {
  const by = GROUPS.some(([value]) => value === params.get("by")) ? params.get("by") : "node";
  const windowParam = params.get("window") || "today";
  const step = STEP_MS[params.get("step")] ? params.get("step") : "1h";
  const [sets, whole] = await Promise.all([
    steppedSets("model/gpu", { window: windowParam, step, aggregate: by }),
    api("model/gpu", { window: windowParam, aggregate: by }),
  ]);
  if (!ctx.current()) return;
  const rows = whole.data.length ? Object.values(whole.data[0]) : [];

  const [byBox, bySelect] = select("by", "by", GROUPS, by);
  const [windowBox, windowInput] = suggest("window", "window", WINDOWS, windowParam);
  const [stepBox, stepSelect] = select("step", "step", STEPS, step);
  const apply = () => ctx.navigate(new URLSearchParams({
    by: bySelect.value, window: windowInput.value.trim(), step: stepSelect.value }));
  bySelect.addEventListener("change", apply);
  stepSelect.addEventListener("change", apply);
  windowInput.addEventListener("change", apply);

  const utilizationChart = el("div", { class: "chart", data: { chart: "utilization" } });
  const idleChart = el("div", { class: "chart", data: { chart: "idle" } });
  const label = GROUPS.find(([value]) => value === by)[1];
  main.replaceChildren(
    el("h1", { text: "GPU" }),
    el("div", { class: "controls" }, byBox, windowBox, stepBox),
    panel(`Utilization by ${label}, per ${step} (utilized GPU time / GPU time)`, utilizationChart),
    panel(`Idle GPU cost by ${label}, per ${step}`, idleChart),
    panel(`GPU time and cost by ${label}`, gpuTable(rows, label),
          rows.length ? el("p", { class: "muted small" }, timeElement(ms(rows[0].window.start)),
                           " to ", timeElement(ms(rows[0].window.end))) : null),
  );
  // A relative window ends at the newest event; start,end says nothing of the data.
  if (rows.length && !windowParam.includes(",")) ctx.asOf(ms(rows[0].window.end));

  const times = stepTimes(sets, STEP_MS[step]);
  const stepSeconds = STEP_MS[step] / 1000;
  if (!times) {
    for (const chart of [utilizationChart, idleChart]) {
      chart.replaceChildren(el("p", { class: "empty", text: "No GPU samples in this window." }));
    }
    return;
  }
  const byCost = seriesOf(sets, (row) => row.totalCost, (row) => row.totalCost);
  const palette = colors(byCost.map((s) => s.name));
  const utilization = seriesOf(sets, (row) => 100 * row.utilization, (row) => row.totalCost);
  lines(utilizationChart, {
    times, stepSeconds, yMax: 100, format: (v) => `${v.toFixed(1)} %`,
    yFormat: (v) => `${v} %`,
    series: utilization.map((s) => ({ ...s, label: rowLabel(s.name), color: palette.get(s.name),
                                      total: "" })),
  });
  const idle = seriesOf(sets, (row) => row.idleCost, (row) => row.idleCost);
  stackedBars(idleChart, {
    times, stepSeconds, format: (v) => money(v), yFormat: shortMoney,
    series: idle.map((s) => ({ ...s, label: rowLabel(s.name), color: palette.get(s.name),
                               total: money(s.total) })),
  });
}

function gpuTable(rows, label) {
  const hours = (value) => Number(value).toFixed(2);
  const tier = (name) => (row) => money(row.costByTier[name] ?? 0);
  const sorted = [...rows].sort((a, b) => b.totalCost - a.totalCost
                                          || a.name.localeCompare(b.name));
  const columns = [
    { label, key: "group", value: (row) => rowLabel(row.name) },
    { label: "GPU-hours", num: true, key: "gpuHours", value: (row) => hours(row.gpuHours) },
    { label: "utilized h", num: true, key: "utilizedHours",
      value: (row) => hours(row.utilizedHours) },
    { label: "idle h", num: true, key: "idleHours", value: (row) => hours(row.idleHours) },
    { label: "utilization", num: true, key: "utilization",
      value: (row) => ratioPercent(row.utilization) },
    { label: "cost", num: true, key: "totalCost", value: (row) => money(row.totalCost) },
    { label: "idle cost", num: true, key: "idleCost", value: (row) => money(row.idleCost) },
    { label: "on-demand", num: true, key: "onDemand", value: tier("on_demand") },
    { label: "spot", num: true, key: "spot", value: tier("spot") },
    { label: "reserved 1y", num: true, key: "reserved", value: tier("reserved_1y") },
  ];
  const sum = (field) => sorted.reduce((total, row) => total + pico(row[field]), 0n);
  const strong = (metric, value) => el("strong", { data: { metric }, text: money(value) });
  return el("div", {}, table(columns, sorted, { empty: "No GPU samples in this window." }),
            sorted.length ? el("p", {}, "GPU cost ", strong("gpu-total", sum("totalCost")),
                               ", of which idle ", strong("gpu-idle", sum("idleCost")))
                          : null);
}
