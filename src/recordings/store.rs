//! Streaming a recording into storage with flat memory (plain object operations are
//! `storage::objects`): a multipart upload of equal-sized parts
//! (R2 requires every part but the last to have the same size, docs/PROVIDERS.md §5), a SHA-256
//! computed on the way, a size limit enforced as bytes arrive, and an abort whenever the
//! upload does not complete — including when the future is dropped (client gone).
//!
//! Memory: one part being filled plus at most `concurrency` parts being sent, each exactly
//! `part_size` bytes. Nothing else is buffered.

use std::collections::VecDeque;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;

use super::format::{AudioFormat, SNIFF_LEN};
use crate::db::{Db, DbError};
use crate::retry::{self, Failure, Policy};
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the body is not audio we accept (WAV, MP3, Ogg, FLAC, WebM)")]
    NotAudio,
    #[error("the body is {sniffed:?} audio but was declared as {declared:?}")]
    Mismatch {
        declared: AudioFormat,
        sniffed: AudioFormat,
    },
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the body is empty")]
    Empty,
    #[error("no bytes arrived for {0:?}")]
    Idle(Duration),
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn storage_error<E: std::error::Error + Send + Sync + 'static>(
    error: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError {
    crate::storage::request_error(error).into()
}

impl From<StorageError> for StoreError {
    fn from(error: StorageError) -> Self {
        StoreError::Storage(match error {
            StorageError::Request(message) => message,
            other => other.to_string(),
        })
    }
}

/// How a stream is stored.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub part_size: usize,
    /// Parts sent at the same time while the next one fills.
    pub concurrency: usize,
    /// Longest wait for the next chunk of the source.
    pub idle: Duration,
}

/// What was stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub size: u64,
    pub sha256: String,
    /// 0 for a single PUT (small bodies), else the number of multipart parts.
    pub parts: usize,
}

/// A body whose first bytes were read to recognise it.
pub struct Sniffed<S> {
    pub format: AudioFormat,
    pub prefix: Bytes,
    pub rest: S,
}

async fn next_chunk<S, E>(stream: &mut S, idle: Duration) -> Result<Option<Bytes>, StoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    match tokio::time::timeout(idle, stream.next()).await {
        Err(_) => Err(StoreError::Idle(idle)),
        Ok(None) => Ok(None),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(error))) => Err(StoreError::Body(error.to_string())),
    }
}

/// Reads just enough of `stream` to recognise the audio format; nothing is stored yet, so a
/// rejected body leaves nothing behind.
pub async fn sniff<S, E>(
    mut stream: S,
    declared: Option<AudioFormat>,
    limits: &Limits,
) -> Result<Sniffed<S>, StoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut prefix = BytesMut::new();
    while prefix.len() < SNIFF_LEN {
        match next_chunk(&mut stream, limits.idle).await? {
            Some(chunk) => prefix.extend_from_slice(&chunk),
            None => break,
        }
        if prefix.len() as u64 > limits.max_bytes {
            return Err(StoreError::TooLarge {
                limit: limits.max_bytes,
            });
        }
    }
    if prefix.is_empty() {
        return Err(StoreError::Empty);
    }
    let format = AudioFormat::sniff(&prefix).ok_or(StoreError::NotAudio)?;
    if let Some(declared) = declared
        && !super::format::declared_matches(declared, format)
    {
        return Err(StoreError::Mismatch {
            declared,
            sniffed: format,
        });
    }
    Ok(Sniffed {
        format,
        prefix: prefix.freeze(),
        rest: stream,
    })
}

/// Streams `prefix` then `rest` to `key`. Returns only once the object is complete; on any
/// error (or when dropped) the multipart upload is aborted and nothing remains under `key`.
pub async fn upload<S, E>(
    storage: &Storage,
    db: &Db,
    key: &str,
    format: AudioFormat,
    prefix: Bytes,
    mut rest: S,
    limits: &Limits,
) -> Result<Stored, StoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut sink = Sink::new(storage.clone(), db.clone(), key, format, limits);
    let result = async {
        sink.write(prefix).await?;
        while let Some(chunk) = next_chunk(&mut rest, limits.idle).await? {
            sink.write(chunk).await?;
        }
        Ok::<(), StoreError>(())
    }
    .await;
    match result {
        Ok(()) => sink.finish().await,
        Err(error) => {
            sink.abort().await;
            Err(error)
        }
    }
}

/// Moves bytes from `chunk` into `buffer` up to `part_size`; returns the part once full.
/// Every part but the last is therefore exactly `part_size` bytes. An exhausted `buffer` is
/// refilled from `spare` (buffers of parts already sent) before a new one is allocated, so
/// an upload of any length allocates at most `concurrency + 1` part buffers.
fn cut(
    buffer: &mut BytesMut,
    spare: &mut Vec<BytesMut>,
    chunk: &mut Bytes,
    part_size: usize,
) -> Option<Bytes> {
    if buffer.capacity() < part_size {
        *buffer = spare
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(part_size));
    }
    let take = (part_size - buffer.len()).min(chunk.len());
    buffer.extend_from_slice(&chunk.split_to(take));
    (buffer.len() == part_size).then(|| std::mem::take(buffer).freeze())
}

/// The multipart writer. Dropping it before `finish`/`abort` aborts in a spawned task.
struct Sink {
    storage: Storage,
    db: Db,
    key: String,
    content_type: &'static str,
    limits: Limits,
    upload_id: Option<String>,
    buffer: BytesMut,
    /// Buffers of sent parts, reused for the next ones.
    spare: Vec<BytesMut>,
    in_flight: VecDeque<PartTask>,
    parts: Vec<CompletedPart>,
    next_part: i32,
    hasher: Sha256,
    size: u64,
    done: bool,
}

impl Sink {
    fn new(storage: Storage, db: Db, key: &str, format: AudioFormat, limits: &Limits) -> Self {
        Self {
            storage,
            db,
            key: key.to_owned(),
            content_type: format.content_type(),
            limits: *limits,
            upload_id: None,
            buffer: BytesMut::with_capacity(limits.part_size),
            spare: Vec::new(),
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            next_part: 1,
            hasher: Sha256::new(),
            size: 0,
            done: false,
        }
    }

    async fn write(&mut self, mut chunk: Bytes) -> Result<(), StoreError> {
        self.size += chunk.len() as u64;
        if self.size > self.limits.max_bytes {
            return Err(StoreError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        self.hasher.update(&chunk);
        while !chunk.is_empty() {
            if let Some(full) = cut(
                &mut self.buffer,
                &mut self.spare,
                &mut chunk,
                self.limits.part_size,
            ) {
                self.send_part(full).await?;
            }
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<String, StoreError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let created = self
            .storage
            .client()
            .create_multipart_upload()
            .bucket(self.storage.bucket())
            .key(&self.key)
            .content_type(self.content_type)
            .send()
            .await
            .map_err(storage_error)?;
        let id = created
            .upload_id()
            .ok_or_else(|| StoreError::Storage("CreateMultipartUpload gave no upload id".into()))?
            .to_owned();
        // Armed from here: any exit but `finish` aborts.
        self.upload_id = Some(id.clone());
        let client = self.db.client().await?;
        client
            .execute(
                "insert into multipart_uploads (upload_id, object_key) values ($1, $2)
                 on conflict do nothing",
                &[&id, &self.key],
            )
            .await
            .map_err(DbError::from)?;
        Ok(id)
    }

    async fn send_part(&mut self, body: Bytes) -> Result<(), StoreError> {
        let upload_id = self.start().await?;
        while self.in_flight.len() >= self.limits.concurrency.max(1) {
            let first = self.in_flight.pop_front().expect("non-empty");
            let part = self.collect(first).await?;
            self.parts.push(part);
        }
        let number = self.next_part;
        self.next_part += 1;
        let (storage, key) = (self.storage.clone(), self.key.clone());
        self.in_flight.push_back(tokio::spawn(async move {
            // Re-sending a part number replaces it, so a retry is safe (docs/PROVIDERS.md §5).
            retry::run(
                &Policy::provider(3),
                "uploading a recording part",
                |_| async {
                    let output = storage
                        .client()
                        .upload_part()
                        .bucket(storage.bucket())
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body.clone()))
                        .send()
                        .await
                        .map_err(|error| Failure::Transient(storage_error(error)))?;
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(output.e_tag().map(str::to_owned))
                        .build())
                },
            )
            .await
            .map(|part| (part, body))
        }));
        Ok(())
    }

    async fn finish(mut self) -> Result<Stored, StoreError> {
        let result = self.complete().await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    async fn complete(&mut self) -> Result<Stored, StoreError> {
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if self.upload_id.is_none() {
            // Smaller than one part: a single PUT.
            let body = std::mem::take(&mut self.buffer).freeze();
            self.storage
                .client()
                .put_object()
                .bucket(self.storage.bucket())
                .key(&self.key)
                .content_type(self.content_type)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(storage_error)?;
            self.done = true;
            return Ok(Stored {
                size: self.size,
                sha256,
                parts: 0,
            });
        }
        if !self.buffer.is_empty() {
            let last = std::mem::take(&mut self.buffer).freeze();
            self.send_part(last).await?;
        }
        while let Some(handle) = self.in_flight.pop_front() {
            let part = self.collect(handle).await?;
            self.parts.push(part);
        }
        let upload_id = self.upload_id.clone().expect("started");
        self.storage
            .client()
            .complete_multipart_upload()
            .bucket(self.storage.bucket())
            .key(&self.key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(storage_error)?;
        self.done = true;
        forget_upload(&self.db, &upload_id).await;
        Ok(Stored {
            size: self.size,
            sha256,
            parts: self.parts.len(),
        })
    }

    async fn abort(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let in_flight: Vec<_> = self.in_flight.drain(..).collect();
        if let Some(upload_id) = self.upload_id.take() {
            abort_upload(&self.storage, &self.db, &self.key, &upload_id, in_flight).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let (storage, db, key) = (self.storage.clone(), self.db.clone(), self.key.clone());
        let in_flight: Vec<_> = self.in_flight.drain(..).collect();
        tracing::info!(%key, "upload abandoned (client gone?); aborting the multipart upload");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                abort_upload(&storage, &db, &key, &upload_id, in_flight).await;
            });
        }
    }
}

/// A part being sent: its completion and, back, its buffer.
type PartTask = JoinHandle<Result<(CompletedPart, Bytes), StoreError>>;

impl Sink {
    /// Waits for a sent part and keeps its buffer for the next one when nothing else holds it.
    async fn collect(&mut self, handle: PartTask) -> Result<CompletedPart, StoreError> {
        let (part, body) = handle
            .await
            .map_err(|e| StoreError::Storage(format!("part upload task: {e}")))??;
        if let Ok(mut buffer) = body.try_into_mut()
            && buffer.capacity() >= self.limits.part_size
            && self.spare.len() <= self.limits.concurrency
        {
            buffer.clear();
            self.spare.push(buffer);
        }
        Ok(part)
    }
}

/// Waits for parts still being sent (a part landing after the abort would be orphaned), then
/// aborts and forgets the upload. A failed abort leaves the `multipart_uploads` row for the
/// cron to retry.
pub async fn abort_upload(
    storage: &Storage,
    db: &Db,
    key: &str,
    upload_id: &str,
    in_flight: Vec<PartTask>,
) {
    for handle in in_flight {
        let _ = handle.await;
    }
    let aborted = storage
        .client()
        .abort_multipart_upload()
        .bucket(storage.bucket())
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    match aborted {
        Ok(_) => {
            metrics::counter!("recording_uploads_aborted_total").increment(1);
            forget_upload(db, upload_id).await;
        }
        Err(error) => {
            let no_such = error
                .as_service_error()
                .and_then(|e| aws_sdk_s3::error::ProvideErrorMetadata::code(e).map(str::to_owned))
                .is_some_and(|code| code == "NoSuchUpload");
            if no_such {
                forget_upload(db, upload_id).await;
            } else {
                tracing::warn!(%key, error = %aws_sdk_s3::error::DisplayErrorContext(&error), "aborting a multipart upload failed; the cron retries");
            }
        }
    }
}

async fn forget_upload(db: &Db, upload_id: &str) {
    if let Ok(client) = db.client().await {
        let _ = client
            .execute(
                "delete from multipart_uploads where upload_id = $1",
                &[&upload_id],
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The splitting logic alone: every part but the last is exactly `part_size`.
    #[test]
    fn chunks_are_cut_into_equal_parts() {
        let part_size = 10;
        let mut buffer = BytesMut::with_capacity(part_size);
        let mut spare = Vec::new();
        let mut parts = Vec::new();
        let mut expected = Vec::new();
        let mut n = 0u8;
        for size in [3usize, 17, 1, 9, 25, 4] {
            let bytes: Vec<u8> = (0..size)
                .map(|_| {
                    n = n.wrapping_add(1);
                    n
                })
                .collect();
            expected.extend_from_slice(&bytes);
            let mut chunk = Bytes::from(bytes);
            while !chunk.is_empty() {
                if let Some(part) = cut(&mut buffer, &mut spare, &mut chunk, part_size) {
                    parts.push(part);
                }
            }
        }
        parts.push(buffer.freeze());
        let sizes: Vec<usize> = parts.iter().map(Bytes::len).collect();
        assert_eq!(sizes, vec![10, 10, 10, 10, 10, 9]);
        assert_eq!(parts.concat(), expected, "bytes kept in order");
    }
}
