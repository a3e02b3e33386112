// Money, counts and times as the console shows them.
//
// Money is kept as BigInt pico-dollars (1e-12 $), the API's own unit: its *Exact fields are
// decimal strings to the pico-dollar, and summing them as BigInt is exact, so a total on the
// page is the API's total to the last digit and rounding happens once, when it is shown.

const PICO_DIGITS = 12;
const PICO = 10n ** 12n;

/** Pico-dollars from an exact decimal string ("76.546020000000") or an API float. */
export function pico(value) {
  if (value === null || value === undefined || value === "") return 0n;
  if (typeof value === "bigint") return value;
  // toFixed gives the float's exact decimal expansion rounded at 12 places.
  const text = typeof value === "number" ? value.toFixed(PICO_DIGITS) : String(value).trim();
  const match = /^(-?)(\d*)(?:\.(\d*))?$/.exec(text);
  if (!match || (!match[2] && !match[3])) throw new Error(`not a decimal amount: ${text}`);
  const [, sign, whole, fraction = ""] = match;
  let units = BigInt((whole || "0") + fraction.slice(0, PICO_DIGITS).padEnd(PICO_DIGITS, "0"));
  units = roundRest(units, fraction.slice(PICO_DIGITS));
  return sign ? -units : units;
}

// Digits beyond the pico-dollar (none in today's API) round half to even.
function roundRest(units, rest) {
  if (!/[1-9]/.test(rest)) return units;
  const first = Number(rest[0]);
  const tail = /[1-9]/.test(rest.slice(1));
  const up = first > 5 || (first === 5 && (tail || units % 2n === 1n));
  return up ? units + 1n : units;
}

/** Integer division rounding half to even (both BigInt, divisor > 0). */
export function divRound(numerator, divisor) {
  const negative = numerator < 0n;
  const n = negative ? -numerator : numerator;
  let quotient = n / divisor;
  const twice = 2n * (n % divisor);
  if (twice > divisor || (twice === divisor && quotient % 2n === 1n)) quotient += 1n;
  return negative ? -quotient : quotient;
}

/** How many decimals an amount is shown with: cents from a dollar up; below a dollar, three
 *  significant digits (at least two decimals, at most twelve), so $0.0004 stays $0.0004. */
export function moneyDecimals(units) {
  const size = units < 0n ? -units : units;
  if (size === 0n || size >= PICO) return 2;
  const leadingZeros = PICO_DIGITS - size.toString().length;
  return Math.min(PICO_DIGITS, Math.max(2, leadingZeros + 3));
}

/** "$1,234.57", "$0.0403", "$0.000400", "-$2.50": rounded half to even. */
export function money(value) {
  const units = pico(value);
  const size = units < 0n ? -units : units;
  const round = (decimals) => divRound(size, 10n ** BigInt(PICO_DIGITS - decimals));
  let decimals = moneyDecimals(size);
  // Rounding up across a power of ten ($0.09996 -> $0.1000) gained a digit: drop it.
  const rounded = round(decimals) * 10n ** BigInt(PICO_DIGITS - decimals);
  decimals = Math.min(decimals, moneyDecimals(rounded));
  const digits = round(decimals).toString().padStart(decimals + 1, "0");
  const whole = digits.slice(0, -decimals);
  return `${units < 0n ? "-" : ""}$${group(whole)}.${digits.slice(-decimals)}`;
}

/** Dollars as a float, for chart heights only (never for a number shown as text). */
export function dollars(value) {
  return Number(pico(value)) / 1e12;
}

function group(whole) {
  return whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** 1234567 -> "1,234,567". */
export function count(n) {
  return group(String(Math.round(Number(n))));
}

/** part / whole as a percentage with one decimal ("37.5 %"); "–" when whole is 0. */
export function percent(part, whole) {
  const p = pico(part);
  const w = pico(whole);
  if (w === 0n) return "–";
  const tenths = divRound(p * 1000n, w);
  const sign = tenths < 0n ? "-" : "";
  const size = tenths < 0n ? -tenths : tenths;
  return `${sign}${size / 10n}.${size % 10n} %`;
}

/** A ratio (0.619) as "61.9 %". */
export function ratioPercent(ratio) {
  return ratio === null || ratio === undefined ? "–" : `${(100 * ratio).toFixed(1)} %`;
}

// --- time: shown in UTC, the browser's local time on hover ---

const pad = (n) => String(n).padStart(2, "0");

/** Epoch ms of an RFC 3339 string. */
export function ms(iso) {
  return Date.parse(iso);
}

/** Tick labels of a UTC time axis: hours and minutes within a couple of days (the date
 *  under the first tick and wherever the day changes), dates beyond. */
export function utcTicks(seconds, spanSeconds) {
  let previousDay = null;
  return seconds.map((t) => {
    const d = new Date(t * 1000);
    const day = `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
    if (spanSeconds > 2 * 86400) {
      const label = previousDay === null ? `${day}\n${d.getUTCFullYear()}` : day;
      previousDay = day;
      return label;
    }
    const label = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`
      + (day !== previousDay ? `\n${day}` : "");
    previousDay = day;
    return label;
  });
}

/** "2023-11-16 18:15 UTC". */
export function utc(epochMs) {
  const d = new Date(epochMs);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} `
    + `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())} UTC`;
}

/** "2023-11-16 19:15 local time (UTC+01:00)", for the hover title. */
export function local(epochMs) {
  const d = new Date(epochMs);
  const offset = -d.getTimezoneOffset();
  const sign = offset < 0 ? "−" : "+";
  const size = Math.abs(offset);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())} local time `
    + `(UTC${sign}${pad(Math.floor(size / 60))}:${pad(size % 60)})`;
}

/** A <time> element: UTC as text, local time as its title. */
export function timeElement(epochMs) {
  const element = document.createElement("time");
  element.dateTime = new Date(epochMs).toISOString();
  element.textContent = utc(epochMs);
  element.title = local(epochMs);
  return element;
}

/** A readable name for the API's reserved rows. */
export function rowLabel(name) {
  if (name === "__idle__") return "idle GPU (unallocated)";
  if (name === "__unallocated__") return "(unallocated)";
  return name;
}

/** Pico-dollars as the API's exact decimal string ("75.944518457543"). */
export function exactText(units) {
  const size = units < 0n ? -units : units;
  const digits = size.toString().padStart(PICO_DIGITS + 1, "0");
  return `${units < 0n ? "-" : ""}${digits.slice(0, -PICO_DIGITS)}.${digits.slice(-PICO_DIGITS)}`;
}
