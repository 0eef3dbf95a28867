//! Object storage on Cloudflare R2 through its S3 API (any S3 server locally).
//!
//! Region `auto`, a custom endpoint, path-style for local servers, and checksums only when an
//! operation requires them (R2 and some S3-compatibles reject the SDK's default CRC headers).

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_smithy_http_client::tls;

use crate::config::StorageConfig;

pub mod objects;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("bucket {bucket} is not reachable: {message}")]
    Bucket { bucket: String, message: String },
    #[error("storage request failed: {0}")]
    Request(String),
}

/// A failed S3 request, with the SDK's full context (service code, message, cause).
pub fn request_error<E: std::error::Error + Send + Sync + 'static>(
    error: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StorageError {
    StorageError::Request(aws_sdk_s3::error::DisplayErrorContext(&error).to_string())
}

#[derive(Clone)]
pub struct Storage {
    client: Client,
    bucket: String,
}

impl Storage {
    pub fn new(config: &StorageConfig) -> Self {
        crate::tls::install_crypto_provider();
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let s3_config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("auto"))
            .endpoint_url(config.endpoint.as_str().trim_end_matches('/'))
            .credentials_provider(Credentials::new(
                config.access_key_id.clone(),
                config.secret_access_key.expose().clone(),
                None,
                None,
                "callbridge-config",
            ))
            .force_path_style(config.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(30))
                    .build(),
            )
            .http_client(http_client)
            .build();
        Self {
            client: Client::from_conf(s3_config),
            bucket: config.bucket.clone(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// What `/readyz` reports as `storage`: the bucket exists and our credentials reach it.
    pub async fn check_bucket(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|error| StorageError::Bucket {
                bucket: self.bucket.clone(),
                message: aws_sdk_s3::error::DisplayErrorContext(&error).to_string(),
            })
    }

    /// Development convenience: create the bucket when it does not exist yet.
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        if self.check_bucket().await.is_ok() {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                let owned = error
                    .as_service_error()
                    .is_some_and(|e| e.is_bucket_already_owned_by_you());
                if owned {
                    Ok(())
                } else {
                    Err(StorageError::Request(
                        aws_sdk_s3::error::DisplayErrorContext(&error).to_string(),
                    ))
                }
            }
        }
    }
}
