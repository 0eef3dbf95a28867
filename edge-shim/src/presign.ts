// Owns S3 Signature Version 4 at the edge: a query-string presigned GET of one object, what the
// container's `storage::objects::presign_get` makes with the AWS SDK (region `auto` for R2,
// path-style `endpoint/bucket/key`), and header-signed S3 API requests (`s3Fetch`) for what
// the R2 binding cannot do — presign, abort the multipart uploads the container started
// (uploads.sweep, ADR 0043).

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

export interface S3Credentials {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/**
 * One S3 API request without a body, signed in the `Authorization` header (SigV4, the payload
 * hash of the empty body): `key` undefined addresses the bucket. Query parameters are sent in
 * the canonical order and encoding, so what is signed is what is sent.
 */
export async function s3Fetch(
  creds: S3Credentials,
  method: "GET" | "DELETE",
  key: string | undefined,
  query: Record<string, string>,
  now = new Date(),
): Promise<Response> {
  const base = creds.endpoint.replace(/\/+$/, "");
  const url = new URL(key === undefined ? `${base}/${uriEncode(creds.bucket, false)}` : objectUrl(base, creds.bucket, key).href);
  const path = uriEncode(decodeURIComponent(url.pathname), true);
  const canonicalQuery = Object.entries(query)
    .map(([k, v]) => [uriEncode(k, false), uriEncode(v, false)] as const)
    .sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join("&");
  const stamp = now
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}/, "");
  const day = stamp.slice(0, 8);
  const scope = `${day}/${creds.region}/s3/aws4_request`;
  const headers: [string, string][] = [
    ["host", url.host],
    ["x-amz-content-sha256", EMPTY_SHA256],
    ["x-amz-date", stamp],
  ];
  const signedHeaders = headers.map(([k]) => k).join(";");
  const canonical = [method, path, canonicalQuery, ...headers.map(([k, v]) => `${k}:${v}`), "", signedHeaders, EMPTY_SHA256].join("\n");
  const toSign = ["AWS4-HMAC-SHA256", stamp, scope, hex(await crypto.subtle.digest("SHA-256", enc.encode(canonical)))].join("\n");
  let signingKey: ArrayBuffer = await hmac(enc.encode(`AWS4${creds.secretAccessKey}`), day);
  for (const part of [creds.region, "s3", "aws4_request"]) signingKey = await hmac(signingKey, part);
  const signature = hex(await hmac(signingKey, toSign));
  return fetch(`${url.protocol}//${url.host}${path}${canonicalQuery === "" ? "" : `?${canonicalQuery}`}`, {
    method,
    headers: {
      "x-amz-content-sha256": EMPTY_SHA256,
      "x-amz-date": stamp,
      authorization: `AWS4-HMAC-SHA256 Credential=${creds.accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`,
    },
  });
}

/** The path-style URL of `key` in `bucket` at `endpoint` (the container's R2_FORCE_PATH_STYLE). */
export function objectUrl(endpoint: string, bucket: string, key: string): URL {
  const base = endpoint.replace(/\/+$/, "");
  return new URL(`${base}/${uriEncode(bucket, false)}/${uriEncode(key, true)}`);
}
