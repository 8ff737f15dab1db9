//! Building the S3 client the AWS way: the standard credential chain (environment, profiles with SSO, web
//! identity, instance profiles), `AWS_ENDPOINT_URL` or an explicit endpoint for S3-compatible servers (with
//! path-style addressing, which most of them need), and the bucket's region when none is configured.

use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_http_client::{ConnectorBuilder, proxy::ProxyConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts HTTP requests sent (retries included), so plans and benchmarks can report what they cost.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(pub Arc<AtomicU64>);

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "dsmake-request-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What a remote file or the environment may say about reaching the bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// An AWS profile from ~/.aws/config (SSO profiles included).
    pub profile: Option<String>,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); `AWS_ENDPOINT_URL` works too.
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// The SDK's own hyper 1 client (its timeouts, sleeps and `HTTPS_PROXY`/`NO_PROXY`), on rustls with ring, the crypto
/// library ureq uses too (see Cargo.toml); plain http for custom endpoints works as before.
fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector = ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        connector.set_sleep_impl(components.and_then(|c| c.sleep_impl()));
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

pub async fn client(bucket: &str, options: &S3Options, counter: &RequestCounter) -> anyhow::Result<Client> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
    if let Some(profile) = &options.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &options.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let shared = loader.load().await;
    let custom_endpoint = shared.endpoint_url().is_some();
    let configured_region = shared.region().is_some();
    let build = |region: Option<Region>| {
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(custom_endpoint)
            .interceptor(counter.clone())
            // The store retries whole requests itself, on the budget of the operation in progress
            // (`crate::retry`); the SDK's own attempts would multiply with those.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(region) = region {
            builder = builder.region(region);
        }
        Client::from_conf(builder.build())
    };
    if configured_region {
        return Ok(build(None));
    }
    // No region anywhere: ask the bucket (S3 answers HeadBucket with x-amz-bucket-region, even on a 301).
    let probe = build(Some(Region::new("us-east-1")));
    let region = match probe.head_bucket().bucket(bucket).send().await {
        Ok(out) => out.bucket_region().map(str::to_string),
        Err(err) => err.raw_response().and_then(|r| r.headers().get("x-amz-bucket-region")).map(str::to_string),
    };
    Ok(build(Some(Region::new(region.unwrap_or_else(|| "us-east-1".to_string())))))
}
