// Stepped API answers turned into chart series.
//
// A stepped query answers one set per step, cut at UTC multiples of the step; a step without
// data is an empty set with no window of its own, so a step's time is placed on that grid
// from any step that has one.

import { dollars, ms, pico } from "./format.js";

/** Epoch seconds of each step's start, or null when no step holds any data. */
export function stepTimes(sets, stepMs) {
  const known = sets.findIndex((rows) => rows.length > 0);
  if (known < 0) return null;
  const start = ms(sets[known][0].window.start);
  const first = start - (start % stepMs) - known * stepMs;
  return sets.map((_, i) => (first + i * stepMs) / 1000);
}

/** Per name: each step's value (pick(row), null where the step has no such row) and the
 *  total over the steps in pico-dollars (total(row)); names by total, largest first. */
export function seriesOf(sets, pick, total = (row) => row.totalCostExact) {
  const byName = new Map();
  sets.forEach((rows, i) => {
    for (const row of rows) {
      let entry = byName.get(row.name);
      if (!entry) {
        entry = { name: row.name, values: sets.map(() => null), total: 0n };
        byName.set(row.name, entry);
      }
      entry.values[i] = pick(row);
      entry.total += pico(total(row));
    }
  });
  return [...byName.values()].sort((a, b) => (a.total === b.total ? a.name.localeCompare(b.name)
                                                : (a.total > b.total ? -1 : 1)));
}

/** The cost fields a stacked cost chart can show. */
export const COST_KINDS = {
  total: { label: "total cost", pick: (row) => dollars(row.totalCostExact),
           total: (row) => row.totalCostExact },
  token: { label: "token cost", pick: (row) => row.tokenCost, total: (row) => row.tokenCost },
  gpu: { label: "GPU cost (not idle)", pick: (row) => row.gpuCost, total: (row) => row.gpuCost },
  idle: { label: "idle GPU cost", pick: (row) => row.idleCost, total: (row) => row.idleCost },
};

const PALETTE = ["#2f5fd0", "#e0803a", "#2e9e6a", "#c2417c", "#7d5ac9", "#c9a227", "#3aa0c8",
                 "#8c6d4f", "#d65a4a", "#5b7d2a", "#4c5b7a", "#b0609d"];

/** A color per name, stable for a given list; the API's reserved rows in greys. */
export function colors(names) {
  const assigned = new Map();
  let next = 0;
  for (const name of names) {
    if (name === "__idle__") assigned.set(name, "#9aa3b2");
    else if (name === "__unallocated__") assigned.set(name, "#c5cbd6");
    else assigned.set(name, PALETTE[next++ % PALETTE.length]);
  }
  return assigned;
}
