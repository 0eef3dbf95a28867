// Owns turning a webhook's `occurred_at` string into the exact `timestamptz` the container
// stores for it. The container parses with chrono 0.4.45 `DateTime::parse_from_rfc3339`
// (anything it rejects becomes NULL) and sends the instant through tokio-postgres, which
// truncates to whole microseconds toward 2000-01-01 (Postgres' epoch). Handing the raw string
// to Postgres instead would accept other spellings and *round* sub-microsecond digits, so the
// edge reimplements chrono's rules and the truncation, then gives Postgres one unambiguous
// ISO-8601 UTC string.

/** Parsed, but the edge does not reproduce the container's handling: let it answer. */
export const DEFER = "defer";

const encoder = new TextEncoder();

/**
 * The Postgres text for what the container stores for `text`: `YYYY-MM-DDTHH:MM:SS.ffffffZ`,
 * null when chrono rejects it, or DEFER for a leap second (`:60`) or an instant whose UTC
 * year is outside 1–9999.
 */
export function occurredAtForPostgres(text: string): string | null | typeof DEFER {
  const parsed = parseRfc3339(text);
  if (parsed === null || parsed === DEFER) return parsed;
  return formatMicrosSince2000(parsed);
}

/**
 * chrono's `parse_rfc3339`, as the instant in microseconds since 2000-01-01T00:00:00Z after
 * tokio-postgres' truncation (BigInt division truncates toward zero, like `num_microseconds`).
 */
export function parseRfc3339(text: string): bigint | null | typeof DEFER {
  const b = encoder.encode(text); // chrono indexes bytes
  if (b.length < 19) return null;
  const digit = (i: number): number | null => (b[i]! >= 0x30 && b[i]! <= 0x39 ? b[i]! - 0x30 : null);
  const two = (i: number): number | null => {
    const hi = digit(i);
    const lo = digit(i + 1);
    return hi === null || lo === null ? null : hi * 10 + lo;
  };
  const y1 = two(0);
  const y2 = two(2);
  if (y1 === null || y2 === null || b[4] !== 0x2d) return null;
  const year = y1 * 100 + y2;
  const month = two(5);
  if (month === null || b[7] !== 0x2d) return null;
  const day = two(8);
  if (day === null) return null;
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return null;
  if (b[10] !== 0x54 && b[10] !== 0x74 && b[10] !== 0x20) return null; // T, t or space
  const hour = two(11);
  if (hour === null || b[13] !== 0x3a) return null;
  const minute = two(14);
  if (minute === null || b[16] !== 0x3a) return null;
  const second = two(17);
  if (second === null) return null;

  let at = 19;
  let nanos = 0;
  if (b[19] === 0x2e) {
    // scan::nanosecond: 1–9 digits scaled to nanoseconds, further digits skipped.
    at = 20;
    let n = 0;
    let count = 0;
    while (count < 9 && digit(at) !== null) {
      n = n * 10 + digit(at)!;
      at++;
      count++;
    }
    if (count === 0) return null;
    nanos = n * 10 ** (9 - count);
    while (digit(at) !== null) at++;
  }
  if (hour >= 24 || minute >= 60 || second > 60) return null;

  // scan::timezone_offset(allow_zulu, colon required, minutes required, U+2212 allowed)
  let offset: number;
  if (b[at] === 0x5a || b[at] === 0x7a) {
    offset = 0;
    at += 1;
  } else {
    let negative: boolean;
    if (b[at] === 0x2b) {
      negative = false;
      at += 1;
    } else if (b[at] === 0x2d) {
      negative = true;
      at += 1;
    } else if (b[at] === 0xe2 && b[at + 1] === 0x88 && b[at + 2] === 0x92) {
      negative = true; // U+2212 MINUS SIGN
      at += 3;
    } else {
      return null;
    }
    const oh = two(at);
    if (b.length - at < 2 || oh === null) return null;
    at += 2;
    if (b[at] !== 0x3a) return null;
    at += 1;
    if (b.length - at < 2) return null;
    const m1 = digit(at);
    const m2 = digit(at + 1);
    if (m1 === null || m2 === null || m1 > 5) return null;
    at += 2;
    const seconds = oh * 3600 + (m1 * 10 + m2) * 60;
    offset = negative ? -seconds : seconds;
  }
  if (at !== b.length) return null;
  if (Math.abs(offset) >= 86_400) return null; // FixedOffset::east_opt
  if (second === 60) return DEFER; // a leap second: chrono's arithmetic on it is not ported

  const days = daysFromCivil(year, month, day) - DAYS_TO_2000;
  const secs = BigInt(days) * 86_400n + BigInt(hour * 3600 + minute * 60 + second - offset);
  const totalNanos = secs * 1_000_000_000n + BigInt(nanos);
  return totalNanos / 1000n;
}

/** `YYYY-MM-DDTHH:MM:SS.ffffffZ` for microseconds since 2000-01-01Z; DEFER outside years 1–9999. */
export function formatMicrosSince2000(micros: bigint): string | typeof DEFER {
  const perDay = 86_400_000_000n;
  let days = micros / perDay;
  let rest = micros % perDay;
  if (rest < 0n) {
    rest += perDay;
    days -= 1n;
  }
  const [year, month, day] = civilFromDays(Number(days) + DAYS_TO_2000);
  if (year < 1 || year > 9999) return DEFER;
  const micro = Number(rest % 1_000_000n);
  const secOfDay = Number(rest / 1_000_000n);
  const pad = (n: number, w = 2) => String(n).padStart(w, "0");
  return (
    `${pad(year, 4)}-${pad(month)}-${pad(day)}T${pad(Math.floor(secOfDay / 3600))}:` +
    `${pad(Math.floor(secOfDay / 60) % 60)}:${pad(secOfDay % 60)}.${pad(micro, 6)}Z`
  );
}

function isLeap(year: number): boolean {
  return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
}

function daysInMonth(year: number, month: number): number {
  return [31, isLeap(year) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]!;
}

/** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
export function daysFromCivil(y: number, m: number, d: number): number {
  y -= m <= 2 ? 1 : 0;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146_097 + doe - 719_468;
}

function civilFromDays(z: number): [number, number, number] {
  z += 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const m = mp + (mp < 10 ? 3 : -9);
  return [yoe + era * 400 + (m <= 2 ? 1 : 0), m, d];
}

const DAYS_TO_2000 = daysFromCivil(2000, 1, 1);
