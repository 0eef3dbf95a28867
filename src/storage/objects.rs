//! Plain operations on one stored object: presigned GET/PUT URLs, size, the first bytes, a
//! streamed SHA-256, server-side copy, delete. (Streaming a recording in is
//! `recordings::store`.)

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::{Storage, StorageError, request_error};

/// A presigned GET for `key` valid for `ttl` (R2: 1 s – 7 days).
pub async fn presign_get(
    storage: &Storage,
    key: &str,
    ttl: Duration,
) -> Result<String, StorageError> {
    let config = PresigningConfig::expires_in(ttl)
        .map_err(|e| StorageError::Request(format!("presigning: {e}")))?;
    let request = storage
        .client()
        .get_object()
        .bucket(storage.bucket())
        .key(key)
        .presigned(config)
        .await
        .map_err(request_error)?;
    Ok(request.uri().to_owned())
}

/// A presigned PUT for `key` bound to `content_type` (a different type fails the signature).
pub async fn presign_put(
    storage: &Storage,
    key: &str,
    content_type: &str,
    ttl: Duration,
) -> Result<(String, Vec<(String, String)>), StorageError> {
    let config = PresigningConfig::expires_in(ttl)
        .map_err(|e| StorageError::Request(format!("presigning: {e}")))?;
    let request = storage
        .client()
        .put_object()
        .bucket(storage.bucket())
        .key(key)
        .content_type(content_type)
        .presigned(config)
        .await
        .map_err(request_error)?;
    let headers = request
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    Ok((request.uri().to_owned(), headers))
}

/// Size of `key`, or `None` when it does not exist.
pub async fn head_size(storage: &Storage, key: &str) -> Result<Option<u64>, StorageError> {
    match storage
        .client()
        .head_object()
        .bucket(storage.bucket())
        .key(key)
        .send()
        .await
    {
        Ok(head) => Ok(Some(head.content_length().unwrap_or_default().max(0) as u64)),
        Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
        Err(error) => Err(request_error(error)),
    }
}

/// The first `n` bytes of `key`.
pub async fn read_prefix(storage: &Storage, key: &str, n: usize) -> Result<Bytes, StorageError> {
    let object = storage
        .client()
        .get_object()
        .bucket(storage.bucket())
        .key(key)
        .range(format!("bytes=0-{}", n.saturating_sub(1)))
        .send()
        .await
        .map_err(request_error)?;
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|e| StorageError::Request(e.to_string()))?
        .into_bytes();
    Ok(bytes.slice(..bytes.len().min(n)))
}

/// SHA-256 and size of `key`, streamed (flat memory).
pub async fn hash_object(storage: &Storage, key: &str) -> Result<(u64, String), StorageError> {
    let mut object = storage
        .client()
        .get_object()
        .bucket(storage.bucket())
        .key(key)
        .send()
        .await
        .map_err(request_error)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = object
        .body
        .try_next()
        .await
        .map_err(|e| StorageError::Request(e.to_string()))?
    {
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Server-side copy (one request; R2 and S3 allow up to 5 GiB).
pub async fn copy(storage: &Storage, from: &str, to: &str) -> Result<(), StorageError> {
    let source = format!(
        "{}/{}",
        storage.bucket(),
        percent_encoding::utf8_percent_encode(from, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .replace("%2F", "/")
    );
    storage
        .client()
        .copy_object()
        .bucket(storage.bucket())
        .key(to)
        .copy_source(source)
        .send()
        .await
        .map_err(request_error)?;
    Ok(())
}

pub async fn delete(storage: &Storage, key: &str) -> Result<(), StorageError> {
    storage
        .client()
        .delete_object()
        .bucket(storage.bucket())
        .key(key)
        .send()
        .await
        .map_err(request_error)?;
    Ok(())
}
