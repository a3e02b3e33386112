// The console's only data source: the worker's public HTTP API, fetched from the page's own
// origin. URLs are relative to /ui/, so the console also works behind a path prefix.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The JSON body of GET path?params; an ApiError with the API's own message otherwise. */
export async function api(path, params = {}) {
  const url = new URL(`../${path}`, document.baseURI);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  // same-origin: the session cookie of a token-protected worker goes along.
  const response = await fetch(url, { credentials: "same-origin",
                                      headers: { Accept: "application/json" } });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // a proxy's HTML error page: reported by status below
  }
  if (!response.ok) {
    const message = body?.message ?? `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return body;
}

/** /model/allocation rows of a one-set query, as a list. */
export async function allocationRows(params) {
  const body = await api("model/allocation", params);
  return body.data.length ? Object.values(body.data[0]) : [];
}

/** The sets of a stepped query, each a list of rows (an empty step is an empty list). */
export async function steppedSets(path, params) {
  const body = await api(path, params);
  return body.data.map((set) => Object.values(set));
}
