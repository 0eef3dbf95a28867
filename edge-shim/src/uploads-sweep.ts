// Owns the `uploads.sweep` cron task at the edge (ADR 0043): the container's `sweep_uploads`
// (src/cron.rs) step for step, through the S3 API of the recordings bucket (SigV4, src/presign.ts)
// because the R2 binding cannot abort the S3 multipart uploads the container starts:
//
// 1. every upload in `multipart_uploads` started more than a day ago (500 a tick) is aborted;
//    its row is forgotten once the abort succeeds or the upload is already gone (NoSuchUpload),
//    kept for the next tick otherwise. Each one tried counts in `uploads_aborted`, as there.
// 2. every `pending` version created more than a day ago (500 a tick): its object and staging
//    object deleted (a key outside the organisation's prefixes is left alone), then, if every
//    delete succeeded, the version released (its row, and the recording once it has none).
// 3. every staging object (`incoming/`) last modified more than a day ago is deleted, listing
//    page by page; a failed listing ends the step (the next tick tries again).
//
// Like the container it reads the uploads it started from its own table, not from
// ListMultipartUploads (which R2 answers but s3s-fs, the S3 of the tests, does not): an upload
// without a row is one the container never started.

import { belongsTo } from "./cron";
import type { Db } from "./db";
import type { Env } from "./env";
import { type S3Credentials, s3Fetch } from "./presign";

export interface UploadsSwept {
  uploads_aborted: number;
  pending_versions_dropped: number;
  staging_objects_deleted: number;
}

/** keys::STAGING_ROOT */
const STAGING_ROOT = "incoming/";
const DAY_MS = 86_400_000;

const log = (line: Record<string, unknown>) => console.log(JSON.stringify(line));

/** The bucket's S3 API as the container reaches it, or the names of the variables missing. */
export function s3Credentials(env: Env): S3Credentials | string[] {
  const missing = (["R2_ENDPOINT", "R2_BUCKET", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"] as const).filter((name) => !env[name]?.trim());
  if (missing.length > 0) return missing;
  return {
    endpoint: env.R2_ENDPOINT,
    bucket: env.R2_BUCKET,
    accessKeyId: env.R2_ACCESS_KEY_ID,
    secretAccessKey: env.R2_SECRET_ACCESS_KEY,
    region: "auto",
  };
}

/** An S3 error document's `<Code>`, if the body is one. */
async function errorCode(response: Response): Promise<string | undefined> {
  const text = await response.text().catch(() => "");
  return /<Code>([^<]*)<\/Code>/.exec(text)?.[1];
}

/** DeleteObject; true when the object is gone (S3 answers 204 for a missing key too). */
async function deleteObject(creds: S3Credentials, key: string): Promise<boolean> {
  try {
    const response = await s3Fetch(creds, "DELETE", key, {});
    await response.body?.cancel();
    if (response.ok) return true;
    log({ event: "uploads_sweep_delete_failed", key, status: response.status });
  } catch (err) {
    log({ event: "uploads_sweep_delete_failed", key, error: String(err) });
  }
  return false;
}

const unescapeXml = (text: string) =>
  text.replace(/&(#x[0-9a-fA-F]+|#\d+|amp|lt|gt|quot|apos);/g, (_, e: string) =>
    e[0] === "#"
      ? String.fromCodePoint(e[1] === "x" ? Number.parseInt(e.slice(2), 16) : Number(e.slice(1)))
      : ({ amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" } as Record<string, string>)[e]!,
  );

interface ListedPage {
  objects: { key: string; lastModified: number }[];
  next: string | undefined;
}

/** One ListObjectsV2 page under `prefix`. */
export async function listObjects(creds: S3Credentials, prefix: string, continuation: string | undefined): Promise<ListedPage> {
  const query: Record<string, string> = { "list-type": "2", prefix };
  if (continuation !== undefined) query["continuation-token"] = continuation;
  const response = await s3Fetch(creds, "GET", undefined, query);
  const text = await response.text();
  if (!response.ok) throw new Error(`ListObjectsV2 answered ${response.status}: ${text.slice(0, 200)}`);
  const tag = (block: string, name: string) => {
    const m = new RegExp(`<${name}>([^<]*)</${name}>`).exec(block);
    return m ? unescapeXml(m[1]!) : undefined;
  };
  const objects = [...text.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)].flatMap((m) => {
    const key = tag(m[1]!, "Key");
    const lastModified = Date.parse(tag(m[1]!, "LastModified") ?? "");
    return key === undefined || Number.isNaN(lastModified) ? [] : [{ key, lastModified }];
  });
  const truncated = tag(text, "IsTruncated") === "true";
  return { objects, next: truncated ? tag(text, "NextContinuationToken") : undefined };
}

/** The task; database writes go through `db` (the tick's transaction). */
export async function sweepUploads(db: Db, creds: S3Credentials): Promise<UploadsSwept> {
  const report: UploadsSwept = { uploads_aborted: 0, pending_versions_dropped: 0, staging_objects_deleted: 0 };
  const orphans = await db.query<{ upload_id: string; object_key: string }>(
    `select upload_id, object_key from multipart_uploads
     where started_at < now() - interval '1 day' limit 500`,
  );
  for (const { upload_id, object_key } of orphans.rows) {
    let forget = false;
    try {
      const response = await s3Fetch(creds, "DELETE", object_key, { uploadId: upload_id });
      forget = response.ok || (await errorCode(response)) === "NoSuchUpload";
      if (response.ok) await response.body?.cancel();
      if (!forget) log({ event: "uploads_sweep_abort_failed", key: object_key, status: response.status });
    } catch (err) {
      log({ event: "uploads_sweep_abort_failed", key: object_key, error: String(err) });
    }
    if (forget) await db.query("delete from multipart_uploads where upload_id = $1", [upload_id]);
    report.uploads_aborted += 1;
  }

  const pending = await db.query<{
    recording_id: string;
    version: number;
    object_key: string;
    staging_key: string | null;
    organisation_id: string;
  }>(
    `select v.recording_id::text as recording_id, v.version, v.object_key, v.staging_key, r.organisation_id::text as organisation_id
     from recording_versions v join recordings r on r.id = v.recording_id
     where v.status = 'pending' and v.created_at < now() - interval '1 day' limit 500`,
  );
  for (const row of pending.rows) {
    let ok = true;
    for (const key of [row.object_key, row.staging_key]) {
      if (key !== null && belongsTo(key, row.organisation_id)) ok = (await deleteObject(creds, key)) && ok;
    }
    if (!ok) continue;
    // recordings::release
    await db.query("delete from recording_versions where recording_id = $1 and version = $2 and status = 'pending'", [
      row.recording_id,
      row.version,
    ]);
    await db.query(
      `delete from recordings r where id = $1
         and not exists (select 1 from recording_versions v where v.recording_id = r.id)`,
      [row.recording_id],
    );
    report.pending_versions_dropped += 1;
  }

  // The container compares whole seconds of LastModified with now − 1 day.
  const cutoff = Date.now() - DAY_MS;
  let continuation: string | undefined;
  do {
    let page: ListedPage;
    try {
      page = await listObjects(creds, STAGING_ROOT, continuation);
    } catch (err) {
      log({ event: "uploads_sweep_list_failed", error: String(err) });
      break;
    }
    for (const object of page.objects) {
      if (Math.floor(object.lastModified / 1000) * 1000 < cutoff && (await deleteObject(creds, object.key))) {
        report.staging_objects_deleted += 1;
      }
    }
    continuation = page.next;
  } while (continuation !== undefined);
  return report;
}
