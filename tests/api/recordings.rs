//! Recordings against the real S3 server (s3s-fs verifies SigV4, presigned signatures and
//! their expiry, and has no bucket versioning, like R2): bytes round-trip through every upload
//! path; presigned GETs work and are refused once tampered with or expired; aborted uploads
//! leave no parts; non-audio is refused; other organisations see 404; the Telnyx import and
//! the post-call transcript run end to end on the simulators; the cron purges.

use crate::common;

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata as _;
use common::authjs::Session;
use common::{TestApp, assert_problem};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

const MIB: usize = 1024 * 1024;
const PART: &str = "5242880";

/// A WAV header followed by `len - 44` pseudo-random bytes (incompressible, unique).
fn wav_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((len - 8) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&((len - 44) as u32).to_le_bytes());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes()[..(len - out.len()).min(8)]);
    }
    out
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn upload(
    app: &TestApp,
    session: &Session,
    query: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    app.request_as(Method::POST, session, &format!("/api/recordings{query}"))
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn fetch(url: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).send().await.unwrap()
}

async fn object_key(app: &TestApp, recording: &str, version: i32) -> String {
    app.db()
        .await
        .query_one(
            "select object_key from recording_versions where recording_id = $1 and version = $2",
            &[&recording.parse::<Uuid>().unwrap(), &version],
        )
        .await
        .unwrap()
        .get("object_key")
}

async fn object_exists(app: &TestApp, key: &str) -> bool {
    let storage = &app.state.storage;
    match storage
        .client()
        .head_object()
        .bucket(storage.bucket())
        .key(key)
        .send()
        .await
    {
        Ok(_) => true,
        Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => false,
        Err(error) => panic!("HEAD {key}: {error:?}"),
    }
}

async fn objects_under(app: &TestApp, prefix: &str) -> Vec<String> {
    let storage = &app.state.storage;
    let listed = storage
        .client()
        .list_objects_v2()
        .bucket(storage.bucket())
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

/// Parts the server holds for an upload (s3s-fs lists them from disk; none once aborted).
async fn parts_of(app: &TestApp, key: &str, upload_id: &str) -> usize {
    let storage = &app.state.storage;
    match storage
        .client()
        .list_parts()
        .bucket(storage.bucket())
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(listed) => listed.parts().len(),
        Err(error) if error.code() == Some("NoSuchUpload") => 0,
        Err(error) => panic!("ListParts: {error:?}"),
    }
}

/// ListMultipartUploads where the server implements it (R2 and S3 do; s3s-fs 0.14 answers
/// NotImplemented, and `parts_of` is the check there).
async fn multipart_uploads_listed(app: &TestApp) -> Option<usize> {
    let storage = &app.state.storage;
    match storage
        .client()
        .list_multipart_uploads()
        .bucket(storage.bucket())
        .send()
        .await
    {
        Ok(listed) => Some(listed.uploads().len()),
        Err(error) if error.code() == Some("NotImplemented") => None,
        Err(error) => panic!("ListMultipartUploads: {error:?}"),
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn insert_call(app: &TestApp, org: Uuid, status: &str) -> Uuid {
    let id = Uuid::now_v7();
    app.db()
        .await
        .execute(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status)
             values ($1, $2, 'outbound', '+14155550100', '+14155550123', $3)",
            &[&id, &org, &status],
        )
        .await
        .unwrap();
    id
}

/// Issue 14 item 7: an organisation cannot store more than RECORDINGS_QUOTA_BYTES_PER_ORG,
/// streamed or direct; another organisation is unaffected.
#[tokio::test]
async fn uploads_stop_at_the_organisations_storage_quota() {
    let first = wav_bytes(2000, 1);
    let quota = (first.len() * 3 / 2).to_string();
    let app = TestApp::spawn_with(&[("RECORDINGS_QUOTA_BYTES_PER_ORG", quota.as_str())]).await;
    let ada = app.sign_in("Ada").await;
    assert_eq!(
        upload(&app, &ada, "", "audio/wav", first.clone())
            .await
            .status(),
        201
    );
    let problem = assert_problem(
        upload(&app, &ada, "", "audio/wav", first.clone()).await,
        413,
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("RECORDINGS_QUOTA_BYTES_PER_ORG"),
        "{problem}"
    );
    let direct = app
        .request_as(Method::POST, &ada, "/api/recordings/upload-url")
        .json(&json!({"content_type": "audio/wav", "size_bytes": first.len()}))
        .send()
        .await
        .unwrap();
    assert_problem(direct, 413).await;
    assert_eq!(
        app.count("select count(*) from recordings", &[]).await,
        1,
        "nothing kept"
    );
    let bob = app.sign_in("Bob").await;
    assert_eq!(
        upload(&app, &bob, "", "audio/wav", first).await.status(),
        201
    );
}

/// Issue 14 item 10: any member may store a new recording, but only an admin (or owner) may
/// add a version to an existing one — a version replaces what everyone hears by default.
#[tokio::test]
async fn only_admins_add_a_version_to_an_existing_recording() {
    let app = TestApp::spawn().await;
    let ada = app.sign_in("Ada").await;
    let org = app.organisation_of(&ada).await;
    let created: Value = upload(&app, &ada, "", "audio/wav", wav_bytes(500, 1))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let bob = app.sign_in("Bob").await;
    app.db()
        .await
        .execute(
            "insert into memberships (organisation_id, user_id, role) values ($1, $2, 'member')",
            &[&org, &bob.user_id],
        )
        .await
        .unwrap();
    let as_bob = |query: String| {
        app.request_as(Method::POST, &bob, &format!("/api/recordings{query}"))
            .header("x-org-id", org.to_string())
            .header("content-type", "audio/wav")
            .body(wav_bytes(500, 1))
            .send()
    };
    assert_eq!(
        as_bob(String::new()).await.unwrap().status(),
        201,
        "a new recording"
    );
    let problem = assert_problem(as_bob(format!("?recording_id={id}")).await.unwrap(), 403).await;
    assert!(problem["detail"].as_str().unwrap().contains("admin"));
    let direct = app
        .request_as(Method::POST, &bob, "/api/recordings/upload-url")
        .header("x-org-id", org.to_string())
        .json(&serde_json::json!({"content_type": "audio/wav", "size_bytes": 1000, "recording_id": id}))
        .send()
        .await
        .unwrap();
    assert_problem(direct, 403).await;
    assert_eq!(
        app.count(
            &format!("select count(*) from recording_versions where recording_id = '{id}'"),
            &[]
        )
        .await,
        1,
        "no version was added"
    );
    // The owner may.
    let response = upload(
        &app,
        &ada,
        &format!("?recording_id={id}"),
        "audio/wav",
        wav_bytes(500, 1),
    )
    .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn streamed_upload_round_trips_in_equal_parts_and_new_uploads_are_new_versions() {
    let app = TestApp::spawn_with(&[("RECORDINGS_PART_SIZE_BYTES", PART)]).await;
    let ada = app.sign_in("Ada").await;
    let org = app.organisation_of(&ada).await;
    let original = wav_bytes(12 * MIB + 12_345, 1);

    let response = upload(&app, &ada, "", "audio/wav", original.clone()).await;
    assert_eq!(response.status(), 201);
    let recording: Value = response.json().await.unwrap();
    let id = recording["id"].as_str().unwrap().to_owned();
    assert_eq!(recording["source"], "upload");
    assert_eq!(recording["versions"].as_array().unwrap().len(), 1);
    let v1 = &recording["versions"][0];
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["content_type"], "audio/wav");
    assert_eq!(v1["size_bytes"], original.len());
    assert_eq!(v1["sha256"], sha256(&original));

    // The layout, and three parts of 5 MiB, 5 MiB and the rest (multipart ETag "…-3").
    let key = object_key(&app, &id, 1).await;
    assert_eq!(key, format!("orgs/{org}/calls/none/recordings/{id}/v1.wav"));
    let storage = &app.state.storage;
    let head = storage
        .client()
        .head_object()
        .bucket(storage.bucket())
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(original.len() as i64));
    assert!(
        head.e_tag().unwrap().trim_matches('"').ends_with("-3"),
        "{:?}",
        head.e_tag()
    );
    assert_eq!(head.content_type(), Some("audio/wav"));

    // Metadata with a presigned GET (default 300 s) that returns the same bytes.
    let detail: Value = app
        .get_as(&ada, &format!("/api/recordings/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let url = detail["download"]["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Expires=300"), "{url}");
    assert_eq!(detail["download"]["version"], 1);
    let fetched = fetch(url).await;
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), original.as_slice());

    // A new upload of the same recording is version 2; version 1 is untouched.
    let second = wav_bytes(1000, 2);
    let response = upload(
        &app,
        &ada,
        &format!("?recording_id={id}"),
        "audio/x-wav",
        second.clone(),
    )
    .await;
    assert_eq!(response.status(), 201);
    let recording: Value = response.json().await.unwrap();
    let versions = recording["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["sha256"], sha256(&second));
    assert_eq!(
        object_key(&app, &id, 2).await,
        format!("orgs/{org}/calls/none/recordings/{id}/v2.wav")
    );
    let redirect = app
        .get_as(&ada, &format!("/api/recordings/{id}/download"))
        .await;
    assert_eq!(redirect.status(), 302);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        fetch(&location).await.bytes().await.unwrap().as_ref(),
        second.as_slice()
    );
    let redirect = app
        .get_as(&ada, &format!("/api/recordings/{id}/download?version=1"))
        .await;
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    let v1_bytes = fetch(&location).await.bytes().await.unwrap();
    assert_eq!(sha256(&v1_bytes), sha256(&original));

    // Tied to a call: the key says so and the call lists it.
    let call = insert_call(&app, org, "ended").await;
    let response = upload(
        &app,
        &ada,
        &format!("?call_id={call}"),
        "audio/wav",
        wav_bytes(4000, 3),
    )
    .await;
    assert_eq!(response.status(), 201);
    let on_call: Value = response.json().await.unwrap();
    let on_call_id = on_call["id"].as_str().unwrap().to_owned();
    assert!(
        object_key(&app, &on_call_id, 1)
            .await
            .starts_with(&format!("orgs/{org}/calls/{call}/recordings/"))
    );
    let listed: Value = app
        .get_as(&ada, &format!("/api/calls/{call}/recordings"))
        .await
        .json()
        .await
        .unwrap();
    let listed = listed["recordings"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], on_call_id.as_str());
}

#[tokio::test]
async fn direct_upload_round_trips_and_complete_checks_the_object() {
    let app = TestApp::spawn().await;
    let ada = app.sign_in("Ada").await;
    let org = app.organisation_of(&ada).await;
    let bytes = wav_bytes(300_000, 4);

    let response = app
        .request_as(Method::POST, &ada, "/api/recordings/upload-url")
        .json(&json!({"content_type": "audio/wav", "size_bytes": bytes.len()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let grant: Value = response.json().await.unwrap();
    let id = grant["recording_id"].as_str().unwrap().to_owned();
    assert_eq!(grant["version"], 1);
    assert_eq!(grant["method"], "PUT");
    let url = grant["upload_url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Expires=600"), "{url}");
    assert_eq!(grant["headers"]["content-type"], "audio/wav");
    let staging: String = app
        .db()
        .await
        .query_one(
            "select staging_key from recording_versions where recording_id = $1",
            &[&id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get("staging_key");
    assert!(staging.starts_with(&format!("incoming/{org}/{id}/v1-")));

    // Nothing uploaded yet.
    let complete = |version: i64| {
        app.request_as(
            Method::POST,
            &ada,
            &format!("/api/recordings/{id}/complete"),
        )
        .json(&json!({"version": version}))
        .send()
    };
    assert_problem(complete(1).await.unwrap(), 409).await;

    // The content type is bound into the signature: another one is refused by the server.
    let http = reqwest::Client::new();
    let wrong = http
        .put(url)
        .header("content-type", "audio/mpeg")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403, "{}", wrong.text().await.unwrap());
    assert!(!object_exists(&app, &staging).await);

    let put = http
        .put(url)
        .header("content-type", "audio/wav")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    let response = complete(1).await.unwrap();
    assert_eq!(response.status(), 200);
    let recording: Value = response.json().await.unwrap();
    assert_eq!(recording["source"], "direct");
    assert_eq!(recording["versions"][0]["size_bytes"], bytes.len());
    assert_eq!(recording["versions"][0]["sha256"], sha256(&bytes));
    // Copied to its immutable key; the staging object is gone.
    let key = object_key(&app, &id, 1).await;
    assert_eq!(key, format!("orgs/{org}/calls/none/recordings/{id}/v1.wav"));
    assert!(object_exists(&app, &key).await);
    assert!(!object_exists(&app, &staging).await);
    let detail: Value = app
        .get_as(&ada, &format!("/api/recordings/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let fetched = fetch(detail["download"]["url"].as_str().unwrap()).await;
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // Completing again changes nothing.
    let again: Value = complete(1).await.unwrap().json().await.unwrap();
    assert_eq!(again["versions"].as_array().unwrap().len(), 1);
    assert_problem(complete(7).await.unwrap(), 404).await;

    // A size other than announced is refused (and can be fixed by re-uploading).
    let grant: Value = app
        .request_as(Method::POST, &ada, "/api/recordings/upload-url")
        .json(&json!({"content_type": "audio/wav", "size_bytes": 5000, "recording_id": id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(grant["version"], 2);
    let url = grant["upload_url"].as_str().unwrap();
    let short = wav_bytes(4000, 5);
    http.put(url)
        .header("content-type", "audio/wav")
        .body(short)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(complete(2).await.unwrap(), 409).await;
    assert!(problem["detail"].as_str().unwrap().contains("4000"));
    let exact = wav_bytes(5000, 6);
    http.put(url)
        .header("content-type", "audio/wav")
        .body(exact.clone())
        .send()
        .await
        .unwrap();
    let recording: Value = complete(2).await.unwrap().json().await.unwrap();
    assert_eq!(recording["versions"][1]["sha256"], sha256(&exact));

    // A `complete` cut short after its copy (timeout, crash) can simply be called again.
    let third = wav_bytes(7000, 12);
    let grant: Value = app
        .request_as(Method::POST, &ada, "/api/recordings/upload-url")
        .json(&json!({"content_type": "audio/wav", "size_bytes": third.len(), "recording_id": id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    http.put(grant["upload_url"].as_str().unwrap())
        .header("content-type", "audio/wav")
        .body(third.clone())
        .send()
        .await
        .unwrap();
    let staging: String = app
        .db()
        .await
        .query_one(
            "select staging_key from recording_versions where recording_id = $1 and version = 3",
            &[&id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get("staging_key");
    let key = object_key(&app, &id, 3).await;
    callbridge::storage::objects::copy(&app.state.storage, &staging, &key)
        .await
        .unwrap();
    callbridge::storage::objects::delete(&app.state.storage, &staging)
        .await
        .unwrap();
    let recording: Value = complete(3).await.unwrap().json().await.unwrap();
    assert_eq!(recording["versions"][2]["sha256"], sha256(&third));
}

#[tokio::test]
async fn presigned_gets_are_refused_by_the_server_when_tampered_with_or_expired() {
    let app = TestApp::spawn_with(&[("RECORDINGS_PRESIGN_GET_SECS", "4")]).await;
    let ada = app.sign_in("Ada").await;
    let bytes = wav_bytes(10_000, 7);
    let recording: Value = upload(&app, &ada, "", "audio/wav", bytes.clone())
        .await
        .json()
        .await
        .unwrap();
    let id = recording["id"].as_str().unwrap();
    let detail: Value = app
        .get_as(&ada, &format!("/api/recordings/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let url = detail["download"]["url"].as_str().unwrap().to_owned();
    assert!(url.contains("X-Amz-Expires=4"), "{url}");
    let ok = fetch(&url).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // A different signature, or the same signature for another key, is refused.
    let (head, signature) = url.split_once("X-Amz-Signature=").unwrap();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    let tampered = format!("{head}X-Amz-Signature={flipped}{}", &signature[1..]);
    assert_eq!(fetch(&tampered).await.status(), 403);
    let other_key = url.replacen("/v1.wav", "/v2.wav", 1);
    assert_ne!(other_key, url);
    assert_eq!(fetch(&other_key).await.status(), 403);
    let longer = url.replacen("X-Amz-Expires=4", "X-Amz-Expires=3600", 1);
    assert_eq!(fetch(&longer).await.status(), 403);

    tokio::time::sleep(Duration::from_millis(5500)).await;
    let expired = fetch(&url).await;
    assert_eq!(expired.status(), 403);
    assert!(expired.text().await.unwrap().contains("expired"));
}

/// Opens a raw HTTP/1.1 upload so the test controls exactly when the client goes away.
async fn raw_upload_head(app: &TestApp, session: &Session, extra: &str) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/recordings HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: authjs.session-token={}\r\n\
         Origin: https://app.example.com\r\nContent-Type: audio/wav\r\n{extra}\r\n",
        session.token
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
}

async fn read_status(socket: &mut tokio::net::TcpStream) -> Option<u16> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buffer);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_no_parts_behind() {
    let app = TestApp::spawn_with(&[("RECORDINGS_PART_SIZE_BYTES", PART)]).await;
    let ada = app.sign_in("Ada").await;
    let org = app.organisation_of(&ada).await;
    let body = wav_bytes(20 * MIB, 8);
    let mut socket =
        raw_upload_head(&app, &ada, &format!("Content-Length: {}\r\n", body.len())).await;
    socket.write_all(&body[..11 * MIB]).await.unwrap();

    // The upload is under way: a multipart upload with parts on the server.
    let db = app.db().await;
    let mut upload: Option<(String, String)> = None;
    for _ in 0..200 {
        let row = db
            .query_opt("select upload_id, object_key from multipart_uploads", &[])
            .await
            .unwrap();
        upload = row.map(|r| (r.get("upload_id"), r.get("object_key")));
        if upload.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (upload_id, key) = upload.expect("a multipart upload started");
    assert!(key.starts_with(&format!("orgs/{org}/calls/none/recordings/")));
    let (app_ref, key_ref, id_ref) = (&app, &key, &upload_id);
    wait_until("a part on the server", move || async move {
        parts_of(app_ref, key_ref, id_ref).await >= 1
    })
    .await;

    drop(socket);

    let app_ref = &app;
    wait_until("the abort", move || async move {
        app_ref
            .count("select count(*) from multipart_uploads", &[])
            .await
            == 0
    })
    .await;
    assert_eq!(
        parts_of(&app, &key, &upload_id).await,
        0,
        "parts left behind"
    );
    if let Some(open) = multipart_uploads_listed(&app).await {
        assert_eq!(open, 0, "ListMultipartUploads is not empty");
    }
    assert!(objects_under(&app, "orgs/").await.is_empty());
    assert_eq!(
        app.count(
            "select count(*) from recording_versions where status = 'stored'",
            &[]
        )
        .await,
        0
    );
}

#[tokio::test]
async fn the_size_limit_is_enforced_while_streaming_and_leaves_nothing() {
    let app = TestApp::spawn_with(&[
        ("RECORDINGS_PART_SIZE_BYTES", PART),
        ("RECORDINGS_MAX_BYTES", "6291456"),
    ])
    .await;
    let ada = app.sign_in("Ada").await;

    // Announced too large: refused before a byte is read.
    let mut socket = raw_upload_head(&app, &ada, "Content-Length: 7340032\r\n").await;
    assert_eq!(read_status(&mut socket).await, Some(413));

    // Chunked, no length: refused once the limit is crossed, after a part was sent.
    let socket = raw_upload_head(&app, &ada, "Transfer-Encoding: chunked\r\n").await;
    let (mut reader, mut writer) = socket.into_split();
    let body = wav_bytes(12 * MIB, 9);
    let sender = tokio::spawn(async move {
        for piece in body.chunks(MIB / 2) {
            let frame = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
    });
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(15), reader.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    sender.abort();

    let app_ref = &app;
    wait_until("the abort", move || async move {
        app_ref
            .count("select count(*) from multipart_uploads", &[])
            .await
            == 0
    })
    .await;
    assert!(objects_under(&app, "orgs/").await.is_empty());
    if let Some(open) = multipart_uploads_listed(&app).await {
        assert_eq!(open, 0);
    }
    assert_eq!(app.count("select count(*) from recordings", &[]).await, 0);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("recording_uploads_aborted_total") && !l.ends_with(" 0")),
        "no abort counted"
    );
}

/// A body that trickles in over about 2.4 s.
fn slow_body(bytes: Vec<u8>) -> reqwest::Body {
    let pieces: Vec<Vec<u8>> = bytes
        .chunks(bytes.len().div_ceil(8))
        .map(<[u8]>::to_vec)
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::unfold(
        pieces.into_iter(),
        |mut pieces| async move {
            let piece = pieces.next()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some((Ok::<_, std::io::Error>(piece), pieces))
        },
    ))
}

#[tokio::test]
async fn a_long_upload_has_its_own_timeout_instead_of_the_global_one() {
    // The global request timeout is 1 s; the upload takes longer and still succeeds.
    let app = TestApp::spawn_with(&[("HTTP_REQUEST_TIMEOUT_SECS", "1")]).await;
    let ada = app.sign_in("Ada").await;
    let bytes = wav_bytes(64 * 1024, 13);
    let response = app
        .request_as(Method::POST, &ada, "/api/recordings")
        .header("content-type", "audio/wav")
        .body(slow_body(bytes.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let recording: Value = response.json().await.unwrap();
    assert_eq!(recording["versions"][0]["sha256"], sha256(&bytes));

    // The upload's own timeout applies to it.
    let app = TestApp::spawn_with(&[("RECORDINGS_UPLOAD_TIMEOUT_SECS", "1")]).await;
    let ada = app.sign_in("Ada").await;
    let response = app
        .request_as(Method::POST, &ada, "/api/recordings")
        .header("content-type", "audio/wav")
        .body(slow_body(bytes))
        .send()
        .await
        .unwrap();
    assert_problem(response, 504).await;
    // Cut off: nothing stored (a reserved version stays pending until the cron sweeps it).
    assert_eq!(
        app.count(
            "select count(*) from recording_versions where status = 'stored'",
            &[]
        )
        .await,
        0
    );
    assert!(objects_under(&app, "orgs/").await.is_empty());
}

#[tokio::test]
async fn non_audio_is_rejected_by_header_and_by_bytes() {
    let app = TestApp::spawn().await;
    let ada = app.sign_in("Ada").await;

    assert_problem(
        upload(&app, &ada, "", "text/plain", b"hello".to_vec()).await,
        415,
    )
    .await;
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR and more bytes".to_vec();
    let problem = assert_problem(upload(&app, &ada, "", "audio/wav", png).await, 415).await;
    assert!(problem["detail"].as_str().unwrap().contains("not audio"));
    // WAV bytes declared as MP3.
    assert_problem(
        upload(&app, &ada, "", "audio/mpeg", wav_bytes(2000, 10)).await,
        415,
    )
    .await;
    assert_problem(upload(&app, &ada, "", "audio/wav", Vec::new()).await, 400).await;
    // Each real format passes.
    for (content_type, magic) in [
        ("audio/ogg", &b"OggS\x00\x02\x00\x00\x00\x00\x00\x00"[..]),
        ("audio/flac", &b"fLaC\x00\x00\x00\x22\x10\x00\x10\x00"[..]),
        ("audio/mpeg", &b"ID3\x04\x00\x00\x00\x00\x00\x00"[..]),
        (
            "audio/webm",
            &[0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42, 0x86, 0x81][..],
        ),
    ] {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&[7u8; 500]);
        assert_eq!(
            upload(&app, &ada, "", content_type, bytes).await.status(),
            201,
            "{content_type}"
        );
    }
    assert_eq!(app.count("select count(*) from recordings", &[]).await, 4);

    // Direct uploads: the declared type, then the bytes once uploaded.
    let response = app
        .request_as(Method::POST, &ada, "/api/recordings/upload-url")
        .json(&json!({"content_type": "application/pdf", "size_bytes": 10}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 415).await;
    let text = b"this is plainly not a recording".to_vec();
    let grant: Value = app
        .request_as(Method::POST, &ada, "/api/recordings/upload-url")
        .json(&json!({"content_type": "audio/wav", "size_bytes": text.len()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let put = reqwest::Client::new()
        .put(grant["upload_url"].as_str().unwrap())
        .header("content-type", "audio/wav")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let id = grant["recording_id"].as_str().unwrap();
    let response = app
        .request_as(
            Method::POST,
            &ada,
            &format!("/api/recordings/{id}/complete"),
        )
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 415).await;
    assert!(objects_under(&app, "incoming/").await.is_empty());
    assert_eq!(app.count("select count(*) from recordings", &[]).await, 4);
}

#[tokio::test]
async fn another_organisations_recordings_are_404() {
    let app = TestApp::spawn().await;
    let ada = app.sign_in("Ada").await;
    let eve = app.sign_in("Eve").await;
    let ada_org = app.organisation_of(&ada).await;
    let call = insert_call(&app, ada_org, "ended").await;
    let recording: Value = upload(
        &app,
        &ada,
        &format!("?call_id={call}"),
        "audio/wav",
        wav_bytes(5000, 11),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = recording["id"].as_str().unwrap();
    assert_eq!(
        app.get_as(&ada, &format!("/api/recordings/{id}"))
            .await
            .status(),
        200
    );

    for path in [
        format!("/api/recordings/{id}"),
        format!("/api/recordings/{id}/download"),
        format!("/api/calls/{call}/recordings"),
        format!("/api/calls/{call}/transcript"),
    ] {
        assert_problem(app.get_as(&eve, &path).await, 404).await;
    }
    assert_problem(
        upload(
            &app,
            &eve,
            &format!("?recording_id={id}"),
            "audio/wav",
            wav_bytes(100, 1),
        )
        .await,
        404,
    )
    .await;
    assert_problem(
        upload(
            &app,
            &eve,
            &format!("?call_id={call}"),
            "audio/wav",
            wav_bytes(100, 1),
        )
        .await,
        404,
    )
    .await;
    let complete = app
        .request_as(
            Method::POST,
            &eve,
            &format!("/api/recordings/{id}/complete"),
        )
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(complete, 404).await;
    let grant = app
        .request_as(Method::POST, &eve, "/api/recordings/upload-url")
        .json(&json!({"content_type": "audio/wav", "size_bytes": 10, "recording_id": id}))
        .send()
        .await
        .unwrap();
    assert_problem(grant, 404).await;
    // Naming Ada's organisation does not help Eve.
    let response = app
        .client
        .get(app.url(&format!("/api/recordings/{id}")))
        .header("cookie", format!("authjs.session-token={}", eve.token))
        .header("x-org-id", ada_org.to_string())
        .send()
        .await
        .unwrap();
    assert_problem(response, 404).await;
    assert_eq!(
        app.count("select count(*) from recording_versions", &[])
            .await,
        1
    );
}

#[tokio::test]
async fn the_cron_purges_expired_recordings_sweeps_stale_calls_and_reports_dead_jobs() {
    let app = TestApp::spawn_with(&[
        ("RECORDINGS_RETENTION_DAYS", "30"),
        ("CRON_STALE_CALL_MINUTES", "60"),
    ])
    .await;
    let ada = app.sign_in("Ada").await;
    let org = app.organisation_of(&ada).await;
    let mut ids = Vec::new();
    for seed in 0..2 {
        let recording: Value = upload(&app, &ada, "", "audio/wav", wav_bytes(3000, seed))
            .await
            .json()
            .await
            .unwrap();
        ids.push(recording["id"].as_str().unwrap().to_owned());
    }
    let keys = [
        object_key(&app, &ids[0], 1).await,
        object_key(&app, &ids[1], 1).await,
    ];
    let db = app.db().await;
    let db_ref = &db;
    let backdate = move |id: &str, days: i32| {
        let id: Uuid = id.parse().unwrap();
        let db = db_ref;
        async move {
            db.execute(
                "update recordings set created_at = now() - make_interval(days => $2) where id = $1",
                &[&id, &days],
            )
            .await
            .unwrap();
        }
    };
    backdate(&ids[0], 31).await;
    backdate(&ids[1], 29).await;
    db.execute(
        "insert into post_call_transcripts (recording_id, version, organisation_id, status)
         values ($1, 1, $2, 'submitted')",
        &[&ids[0].parse::<Uuid>().unwrap(), &org],
    )
    .await
    .unwrap();
    let stale = insert_call(&app, org, "dialing").await;
    let fresh = insert_call(&app, org, "answered").await;
    // A long call, untouched by Telnyx for hours, whose media bridge is alive.
    let long = insert_call(&app, org, "answered").await;
    db.execute(
        "update calls set updated_at = now() - interval '3 hours' where id = $1",
        &[&long],
    )
    .await
    .unwrap();
    db.execute(
        "insert into media_streams (call_id, replica) values ($1, 'replica-a')",
        &[&long],
    )
    .await
    .unwrap();
    db.execute(
        "update calls set updated_at = now() - interval '2 hours' where id = $1",
        &[&stale],
    )
    .await
    .unwrap();
    db.execute(
        "insert into jobs (kind, status, last_error) values ('test.kind', 'dead', 'boom'), ('test.kind', 'dead', 'boom')",
        &[],
    )
    .await
    .unwrap();
    // A multipart upload a crashed process left behind, with a part on the server.
    let storage = &app.state.storage;
    let orphan_key = format!("orgs/{org}/calls/none/recordings/{}/v1.wav", Uuid::now_v7());
    let created = storage
        .client()
        .create_multipart_upload()
        .bucket(storage.bucket())
        .key(&orphan_key)
        .send()
        .await
        .unwrap();
    let orphan_id = created.upload_id().unwrap().to_owned();
    storage
        .client()
        .upload_part()
        .bucket(storage.bucket())
        .key(&orphan_key)
        .upload_id(&orphan_id)
        .part_number(1)
        .body(aws_sdk_s3::primitives::ByteStream::from(vec![1u8; 1000]))
        .send()
        .await
        .unwrap();
    db.execute(
        "insert into multipart_uploads (upload_id, object_key, started_at) values ($1, $2, now() - interval '2 days')",
        &[&orphan_id, &orphan_key],
    )
    .await
    .unwrap();
    assert_eq!(parts_of(&app, &orphan_key, &orphan_id).await, 1);

    // Another replica holding the lock: this one skips the tick.
    let other =
        tokio_postgres::connect(&common::database_url(&app.database), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(other.1);
    other
        .0
        .execute(
            "select pg_advisory_lock($1)",
            &[&callbridge::cron::LOCK_KEY],
        )
        .await
        .unwrap();
    assert!(
        callbridge::cron::run_once(&app.state)
            .await
            .unwrap()
            .is_none()
    );
    assert!(object_exists(&app, &keys[0]).await);
    other
        .0
        .execute(
            "select pg_advisory_unlock($1)",
            &[&callbridge::cron::LOCK_KEY],
        )
        .await
        .unwrap();

    // Tasks the manifest gives the edge are not run here (the Worker's Cron Trigger runs them);
    // uploads.sweep is not given to the edge by this manifest, so it runs here.
    let edge_owned = callbridge::strangler::Manifest::parse(
        r#"{"routes": [], "cron": [{"task": "retention.purge", "owner": "edge"},
            {"task": "calls.stale_sweep", "owner": "edge"}, {"task": "jobs.dead_report", "owner": "edge"},
            {"task": "usage.metering", "owner": "edge"}]}"#,
    )
    .unwrap();
    let skipped = callbridge::cron::tick_for(&app.state, &edge_owned)
        .await
        .unwrap();
    assert_eq!(
        skipped,
        callbridge::cron::Report {
            uploads_aborted: 1,
            ..callbridge::cron::Report::default()
        }
    );
    assert!(object_exists(&app, &keys[0]).await);

    let report = callbridge::cron::run_once(&app.state)
        .await
        .unwrap()
        .expect("the lock is free");
    assert_eq!(report.recordings_purged, 1);
    assert_eq!(report.objects_deleted, 1);
    assert_eq!(report.stale_calls_failed, 1);
    // The tick above swept the orphaned upload already.
    assert_eq!(report.uploads_aborted, 0);
    assert_eq!(report.dead_jobs.get("test.kind"), Some(&2));
    // Objects and rows of the expired recording are gone; the other is kept.
    assert!(!object_exists(&app, &keys[0]).await);
    assert!(object_exists(&app, &keys[1]).await);
    let id0: Uuid = ids[0].parse().unwrap();
    for table in [
        "recordings where id",
        "recording_versions where recording_id",
        "post_call_transcripts where recording_id",
    ] {
        let n: i64 = db
            .query_one(&format!("select count(*) from {table} = $1"), &[&id0])
            .await
            .unwrap()
            .get("count");
        assert_eq!(n, 0, "{table}");
    }
    assert_problem(
        app.get_as(&ada, &format!("/api/recordings/{id0}")).await,
        404,
    )
    .await;
    assert_eq!(parts_of(&app, &orphan_key, &orphan_id).await, 0);
    let status = move |id: Uuid| {
        let db = db_ref;
        async move {
            let row = db
                .query_one(
                    "select status, failure_reason from calls where id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (
                row.get::<_, String>("status"),
                row.get::<_, Option<String>>("failure_reason"),
            )
        }
    };
    let (stale_status, reason) = status(stale).await;
    assert_eq!(stale_status, "failed");
    assert!(reason.unwrap().starts_with("stale"));
    assert_eq!(status(fresh).await.0, "answered");
    assert_eq!(status(long).await.0, "answered");
    let events: i64 = db
        .query_one(
            "select count(*) from call_events where call_id = $1 and kind = 'call.failed'",
            &[&stale],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(events, 1);

    // Retention is per organisation: a longer one keeps, a shorter one purges.
    backdate(&ids[1], 100).await;
    db.execute(
        "update organisations set recording_retention_days = 365 where id = $1",
        &[&org],
    )
    .await
    .unwrap();
    let report = callbridge::cron::run_once(&app.state)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.recordings_purged, 0);
    assert!(object_exists(&app, &keys[1]).await);
    db.execute(
        "update organisations set recording_retention_days = 60 where id = $1",
        &[&org],
    )
    .await
    .unwrap();
    let report = callbridge::cron::run_once(&app.state)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.recordings_purged, 1);
    assert!(!object_exists(&app, &keys[1]).await);
    assert!(objects_under(&app, "orgs/").await.is_empty());
}

#[cfg(feature = "sim")]
mod with_simulators {
    use super::*;
    use callbridge::sim::assemblyai_async::AssemblyAiAsyncSim;
    use callbridge::sim::recordings::{self as rec_sim, DownloadFault, RecordingServerSim};
    use callbridge::sim::telnyx as telnyx_sim;
    use common::telnyx::TelnyxApp;

    const WEBHOOK_SECRET: &str = "aai-webhook-secret-for-tests";

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    struct World {
        t: TelnyxApp,
        recordings: RecordingServerSim,
        assemblyai: AssemblyAiAsyncSim,
        port: u16,
    }

    async fn world() -> World {
        let recordings = RecordingServerSim::start(0).await.unwrap();
        let assemblyai = AssemblyAiAsyncSim::start("aai-test-key", 0).await.unwrap();
        // AssemblyAI must reach our webhook on PUBLIC_BASE_URL, so the port is chosen first.
        let port = free_port();
        let port_text = port.to_string();
        let public = format!("http://127.0.0.1:{port}");
        let base = assemblyai.api_base();
        let t = TelnyxApp::spawn_with(&[
            ("PORT", port_text.as_str()),
            ("PUBLIC_BASE_URL", public.as_str()),
            ("ASSEMBLYAI_API_KEY", "aai-test-key"),
            ("ASSEMBLYAI_API_BASE", base.as_str()),
            ("ASSEMBLYAI_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("RECORDINGS_PART_SIZE_BYTES", PART),
        ])
        .await;
        assert_eq!(t.app.port, port);
        World {
            t,
            recordings,
            assemblyai,
            port,
        }
    }

    /// Places a call through the API; returns (call id, call_control_id, client_state).
    async fn place_call(w: &World, ada: &Session) -> (String, String, String) {
        w.t.own_number(ada, "+14155550100").await;
        let call: Value =
            w.t.app
                .request_as(Method::POST, ada, "/api/calls")
                .json(
                    &json!({"to": "+14155550123", "from": "+14155550100", "source_language": "en",
                          "target_language": "de", "record": true}),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let dial = w.t.sim.commands_named("dial").pop().unwrap();
        (
            call["id"].as_str().unwrap().to_owned(),
            dial.call_control_id.unwrap(),
            dial.body["client_state"].as_str().unwrap().to_owned(),
        )
    }

    #[tokio::test]
    async fn telnyx_import_and_post_call_transcript_end_to_end() {
        let w = world().await;
        let app = &w.t.app;
        let ada = app.sign_in("Ada").await;
        let (call_id, ccid, client_state) = place_call(&w, &ada).await;
        let events = telnyx_sim::outbound_lifecycle(
            &w.t.sim,
            &ccid,
            &client_state,
            "+14155550100",
            "+14155550123",
        );
        for event in &events {
            assert_eq!(
                w.t.sim.deliver(&w.t.webhook_url(), event).await.unwrap(),
                200
            );
        }
        // A real dual-channel WAV behind a 10-minute link; the first download fails with a
        // 500 and the second is cut short: the import retries.
        let wav = rec_sim::wav(3_000, 2, 8_000);
        w.recordings.add("rec-1.wav", wav.clone());
        w.recordings.inject(DownloadFault::Status(500));
        w.recordings.inject(DownloadFault::Truncate(20_000));
        let link = w.recordings.link("rec-1.wav", Duration::from_secs(600));
        let base = telnyx_sim::call_payload(
            &ccid,
            Some(&client_state),
            "+14155550100",
            "+14155550123",
            "outgoing",
        );
        let payload = rec_sim::recording_saved_payload(&base, "rec-1", &link, None, "dual");
        // Saved twice under two event ids (a repeated event), and one delivered twice.
        let first = w.t.sim.event("call.recording.saved", payload.clone());
        let repeat = w.t.sim.event("call.recording.saved", payload);
        for event in [&first, &first, &repeat] {
            assert_eq!(
                w.t.sim.deliver(&w.t.webhook_url(), event).await.unwrap(),
                200
            );
        }
        common::telnyx::drain(app).await;

        // One recording, byte for byte, with its SHA-256.
        let listed: Value = app
            .get_as(&ada, &format!("/api/calls/{call_id}/recordings"))
            .await
            .json()
            .await
            .unwrap();
        let listed = listed["recordings"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let recording = &listed[0];
        assert_eq!(recording["source"], "telnyx");
        assert_eq!(recording["channels"], "dual");
        assert!(
            recording["leg"].is_null(),
            "a one-leg call's recording has no leg"
        );
        assert_eq!(recording["versions"][0]["sha256"], sha256(&wav));
        let id = recording["id"].as_str().unwrap();
        let org = app.organisation_of(&ada).await;
        assert_eq!(
            object_key(app, id, 1).await,
            format!("orgs/{org}/calls/{call_id}/recordings/{id}/v1.wav")
        );
        let redirect = app
            .get_as(&ada, &format!("/api/recordings/{id}/download"))
            .await;
        let location = redirect.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(
            fetch(&location).await.bytes().await.unwrap().as_ref(),
            wav.as_slice()
        );
        let statuses: Vec<u16> = w.recordings.requests().iter().map(|r| r.1).collect();
        assert_eq!(statuses, vec![500, 200, 200], "retried after each failure");
        assert_eq!(
            app.count(
                "select count(*) from jobs where kind = 'recording.import'",
                &[]
            )
            .await,
            1
        );
        assert_eq!(
            app.count("select count(*) from multipart_uploads", &[])
                .await,
            0
        );

        // Submitted once to AssemblyAI, as multichannel, with our webhook and its header.
        let submissions = w.assemblyai.submissions();
        assert_eq!(submissions.len(), 1);
        let submitted = &submissions[0];
        assert_eq!(submitted["multichannel"], true);
        assert_eq!(
            submitted["webhook_url"],
            format!("http://127.0.0.1:{}/webhooks/assemblyai", w.port)
        );
        assert_eq!(
            submitted["webhook_auth_header_name"],
            "x-callbridge-webhook-secret"
        );
        assert_eq!(submitted["webhook_auth_header_value"], WEBHOOK_SECRET);
        assert!(
            submitted["audio_url"]
                .as_str()
                .unwrap()
                .contains("X-Amz-Expires=86400")
        );
        // The simulator fetched our presigned URL, transcribed, and called our webhook.
        assert!(
            w.assemblyai
                .wait_for_webhooks(1, Duration::from_secs(20))
                .await,
            "{:?}",
            w.assemblyai.deliveries()
        );
        common::telnyx::drain(app).await;

        // Live turns from the bridge, one word different from the post-call transcript.
        let db = app.db().await;
        let call_uuid: Uuid = call_id.parse().unwrap();
        for (track, index, text, start) in [
            ("outbound", 0, "hello this is a test call", 0i64),
            ("inbound", 0, "can you hear me clearly", 2000),
            ("outbound", 1, "yes I can here you", 4000),
            ("inbound", 1, "thank you goodbye", 6000),
        ] {
            db.execute(
                "insert into transcript_turns (call_id, track, turn_index, session_id, text, start_ms, end_ms)
                 values ($1, $2, $3, 's', $4, $5::bigint, $5::bigint + 1500)",
                &[&call_uuid, &track, &index, &text, &start],
            )
            .await
            .unwrap();
        }
        let transcript: Value = app
            .get_as(&ada, &format!("/api/calls/{call_id}/transcript"))
            .await
            .json()
            .await
            .unwrap();
        let post = &transcript["post_call"];
        assert_eq!(post["status"], "completed", "{transcript}");
        assert_eq!(post["multichannel"], true);
        assert_eq!(post["audio_duration_ms"], 3000);
        assert_eq!(post["utterances"].as_array().unwrap().len(), 4);
        let words = post["words"].as_array().unwrap();
        assert_eq!(words.len(), 19);
        assert!(words.iter().any(|w| w["channel"] == "1"));
        assert!(words.iter().any(|w| w["channel"] == "2"));
        assert_eq!(transcript["live"].as_array().unwrap().len(), 4);
        let agreement = &transcript["agreement"];
        assert_eq!(agreement["method"], "lcs_dice");
        assert_eq!(agreement["live_words"], 19);
        assert_eq!(agreement["post_call_words"], 19);
        assert_eq!(agreement["common_words"], 18);
        assert!((agreement["score"].as_f64().unwrap() - 36.0 / 38.0).abs() < 1e-9);
        // The recordings list shows the same agreement for the call's one recording.
        let listed: Value = app
            .get_as(&ada, &format!("/api/calls/{call_id}/recordings"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listed["recordings"][0]["post_call_status"], "completed");
        assert_eq!(&listed["recordings"][0]["agreement"], agreement);

        // The webhook: the header is checked, and a re-delivery is a no-op.
        let delivery = &w.assemblyai.deliveries()[0];
        let body = json!({"transcript_id": delivery.transcript_id, "status": "completed"});
        let post_webhook = |secret: Option<&str>| {
            let mut request = app.client.post(app.url("/webhooks/assemblyai")).json(&body);
            if let Some(secret) = secret {
                request = request.header("x-callbridge-webhook-secret", secret);
            }
            request.send()
        };
        assert_problem(post_webhook(None).await.unwrap(), 401).await;
        assert_problem(post_webhook(Some("wrong")).await.unwrap(), 401).await;
        let again: Value = post_webhook(Some(WEBHOOK_SECRET))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(again["duplicate"], true);
        assert_eq!(
            app.count(
                "select count(*) from webhook_inbox where provider = 'assemblyai'",
                &[]
            )
            .await,
            1
        );
        assert_eq!(
            app.count("select count(*) from jobs where status = 'dead'", &[])
                .await,
            0
        );
    }

    /// Issue 14 item 10: a recording is fetched only from an allowed host over https (http on
    /// loopback in development, for the simulator), and a redirect elsewhere is not followed.
    #[tokio::test]
    async fn recordings_are_imported_only_from_allowed_hosts_without_foreign_redirects() {
        let w = world().await;
        let app = &w.t.app;
        let ada = app.sign_in("Ada").await;
        let (_, ccid, client_state) = place_call(&w, &ada).await;
        w.recordings.add("bounce.wav", rec_sim::wav(500, 1, 8_000));
        // The allowed link answers 302 to the cloud metadata service.
        w.recordings.inject(DownloadFault::Redirect(
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/".into(),
        ));
        let bounce = w.recordings.link("bounce.wav", Duration::from_secs(600));
        let base = telnyx_sim::call_payload(
            &ccid,
            Some(&client_state),
            "+14155550100",
            "+14155550123",
            "outgoing",
        );
        for (id, url) in [
            ("bounce", bounce.as_str()),
            ("metadata", "http://169.254.169.254/latest/meta-data/"),
            (
                "plain-http",
                "http://telephony-recorder-prod.s3.amazonaws.com/r.wav",
            ),
            ("foreign", "https://attacker.example/r.wav"),
            (
                "lookalike",
                "https://s3.amazonaws.com.attacker.example/r.wav",
            ),
        ] {
            let payload = rec_sim::recording_saved_payload(&base, id, url, None, "single");
            let event = w.t.sim.event("call.recording.saved", payload);
            assert_eq!(
                w.t.sim.deliver(&w.t.webhook_url(), &event).await.unwrap(),
                200
            );
        }
        common::telnyx::drain(app).await;
        let rows = app
            .db()
            .await
            .query(
                "select status, attempts, last_error from jobs where kind = 'recording.import'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 5);
        for row in &rows {
            let error: String = row.get("last_error");
            assert_eq!(row.get::<_, String>("status"), "dead", "{error}");
            assert_eq!(row.get::<_, i32>("attempts"), 1, "not retried: {error}");
            assert!(
                error.contains("redirect")
                    || error.contains("https only")
                    || error.contains("RECORDINGS_IMPORT_HOSTS"),
                "{error}"
            );
        }
        // Only the allowed link was requested, once: the redirect was not followed.
        assert_eq!(
            w.recordings.requests(),
            vec![("bounce.wav".to_string(), 302)]
        );
        assert_eq!(app.count("select count(*) from recordings", &[]).await, 0);
    }

    #[tokio::test]
    async fn an_expired_telnyx_link_is_a_permanent_failure() {
        let w = world().await;
        let app = &w.t.app;
        let ada = app.sign_in("Ada").await;
        let (_, ccid, client_state) = place_call(&w, &ada).await;
        w.recordings.add("late.wav", rec_sim::wav(500, 1, 8_000));
        let signed = chrono::Utc::now().naive_utc() - chrono::Duration::minutes(11);
        let link = w
            .recordings
            .link_signed_at("late.wav", signed, Duration::from_secs(600));
        let base = telnyx_sim::call_payload(
            &ccid,
            Some(&client_state),
            "+14155550100",
            "+14155550123",
            "outgoing",
        );
        let payload = rec_sim::recording_saved_payload(&base, "late", &link, None, "single");
        let event = w.t.sim.event("call.recording.saved", payload);
        assert_eq!(
            w.t.sim.deliver(&w.t.webhook_url(), &event).await.unwrap(),
            200
        );
        common::telnyx::drain(app).await;
        let row = app
            .db()
            .await
            .query_one(
                "select status, attempts, last_error from jobs where kind = 'recording.import'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>("status"), "dead");
        assert_eq!(row.get::<_, i32>("attempts"), 1, "not retried");
        assert!(row.get::<_, String>("last_error").contains("expired"));
        assert_eq!(w.recordings.requests(), vec![("late.wav".to_string(), 403)]);
        assert_eq!(app.count("select count(*) from recordings", &[]).await, 0);
        assert!(w.assemblyai.submissions().is_empty());
    }
}
