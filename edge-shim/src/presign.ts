// Owns presigning at the edge: an S3 Signature Version 4 query-string presigned GET of one
// object, what the container's `storage::objects::presign_get` makes with the AWS SDK (region
// `auto` for R2, path-style `endpoint/bucket/key`). The R2 binding reads and writes objects
// but cannot presign, and AssemblyAI must download the recording itself.

/** RFC 3986 unreserved characters stay; every other byte is %XX (upper case), as SigV4 requires. */
export function uriEncode(text: string, keepSlash: boolean): string {
  let out = "";
  for (const byte of new TextEncoder().encode(text)) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-._~]/.test(c) || (keepSlash && c === "/")) out += c;
    else out += `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

const enc = new TextEncoder();
const hex = (buffer: ArrayBuffer) => [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");

async function hmac(key: ArrayBuffer | Uint8Array, data: string): Promise<ArrayBuffer> {
  const k = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return crypto.subtle.sign("HMAC", k, enc.encode(data));
}

export interface PresignRequest {
  /** The object's URL without a query (`https://host/bucket/key` path style). */
  url: URL;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  expiresSeconds: number;
  now: Date;
}

/** A presigned GET of `url` valid `expiresSeconds` from `now` (unsigned payload, `host` signed). */
export async function presignGet(r: PresignRequest): Promise<string> {
  const stamp = r.now
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}/, ""); // 20130524T000000Z
  const day = stamp.slice(0, 8);
  const scope = `${day}/${r.region}/s3/aws4_request`;
  const params: [string, string][] = [
    ["X-Amz-Algorithm", "AWS4-HMAC-SHA256"],
    ["X-Amz-Credential", `${r.accessKeyId}/${scope}`],
    ["X-Amz-Date", stamp],
    ["X-Amz-Expires", String(r.expiresSeconds)],
    ["X-Amz-SignedHeaders", "host"],
  ];
  const query = params.map(([k, v]) => `${uriEncode(k, false)}=${uriEncode(v, false)}`).join("&");
  // The path as it will be sent, each segment encoded once.
  const path = uriEncode(decodeURIComponent(r.url.pathname), true);
  const canonical = ["GET", path, query, `host:${r.url.host}`, "", "host", "UNSIGNED-PAYLOAD"].join("\n");
  const toSign = ["AWS4-HMAC-SHA256", stamp, scope, hex(await crypto.subtle.digest("SHA-256", enc.encode(canonical)))].join("\n");
  let key: ArrayBuffer = await hmac(enc.encode(`AWS4${r.secretAccessKey}`), day);
  for (const part of [r.region, "s3", "aws4_request"]) key = await hmac(key, part);
  const signature = hex(await hmac(key, toSign));
  return `${r.url.protocol}//${r.url.host}${path}?${query}&X-Amz-Signature=${signature}`;
}

/** The path-style URL of `key` in `bucket` at `endpoint` (the container's R2_FORCE_PATH_STYLE). */
export function objectUrl(endpoint: string, bucket: string, key: string): URL {
  const base = endpoint.replace(/\/+$/, "");
  return new URL(`${base}/${uriEncode(bucket, false)}/${uriEncode(key, true)}`);
}
