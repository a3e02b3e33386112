// Charts on uPlot (the global `uPlot`, served by the worker from the youplot wheel).
//
// uPlot draws lines and bars; stacking, the clickable legend, the hover read-out and the
// budget lines are ours. Time axes are UTC; the read-out adds the browser's local time.

import { local, utc, utcTicks } from "./format.js";

const UTC_DATE = (seconds) => window.uPlot.tzDate(new Date(seconds * 1e3), "Etc/UTC");

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Whether uPlot loaded; without it the pages still show their tables. */
export function chartsAvailable() {
  return typeof window.uPlot === "function";
}

function unavailable(container) {
  container.replaceChildren(element("p", "empty", "Charts unavailable: the worker could not "
    + "serve its chart library (see the worker's log). The tables below are complete."));
}

/** The x axis: UTC, 24-hour. */
const TIME_AXIS = {
  space: 80,
  values: (u, ticks) => utcTicks(ticks, u.scales.x.max - u.scales.x.min),
};

function widthOf(container) {
  return Math.max(320, Math.floor(container.getBoundingClientRect().width || 900));
}

/** Index of the step under a cursor position: the last step starting at or before it (bars
 *  start at their step's time, so uPlot's own nearest-point index is off by half a bar). */
function stepAt(u, times) {
  if (u.cursor.left === undefined || u.cursor.left < 0) return -1;
  const t = u.posToVal(u.cursor.left, "x");
  let index = -1;
  for (let i = 0; i < times.length && times[i] <= t; i++) index = i;
  return index;
}

/** A chart's three parts (read-out, plot, legend) in ``container``, emptied of an earlier
 *  chart; null, with a note in their place, when uPlot did not load. */
function chartFrame(container) {
  release(container);
  if (!chartsAvailable()) {
    unavailable(container);
    return null;
  }
  const readout = element("div", "readout");
  const plot = element("div", "chart");
  const legend = element("div", "legend");
  container.replaceChildren(readout, plot, legend);
  return { readout, plot, legend };
}

/** A setCursor hook that writes the hovered step's time and each series' value. */
function showValuesAtCursor(readout, times, series, format) {
  return (u) => {
    const i = stepAt(u, times);
    readout.textContent = i < 0 ? "" : readoutText(times[i], series
      .filter((s) => s.values[i] !== null)
      .map((s) => `${s.label} ${format(s.values[i])}`));
  };
}

function readoutText(time, parts) {
  const when = `${utc(time * 1000)} · ${local(time * 1000)}`;
  return parts.length ? `${when} — ${parts.join(" · ")}` : when;
}

/**
 * Stacked bars, one per step, a series per name (bottom first), with a legend of chips.
 * series: [{name, label, values (number|null per step), color, total (text)}].
 * onPick(name) runs when a chip or a bar segment is clicked; `selected` is emphasised.
 */
export function stackedBars(container, { times, stepSeconds, series, format, yFormat,
                                         selected = null, onPick = null, height = 300 }) {
  const parts = chartFrame(container);
  if (!parts) return undefined;
  const { readout, plot, legend } = parts;

  // Each series is drawn as a bar from 0 to its cumulative height; the top one first, so
  // every lower series paints over the bottom of those above it.
  const cumulative = [];
  let running = times.map(() => 0);
  for (const s of series) {
    running = running.map((sum, i) => sum + (s.values[i] ?? 0));
    cumulative.push(running);
  }
  const drawOrder = series.map((_, i) => i).reverse();
  const faded = (s) => (selected && s.name !== selected ? `${s.color}40` : s.color);
  const bars = window.uPlot.paths.bars({ size: [0.86, Infinity], align: 1 });
  const uplot = new window.uPlot({
    width: widthOf(container), height, tzDate: UTC_DATE,
    legend: { show: false },
    cursor: { points: { show: false }, drag: { x: false, y: false } },
    scales: {
      x: { time: true, range: () => [times[0], times[times.length - 1] + stepSeconds] },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] },
    },
    axes: [TIME_AXIS, { size: 72, values: (u, ticks) => ticks.map(yFormat) }],
    series: [{}, ...drawOrder.map((i) => ({
      label: series[i].label, fill: faded(series[i]), stroke: faded(series[i]), width: 0,
      paths: bars, points: { show: false },
    }))],
    hooks: {
      setCursor: [showValuesAtCursor(readout, times, series, format)],
    },
  }, [times, ...drawOrder.map((i) => cumulative[i])], plot);

  plot.querySelector(".u-over").addEventListener("click", () => {
    const i = stepAt(uplot, times);
    if (i < 0 || !onPick) return;
    const y = uplot.posToVal(uplot.cursor.top, "y");
    const hit = series.findIndex((s, k) => y < cumulative[k][i] && (s.values[i] ?? 0) > 0);
    if (hit >= 0) onPick(series[hit].name);
  });

  for (const s of series) {
    const chip = element("button");
    chip.type = "button";
    chip.dataset.series = s.name;
    chip.setAttribute("aria-pressed", String(s.name === selected));
    const swatch = element("span", "swatch");
    swatch.style.background = s.color;
    chip.append(swatch, `${s.label} ${s.total}`);
    if (onPick) chip.addEventListener("click", () => onPick(s.name));
    legend.append(chip);
  }
  follow(container, uplot, height);
  return uplot;
}

/** Lines over time (e.g. GPU utilization in %), a gap where a step has no value. */
export function lines(container, { times, stepSeconds, series, format, yFormat,
                                   yMax = null, height = 260 }) {
  const parts = chartFrame(container);
  if (!parts) return undefined;
  const { readout, plot, legend } = parts;
  // Each value belongs to its whole step: drawn at the step's middle.
  const middles = times.map((t) => t + stepSeconds / 2);
  const uplot = new window.uPlot({
    width: widthOf(container), height, tzDate: UTC_DATE,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: true, range: () => [times[0], times[times.length - 1] + stepSeconds] },
      y: { range: (u, min, max) => [0, yMax ?? (max > 0 ? max * 1.08 : 1)] },
    },
    axes: [TIME_AXIS, { size: 64, values: (u, ticks) => ticks.map(yFormat) }],
    series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2,
                                         points: { size: 5 } }))],
    hooks: {
      setCursor: [showValuesAtCursor(readout, times, series, format)],
    },
  }, [middles, ...series.map((s) => s.values)], plot);
  for (const s of series) {
    const chip = element("button");
    chip.type = "button";
    chip.dataset.series = s.name;
    const swatch = element("span", "swatch");
    swatch.style.background = s.color;
    chip.append(swatch, s.total ? `${s.label} ${s.total}` : s.label);
    legend.append(chip);
  }
  follow(container, uplot, height);
  return uplot;
}

/**
 * A budget's burn-up: spend to date (cumulative, per step), the projection to the period's
 * end, the amount and each threshold as horizontal lines.
 * points: [[epoch s, dollars spent by then]], ascending; marks: [{value (dollars), label,
 * color, dash}].
 */
export function burnUp(container, { start, end, points, now, spend, projected, marks,
                                    yFormat, format, height = 240 }) {
  release(container);
  if (!chartsAvailable()) return unavailable(container);
  const readout = element("div", "readout");
  const plot = element("div", "chart");
  container.replaceChildren(readout, plot);
  const times = [...points.map((p) => p[0])];
  const spent = [...points.map((p) => p[1])];
  const projection = times.map(() => null);
  // The projection runs from where spend stands now to the period's end, straight.
  if (!times.length || times[times.length - 1] < now) {
    times.push(now);
    spent.push(spend);
    projection.push(spend);
  } else {
    projection[projection.length - 1] = spend;
  }
  if (end > now) {
    times.push(end);
    spent.push(null);
    projection.push(projected);
  }
  const top = Math.max(spend, projected, ...marks.map((m) => m.value)) * 1.1 || 1;
  const uplot = new window.uPlot({
    width: widthOf(container), height, tzDate: UTC_DATE,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true, range: () => [start, end] }, y: { range: () => [0, top] } },
    axes: [TIME_AXIS, { size: 72, values: (u, ticks) => ticks.map(yFormat) }],
    series: [
      {},
      { label: "spend", stroke: "#2f5fd0", width: 2, fill: "#2f5fd018",
        points: { show: false } },
      { label: "projection", stroke: "#b3261e", width: 2, dash: [6, 5], spanGaps: true,
        points: { show: false } },
    ],
    hooks: {
      draw: [(u) => {
        const { ctx } = u;
        ctx.save();
        ctx.font = `${12 * devicePixelRatio}px system-ui, sans-serif`;
        for (const mark of marks) {
          const y = Math.round(u.valToPos(mark.value, "y", true));
          ctx.strokeStyle = mark.color;
          ctx.fillStyle = mark.color;
          ctx.lineWidth = devicePixelRatio;
          ctx.setLineDash(mark.dash ? [3 * devicePixelRatio, 3 * devicePixelRatio] : []);
          ctx.textAlign = "right";
          ctx.textBaseline = "bottom";
          ctx.beginPath();
          ctx.moveTo(u.bbox.left, y);
          ctx.lineTo(u.bbox.left + u.bbox.width, y);
          ctx.stroke();
          // Labelled at the right end: the spend curve starts at the left.
          ctx.fillText(mark.label, u.bbox.left + u.bbox.width - 4 * devicePixelRatio,
                       y - 3 * devicePixelRatio);
        }
        ctx.restore();
      }],
      setCursor: [(u) => {
        const i = u.cursor.idx;
        if (i === null || i === undefined) {
          readout.textContent = "";
          return;
        }
        const parts = [];
        if (spent[i] !== null) parts.push(`spent ${format(spent[i])}`);
        if (projection[i] !== null) parts.push(`projected ${format(projection[i])}`);
        readout.textContent = readoutText(times[i], parts);
      }],
    },
  }, [times, spent, projection], plot);
  follow(container, uplot, height);
  return uplot;
}

/** A small inline trend line (SVG), e.g. a team's hourly cost over the last day. */
export function sparkline(values, color = "#2f5fd0", width = 120, height = 26) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", "spark");
  svg.setAttribute("aria-hidden", "true");
  const numbers = values.map((v) => v ?? 0);
  const max = Math.max(...numbers, 0) || 1;
  const step = numbers.length > 1 ? (width - 2) / (numbers.length - 1) : 0;
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", color);
  line.setAttribute("stroke-width", "1.5");
  const y = (v) => (height - 2 - (v / max) * (height - 4)).toFixed(1);
  line.setAttribute("points", numbers.map((v, i) => `${(1 + i * step).toFixed(1)},${y(v)}`)
    .join(" "));
  svg.append(line);
  return svg;
}

const mounted = new WeakMap();  // container -> {uplot, observer}: the chart drawn in it

// Charts follow their container's width (window resized, side panel opened); a chart drawn
// again in the same container (a new filter) replaces the old one, which is let go.
function follow(container, uplot, height) {
  const observer = new ResizeObserver(() => {
    if (!container.isConnected) {
      release(container);
      return;
    }
    const width = widthOf(container);
    if (width !== uplot.width) uplot.setSize({ width, height });
  });
  observer.observe(container);
  mounted.set(container, { uplot, observer });
}

function release(container) {
  const previous = mounted.get(container);
  if (!previous) return;
  previous.observer.disconnect();
  previous.uplot.destroy();
  mounted.delete(container);
}
