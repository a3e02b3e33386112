// Tables of API rows, and their CSV download.

/**
 * A table: columns [{label, value(row) -> text or Node, num (right-aligned), key}], rows, an
 * optional footer row (the same shape as a row). Each <tr> carries data-name = row.name.
 */
export function table(columns, rows, { footer = null, empty = "No data in this window." } = {}) {
  if (!rows.length) {
    const note = document.createElement("p");
    note.className = "empty";
    note.textContent = empty;
    return note;
  }
  const wrap = document.createElement("div");
  wrap.className = "wide";
  const grid = document.createElement("table");
  const head = grid.createTHead().insertRow();
  for (const column of columns) {
    const th = document.createElement("th");
    th.textContent = column.label;
    if (column.num) th.className = "num";
    if (column.title) th.title = column.title;
    head.append(th);
  }
  const body = grid.createTBody();
  for (const row of rows) fill(body.insertRow(), columns, row);
  if (footer) fill(grid.createTFoot().insertRow(), columns, footer);
  wrap.append(grid);
  return wrap;
}

function fill(tr, columns, row) {
  if (row.name !== undefined) tr.dataset.name = row.name;
  for (const column of columns) {
    const td = tr.insertCell();
    if (column.num) td.className = "num";
    if (column.key) td.dataset.key = column.key;
    const value = column.value(row);
    if (value instanceof Node) td.append(value);
    else td.textContent = value ?? "";
  }
}

/** RFC 4180 CSV of rows: a column per field, values exactly as the API gave them. */
export function csv(fields, rows) {
  const quote = (value) => {
    const text = value === null || value === undefined ? "" : String(value);
    return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  return [fields, ...rows.map((row) => fields.map((field) => row[field]))]
    .map((line) => line.map(quote).join(",")).join("\r\n") + "\r\n";
}

/** Hand the browser a file to save. */
export function download(filename, text, type = "text/csv") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
