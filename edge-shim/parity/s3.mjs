// A small S3 client for the parity suite's fixtures and checks (SigV4 in the Authorization
// header, path style, node:crypto): written apart from the edge's signer (src/presign.ts) so
// the suite does not check the edge with its own code. Talks to the s3s-fs .ci/parity.sh starts.

import crypto from "node:crypto";

const sha256 = (data) => crypto.createHash("sha256").update(data).digest("hex");
const hmac = (key, data) => crypto.createHmac("sha256", key).update(data).digest();
const encode = (text, keepSlash) =>
  [...Buffer.from(text, "utf8")]
    .map((b) => {
      const c = String.fromCharCode(b);
      return /[A-Za-z0-9\-._~]/.test(c) || (keepSlash && c === "/") ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
    })
    .join("");

export function s3Client({ endpoint, bucket, accessKeyId = "cbtest", secretAccessKey = "cbtest-secret-key", region = "auto" }) {
  async function request(method, key, query = {}, body = Buffer.alloc(0)) {
    const url = new URL(endpoint);
    const path = key === undefined ? `/${encode(bucket, false)}` : `/${encode(bucket, false)}/${encode(key, true)}`;
    const canonicalQuery = Object.entries(query)
      .map(([k, v]) => [encode(k, false), encode(v, false)])
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${k}=${v}`)
      .join("&");
    const stamp = new Date()
      .toISOString()
      .replace(/[-:]/g, "")
      .replace(/\.\d{3}/, "");
    const scope = `${stamp.slice(0, 8)}/${region}/s3/aws4_request`;
    const payload = sha256(body);
    const headers = { host: url.host, "x-amz-content-sha256": payload, "x-amz-date": stamp };
    const names = Object.keys(headers).sort();
    const canonical = [method, path, canonicalQuery, ...names.map((n) => `${n}:${headers[n]}`), "", names.join(";"), payload].join("\n");
    let signing = hmac(`AWS4${secretAccessKey}`, stamp.slice(0, 8));
    for (const part of [region, "s3", "aws4_request"]) signing = hmac(signing, part);
    const signature = hmac(signing, ["AWS4-HMAC-SHA256", stamp, scope, sha256(canonical)].join("\n")).toString("hex");
    const response = await fetch(`${url.origin}${path}${canonicalQuery ? `?${canonicalQuery}` : ""}`, {
      method,
      headers: {
        "x-amz-content-sha256": payload,
        "x-amz-date": stamp,
        authorization: `AWS4-HMAC-SHA256 Credential=${accessKeyId}/${scope}, SignedHeaders=${names.join(";")}, Signature=${signature}`,
      },
      body: method === "GET" || method === "HEAD" || method === "DELETE" ? undefined : body,
    });
    const text = await response.text();
    return { status: response.status, text };
  }
  const must = async (what, promise) => {
    const r = await promise;
    if (r.status >= 300) throw new Error(`S3 ${what} answered ${r.status}: ${r.text.slice(0, 200)}`);
    return r;
  };
  const tags = (text, name) => [...text.matchAll(new RegExp(`<${name}>([^<]*)</${name}>`, "g"))].map((m) => m[1]);
  return {
    createBucket: () => request("PUT", undefined),
    remove: (key) => must(`DELETE ${key}`, request("DELETE", key)),
    put: (key, body) => must(`PUT ${key}`, request("PUT", key, {}, Buffer.from(body))),
    /** Starts a multipart upload of `key` with one part; returns its upload id. */
    async startUpload(key) {
      const created = await must(`CreateMultipartUpload ${key}`, request("POST", key, { uploads: "" }));
      const [uploadId] = tags(created.text, "UploadId");
      await must(`UploadPart ${key}`, request("PUT", key, { partNumber: "1", uploadId }, Buffer.alloc(1024, 7)));
      return uploadId;
    },
    /** Parts of an upload; 0 when S3 no longer knows it (NoSuchUpload). */
    async parts(key, uploadId) {
      const r = await request("GET", key, { uploadId });
      if (r.status === 404 && r.text.includes("NoSuchUpload")) return 0;
      if (r.status >= 300) throw new Error(`S3 ListParts answered ${r.status}: ${r.text.slice(0, 200)}`);
      return tags(r.text, "PartNumber").length;
    },
    /** Every key under `prefix`, sorted. */
    async keys(prefix) {
      return (await this.objects(prefix)).map((o) => o.key);
    },
    /** Every object under `prefix` (`{key, lastModified}`), sorted by key. */
    async objects(prefix) {
      const out = [];
      let token;
      do {
        const query = { "list-type": "2", prefix };
        if (token) query["continuation-token"] = token;
        const r = await must("ListObjectsV2", request("GET", undefined, query));
        for (const [, block] of r.text.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)) {
          out.push({ key: tags(block, "Key")[0].replace(/&amp;/g, "&"), lastModified: tags(block, "LastModified")[0] });
        }
        token = r.text.includes("<IsTruncated>true</IsTruncated>") ? tags(r.text, "NextContinuationToken")[0] : undefined;
      } while (token);
      return out.sort((a, b) => (a.key < b.key ? -1 : 1));
    },
  };
}
