/**
 * Text exactly as the Python side writes it, so a message from this client is the one the
 * Python client's Celery `send_task` sends for the same call: `json.dumps` with its defaults
 * (the signed request), Celery's `saferepr` of the kwargs (the `kwargsrepr` header, 1024
 * characters at most) and `datetime.isoformat()` (the `expires` header).
 */

/** A number `pythonJson` writes as a Python float (`1765108800.0`, never `1765108800`). */
export class PythonFloat {
  constructor(readonly value: number) {}
}

export type JsonValue =
  | null
  | boolean
  | number
  | string
  | PythonFloat
  | readonly JsonValue[]
  | { readonly [key: string]: JsonValue | undefined };

/** `json.dumps(value)`: `", "` and `": "` separators, non-ASCII as `\uXXXX`. */
export function pythonJson(value: unknown): string {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (value instanceof PythonFloat) return floatRepr(value.value);
  switch (typeof value) {
    case "number":
      // A whole number JavaScript holds exactly is an int to Python; past 2^53 only a float can be.
      return Number.isSafeInteger(value) && !Object.is(value, -0) ? String(value) : floatRepr(value);
    case "bigint":
      return value.toString();
    case "string":
      return quote(value);
    case "object": {
      const withJson = value as { toJSON?: () => unknown };
      if (typeof withJson.toJSON === "function") return pythonJson(withJson.toJSON());
      if (Array.isArray(value)) return `[${value.map((item) => pythonJson(item === undefined ? null : item)).join(", ")}]`;
      const entries = Object.entries(value as Record<string, unknown>).filter(([, item]) => item !== undefined);
      return `{${entries.map(([key, item]) => `${quote(key)}: ${pythonJson(item)}`).join(", ")}}`;
    }
    default:
      throw new TypeError(`cannot send a ${typeof value} as JSON`);
  }
}

const SHORT_ESCAPES: Record<string, string> = {
  "\\": "\\\\",
  '"': '\\"',
  "\b": "\\b",
  "\f": "\\f",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
};

function quote(text: string): string {
  // Python's ESCAPE_ASCII: a backslash, a quote, or anything outside ' '..'~' (UTF-16 code units,
  // as Python writes a character beyond U+FFFF: its surrogate pair).
  const escaped = text.replace(/[\\"]|[^ -~]/g, (char) =>
    SHORT_ESCAPES[char] ?? `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
  return `"${escaped}"`;
}

/** `repr(float)`: the shortest digits that read back the same, in Python's layout. */
export function floatRepr(value: number): string {
  if (!Number.isFinite(value)) throw new TypeError(`${value} is not a number JSON can carry`);
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const [mantissa = "", exponent = "0"] = value.toExponential().split("e");
  const sign = mantissa.startsWith("-") ? "-" : "";
  const digits = mantissa.replace("-", "").replace(".", "");
  const point = Number(exponent) + 1; // value = 0.<digits> x 10^point
  if (point > 16 || point <= -4) {
    const rest = digits.length > 1 ? `.${digits.slice(1)}` : "";
    const power = Math.abs(point - 1).toString().padStart(2, "0");
    return `${sign}${digits[0]}${rest}e${point - 1 < 0 ? "-" : "+"}${power}`;
  }
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return `${sign}${digits}${"0".repeat(point - digits.length)}.0`;
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** Celery's `saferepr(kwargs, 1024)` of a dict of strings (celery/utils/saferepr.py). */
export function kwargsRepr(kwargs: Readonly<Record<string, string>>, maxlen = 1024): string {
  type Token = { literal: string; truncate: boolean } | { key: string } | { quoted: string };
  const entries = Object.entries(kwargs);
  const tokens: Token[] = [{ literal: "{", truncate: false }];
  entries.forEach(([key, value], index) => {
    tokens.push({ key }, { literal: ": ", truncate: true }, { quoted: value });
    if (index < entries.length - 1) tokens.push({ literal: ", ", truncate: true });
  });
  tokens.push({ literal: "}", truncate: false });
  let left = maxlen;
  let out = "";
  for (let index = 0; index < tokens.length; index += 1) {
    const token = tokens[index] as Token;
    if (left <= 0) {
      // The token at hand is dropped; of the rest, only the closing brackets are kept.
      out += ", ...";
      for (const rest of tokens.slice(index + 1)) if ("literal" in rest && !rest.truncate) out += rest.literal;
      break;
    }
    const text = "literal" in token ? token.literal : formatChars("key" in token ? token.key : token.quoted, left);
    out += text;
    left -= codePoints(text).length;
  }
  return out;
}

function formatChars(text: string, maxlen: number): string {
  return `'${truncate(text, maxlen).replaceAll("'", "\\'")}'`;
}

/** celery.utils.text.truncate: cut at `maxlen` characters, back to the last space, then "...". */
function truncate(text: string, maxlen: number): string {
  const chars = codePoints(text);
  if (!maxlen || chars.length < maxlen) return text;
  const head = chars.slice(0, maxlen).join("");
  const space = head.lastIndexOf(" ");
  return `${space === -1 ? head : head.slice(0, space)}...`;
}

function codePoints(text: string): string[] {
  return Array.from(text);
}

/** `datetime.fromtimestamp(seconds, UTC).isoformat()`: microseconds unless zero, `+00:00`. */
export function isoformatUtc(seconds: number): string {
  const micros = Math.round(seconds * 1e6);
  const whole = Math.floor(micros / 1e6);
  const fraction = micros - whole * 1e6;
  const base = new Date(whole * 1000).toISOString().slice(0, 19);
  return `${base}${fraction ? `.${String(fraction).padStart(6, "0")}` : ""}+00:00`;
}
