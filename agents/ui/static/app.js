// The console's shell: one page at a time, chosen by the URL's hash (#cost?by=team&window=7d),
// so every view can be bookmarked and shared, and the browser's back button works.
//
// <body data-state> is "loading" while a page reads the API, then "drawn" or "error": tests
// and the benchmark wait on it (never on a fixed delay).

import { ApiError } from "./api.js";
import { timeElement } from "./format.js";
import * as budgets from "./pages/budgets.js";
import * as cost from "./pages/cost.js";
import * as gpu from "./pages/gpu.js";
import * as overview from "./pages/overview.js";
import * as savings from "./pages/savings.js";

const PAGES = { overview, cost, budgets, gpu, savings };
let generation = 0;

function route() {
  const [name, query] = location.hash.slice(1).split("?");
  return { name: PAGES[name] ? name : "overview", params: new URLSearchParams(query ?? "") };
}

/** The context a page renders with. */
function context(name, mine) {
  return {
    // A slower, older render must not overwrite a newer page.
    current: () => mine === generation,
    // A control changed: a new hash (history entry), and the page renders again.
    navigate: (params) => { location.hash = `${name}?${params}`; },
    // A selection that needs no new data (a filter): the URL follows, nothing re-renders.
    remember: (params) => { history.replaceState(null, "", `#${name}?${params}`); },
    // The newest event time (where the API's relative windows end), when the page read it.
    asOf: (epochMs) => {
      const slot = document.getElementById("asof");
      slot.replaceChildren(...(epochMs ? ["data to ", timeElement(epochMs)] : []));
    },
  };
}

async function show() {
  const { name, params } = route();
  const mine = ++generation;
  document.body.dataset.state = "loading";
  document.body.dataset.page = name;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const problem = document.getElementById("problem");
  document.getElementById("asof").replaceChildren();
  try {
    await PAGES[name].render(document.getElementById("page"), params, context(name, mine));
    if (mine !== generation) return;
    problem.hidden = true;
    document.body.dataset.state = "drawn";
    performance.mark(`costflux:drawn:${name}`);
  } catch (error) {
    if (mine !== generation) return;
    problem.replaceChildren(...explain(error));
    problem.hidden = false;
    document.body.dataset.state = "error";
  }
}

function explain(error) {
  if (error instanceof ApiError && error.status === 401) {
    const link = document.createElement("a");
    link.href = "login";
    link.textContent = "Sign in";
    return ["This worker requires its HTTP token. ", link];
  }
  if (error instanceof ApiError) return [`The API answered ${error.status}: ${error.message}`];
  return [`The page failed: ${error.message}`];
}

window.addEventListener("hashchange", show);
document.getElementById("refresh").addEventListener("click", show);
show();
