//! `format = "sns"`: Amazon SNS HTTP(S) subscription deliveries, signatures verified.
//!
//! SNS POSTs a JSON envelope (SNS developer guide,
//! *Parsing message formats* and *Verifying the signatures of Amazon SNS messages*):
//!
//! - `Notification`: the record is `Message` parsed as JSON when it is an object (an
//!   EventBridge event routed through SNS: tagged with its `detail-type`, timed by its
//!   `time`), else `{"message": <text>}` (tagged with the input's tag, timed by the
//!   envelope's `Timestamp`). SNS's `Subject`, `MessageId`, `TopicArn` and `Timestamp` are
//!   kept under an `sns` key (replacing a field of that name in the message).
//! - `SubscriptionConfirmation`: confirmed by a GET of `SubscribeURL` only with
//!   `sns.auto_confirm = true` and a `TopicArn` in `sns.topic_arns` (when given); otherwise
//!   logged at WARN with the URL to open by hand. Answered 200 either way.
//! - `UnsubscribeConfirmation`: logged, answered 200.
//! - Raw message delivery (`x-amz-sns-rawdelivery: true`): the body is the message itself,
//!   with no envelope and no signature; it becomes a record as `Message` does above (no `sns`
//!   key: the body is kept as sent). Since nothing proves where it came from, it is taken
//!   only when the input has `auth` (SNS sends Basic credentials written in the
//!   subscription's endpoint URL, `https://user:password@host/`); otherwise refused (403).
//!
//! Every envelope is verified before anything in it is used: the string to sign is built
//! from the envelope's fields ("Key\nvalue\n" for each, in the documented order), its
//! `Signature` checked with the public key of the certificate at `SigningCertURL`:
//! `SignatureVersion` 1 is SHA1withRSA, 2 is SHA256withRSA (RSA PKCS#1 v1.5). The
//! certificate is fetched only over HTTPS, only from an allowed host (default: an SNS
//! endpoint, `sns.<region>.amazonaws.com` or `sns.<region>.amazonaws.com.cn`; `cert_hosts`
//! replaces the list), only from a path ending in `.pem`, without following redirects,
//! without a query, user info or fragment (a `SubscribeURL` has its query, never user info
//! or a fragment), within [`FETCH_TIMEOUT`], and cached by host and path ([`CERT_CACHE`] of
//! them). TLS trusts the
//! web roots compiled in (plus `ca_file`). The certificate's own chain and dates are not
//! checked: as in AWS's SDK validators, the HTTPS fetch from an SNS host is what vouches for
//! it.
//!
//! Answers (SNS counts every 4xx as delivered and drops the message; only 5xx and timeouts
//! are retried):
//! - 400 for a body that is not an SNS message (not JSON, a required field missing or not a
//!   string, an unknown `Type`, or an `x-amz-sns-message-type` header that disagrees with
//!   `Type`): `kind="bad_body"` / `kind="not_an_sns_message"`. Retrying cannot help.
//! - 403 for a message whose origin is not proven (unsupported `SignatureVersion`, a
//!   certificate URL refused or not serving a certificate, a signature that does not
//!   match, raw delivery without `auth`): `kind="sns_signature"`; and for a notification of
//!   a topic not in `topic_arns`: `kind="sns_topic"`. Nothing from it is kept.
//! - 503 + `Retry-After` when the certificate cannot be fetched for a reason that may pass
//!   (network error, timeout, a 5xx or 429 from the certificate host): `kind="sns_cert_fetch"`.
//!   SNS then retries per its delivery policy, instead of dropping a genuine message.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use parking_lot::Mutex;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{AlgorithmIdentifier, CertificateDer, InvalidSignature, alg_id};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::{Refusal, hold, parse_cost};
use crate::buffer::budget::{MemoryBudget, Reservation};
use crate::event::{Fields, Record};
pub use crate::input::sns_envelope::MessageType;
use crate::input::sns_envelope::{
    EnvelopeError, json_kind, looks_like_object, message_record, notification_metadata,
    parse_envelope, required, timestamp_ns,
};

/// Longest wait for a signing certificate or a `SubscribeURL` answer. SNS gives an endpoint
/// 15 s to answer (SNS developer guide, *HTTP/S delivery*); a fetch and a verification fit.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Signing certificates remembered (by URL). SNS signs with one certificate per region at a
/// time and rotates it rarely, so a handful covers every topic an input serves.
pub(crate) const CERT_CACHE: usize = 32;

/// Largest certificate file read (a PEM certificate is 2 to 3 KB).
const MAX_CERT_BYTES: usize = 64 * 1024;

/// The `sns` settings of an HTTP input with `format = "sns"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SnsConfig {
    /// Topics whose notifications are taken and whose subscriptions may be confirmed.
    /// Empty: every topic (still signature-verified).
    pub topic_arns: Vec<String>,
    /// Confirm subscriptions (GET `SubscribeURL`) of the listed topics. Default false: the
    /// URL is logged for an operator to open.
    pub auto_confirm: bool,
    /// Hosts a `SigningCertURL` or `SubscribeURL` may name, exactly (case-insensitive).
    /// `None`: SNS endpoints (`sns.<region>.amazonaws.com[.cn]`).
    pub cert_hosts: Option<Vec<String>>,
    /// PEM file of CA certificates trusted, besides the web roots, for HTTPS to those hosts.
    pub ca_file: Option<PathBuf>,
}

/// Why an SNS delivery was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnsError {
    /// Not JSON (or not UTF-8). 400.
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON that is not an SNS message. 400.
    #[error("not an SNS message: {0}")]
    NotAMessage(String),
    /// The message's origin is not proven. 403.
    #[error("SNS signature not verified: {0}")]
    Signature(String),
    /// A notification of a topic not in `topic_arns`. 403.
    #[error("topic {0:?} is not in this input's sns.topic_arns")]
    Topic(String),
    /// The signing certificate could not be fetched, for a reason that may pass. 503.
    #[error("SNS signing certificate unavailable, retry later: {0}")]
    CertUnavailable(String),
    /// The memory budget could not hold the parsed message (413 or 503, as for any body).
    #[error("memory budget")]
    Budget(Refusal),
}

impl From<EnvelopeError> for SnsError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Json {
                line,
                column,
                message,
            } => SnsError::Json {
                line,
                column,
                message,
            },
            EnvelopeError::NotAMessage(m) => SnsError::NotAMessage(m),
        }
    }
}

impl SnsError {
    /// The `kind` label of `firelane_input_errors_total` this refusal is counted under.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            SnsError::Json { .. } => "bad_body",
            SnsError::NotAMessage(_) => "not_an_sns_message",
            SnsError::Signature(_) => "sns_signature",
            SnsError::Topic(_) => "sns_topic",
            SnsError::CertUnavailable(_) => "sns_cert_fetch",
            SnsError::Budget(_) => "full",
        }
    }

    /// The answer's status: 400 for what is not an SNS message, 403 for what is not
    /// proven to come from SNS or from a listed topic, 503 for what may pass (SNS retries
    /// only 5xx: every 4xx drops the message), 413 / 503 for the budget as for any body.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            SnsError::Json { .. } | SnsError::NotAMessage(_) => StatusCode::BAD_REQUEST,
            SnsError::Signature(_) | SnsError::Topic(_) => StatusCode::FORBIDDEN,
            SnsError::CertUnavailable(_) | SnsError::Budget(Refusal::NotNow) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            SnsError::Budget(Refusal::Never { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// What a delivery amounts to.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A notification: its record, and its `MessageId` (the de-duplication key; from the
    /// `x-amz-sns-message-id` header for raw deliveries, `None` when absent).
    Records {
        records: Vec<Record>,
        message_id: Option<Arc<str>>,
    },
    /// A subscription or unsubscribe confirmation, handled: answer 200, keep nothing.
    Handled,
}

/// The SNS side of one input: settings, the HTTPS client for certificates and
/// confirmations, and the certificate cache.
pub(crate) struct Sns {
    cfg: SnsConfig,
    input: String,
    /// Whether the input checks credentials (`auth`): raw deliveries need them.
    authenticated: bool,
    client: reqwest::Client,
    certs: Mutex<CertCache>,
}

#[derive(Default)]
struct CertCache {
    /// [`cert_key`] of the URL -> the certificate, fetched once by whichever request asks first (a failed
    /// fetch leaves the cell empty for the next request to try again).
    cells: HashMap<String, Arc<OnceCell<Arc<CertificateDer<'static>>>>>,
    /// The same keys, oldest first, to forget the oldest beyond [`CERT_CACHE`].
    order: VecDeque<String>,
}

/// Reads the CA certificates of `path` (PEM), for `firelane check` and startup alike.
pub(crate) fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

impl Sns {
    /// The SNS handling of input `input`. `authenticated`: the input has `auth`. Fails when
    /// `ca_file` cannot be read or the HTTPS client cannot be built.
    pub(crate) fn new(cfg: SnsConfig, input: &str, authenticated: bool) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            // A redirect could lead anywhere: the host rules apply to the URL as sent.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("firelane/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_file {
            for c in read_ca_file(path).map_err(|e| anyhow::anyhow!("sns.ca_file: {e}"))? {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTPS client for SNS: {e}"))?;
        Ok(Sns {
            cfg,
            input: input.to_string(),
            authenticated,
            client,
            certs: Mutex::new(CertCache::default()),
        })
    }

    /// Takes one SNS delivery: verifies it, then returns the notification's record or
    /// handles the confirmation. `named_tag`: the tag the request path or the input names
    /// (wins over an event's `detail-type`); `default_tag`: the tag otherwise. The parsed
    /// message is held within `budget` through `reservation` (the caller's, covering the
    /// body so far).
    pub(crate) async fn take(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        named_tag: Option<&Arc<str>>,
        default_tag: &Arc<str>,
        budget: &MemoryBudget,
        reservation: &mut Reservation,
    ) -> Result<Delivery, SnsError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let header_type = header("x-amz-sns-message-type");
        let raw = header("x-amz-sns-rawdelivery").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if raw {
            return self.take_raw(headers, body, header_type, named_tag, default_tag);
        }
        let (envelope, ty_parsed) = parse_envelope(body)?;
        let ty = ty_parsed.name();
        if let Some(h) = header_type
            && h != ty
        {
            return Err(SnsError::NotAMessage(format!(
                "x-amz-sns-message-type is {h:?} but the body's Type is {ty:?}"
            )));
        }
        let signed = string_to_sign(ty_parsed, &envelope)?;
        self.verify(&envelope, &signed).await?;
        let topic = required(&envelope, "TopicArn")?;
        match ty_parsed {
            MessageType::Notification => {
                self.check_topic(Some(topic))?;
                let message = required(&envelope, "Message")?;
                // The message's own JSON is parsed too (a string in the envelope, so not in
                // the estimate the body's reservation was made from): held the same way.
                if looks_like_object(message) {
                    let total = reservation
                        .bytes()
                        .saturating_add(parse_cost(message.as_bytes()));
                    hold(budget, reservation, total).map_err(SnsError::Budget)?;
                }
                let sns = notification_metadata(&envelope);
                let timestamp = timestamp_ns(&envelope);
                let record = message_record(message, Some(sns), timestamp, named_tag, default_tag);
                Ok(Delivery::Records {
                    records: vec![record],
                    message_id: Some(Arc::from(required(&envelope, "MessageId")?)),
                })
            }
            MessageType::SubscriptionConfirmation => {
                let url = required(&envelope, "SubscribeURL")?;
                self.confirm(topic, url).await;
                Ok(Delivery::Handled)
            }
            MessageType::UnsubscribeConfirmation => {
                tracing::info!(
                    input = %self.input,
                    topic,
                    "SNS subscription ended (UnsubscribeConfirmation); to subscribe again open {}",
                    envelope
                        .get("SubscribeURL")
                        .and_then(|v| v.as_str())
                        .unwrap_or("its SubscribeURL")
                );
                Ok(Delivery::Handled)
            }
        }
    }

    /// A raw message delivery: the body is the message.
    fn take_raw(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        header_type: Option<&str>,
        named_tag: Option<&Arc<str>>,
        default_tag: &Arc<str>,
    ) -> Result<Delivery, SnsError> {
        if header_type.is_some_and(|t| t != "Notification") {
            return Err(SnsError::NotAMessage(format!(
                "raw delivery of a {:?} (only notifications are delivered raw)",
                header_type.unwrap_or_default()
            )));
        }
        if !self.authenticated {
            return Err(SnsError::Signature(
                "raw message delivery carries no signature; this input takes it only with \
                 `auth` set (credentials in the subscription's endpoint URL)"
                    .into(),
            ));
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        self.check_topic(header("x-amz-sns-topic-arn"))?;
        let text = std::str::from_utf8(body).map_err(|e| SnsError::Json {
            line: 1,
            column: e.valid_up_to() + 1,
            message: format!("not UTF-8: {e}"),
        })?;
        let record = message_record(text, None, None, named_tag, default_tag);
        Ok(Delivery::Records {
            records: vec![record],
            message_id: header("x-amz-sns-message-id").map(Arc::from),
        })
    }

    /// `Err(Topic)` when `topic_arns` is given and does not list `topic`.
    fn check_topic(&self, topic: Option<&str>) -> Result<(), SnsError> {
        if self.topic_listed(topic) {
            Ok(())
        } else {
            Err(SnsError::Topic(topic.unwrap_or("(none)").to_string()))
        }
    }

    fn topic_listed(&self, topic: Option<&str>) -> bool {
        self.cfg.topic_arns.is_empty()
            || topic.is_some_and(|t| self.cfg.topic_arns.iter().any(|a| a == t))
    }

    /// Checks `envelope`'s signature over `signed`.
    async fn verify(&self, envelope: &Fields, signed: &str) -> Result<(), SnsError> {
        let version = required(envelope, "SignatureVersion")?;
        let alg: &dyn rustls_pki_types::SignatureVerificationAlgorithm = match version {
            "1" => &RSA_PKCS1_SHA1,
            "2" => &RSA_PKCS1_SHA256,
            v => {
                return Err(SnsError::Signature(format!(
                    "unsupported SignatureVersion {v:?} (1 and 2 are known)"
                )));
            }
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(required(envelope, "Signature")?)
            .map_err(|e| SnsError::Signature(format!("Signature is not base64: {e}")))?;
        let url = required(envelope, "SigningCertURL")?;
        let url = self
            .allowed_url(url, true)
            .map_err(|e| SnsError::Signature(format!("SigningCertURL {url:?}: {e}")))?;
        let cert = self.cert(&url).await?;
        let ee = webpki::EndEntityCert::try_from(&*cert).map_err(|e| {
            SnsError::Signature(format!("{url} does not hold a usable certificate: {e:?}"))
        })?;
        ee.verify_signature(alg, signed.as_bytes(), &signature)
            .map_err(|_| {
                SnsError::Signature(format!(
                    "the signature does not match the message and the certificate at {url}"
                ))
            })
    }

    /// `url` parsed, when it may be fetched: HTTPS, no user info or fragment, an allowed
    /// host, and for a certificate a path ending in `.pem` and no query. `Err` says why not.
    ///
    /// SNS's `SigningCertURL` is a bare `https://sns.REGION.amazonaws.com/...pem`; a query
    /// there only serves a forger (each new query would be a new fetch and a new cache
    /// place). A `SubscribeURL` has its query (`?Action=ConfirmSubscription&TopicArn=...&
    /// Token=...`). Neither ever has user info (credentials sent to the host) or a fragment.
    fn allowed_url(&self, url: &str, cert: bool) -> Result<reqwest::Url, String> {
        let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if u.scheme() != "https" {
            return Err(format!("not HTTPS ({}:)", u.scheme()));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err("has user info (user@ or user:password@)".into());
        }
        if u.fragment().is_some() {
            return Err("has a fragment (#...)".into());
        }
        if cert && u.query().is_some() {
            return Err("has a query (?...): an SNS certificate URL has none".into());
        }
        let host = u.host_str().unwrap_or("");
        let allowed = match &self.cfg.cert_hosts {
            Some(hosts) => hosts.iter().any(|h| h.eq_ignore_ascii_case(host)),
            None => is_sns_host(host),
        };
        if !allowed {
            return Err(match &self.cfg.cert_hosts {
                Some(_) => format!("host {host:?} is not in sns.cert_hosts"),
                None => format!("host {host:?} is not an SNS endpoint"),
            });
        }
        if cert && !u.path().ends_with(".pem") {
            return Err("not a .pem file".into());
        }
        Ok(u)
    }

    /// The certificate at `url`, from the cache or fetched (once, however many requests
    /// ask at the same time). Cached by host (with port) and path: the only parts of an
    /// allowed certificate URL that can name another certificate.
    async fn cert(&self, url: &reqwest::Url) -> Result<Arc<CertificateDer<'static>>, SnsError> {
        let key = cert_key(url);
        let cell = {
            let mut c = self.certs.lock();
            match c.cells.get(&key) {
                Some(cell) => cell.clone(),
                None => {
                    if c.order.len() >= CERT_CACHE
                        && let Some(old) = c.order.pop_front()
                    {
                        c.cells.remove(&old);
                    }
                    let cell = Arc::new(OnceCell::new());
                    c.cells.insert(key.clone(), cell.clone());
                    c.order.push_back(key.clone());
                    cell
                }
            }
        };
        let cert = cell
            .get_or_try_init(|| self.fetch_cert(url))
            .await
            .map(Arc::clone);
        if cert.is_err() {
            // Only certificates take a place in the cache: forged messages naming URLs that
            // serve nothing must not push the real certificate out.
            let mut c = self.certs.lock();
            if c.cells
                .get(&key)
                .is_some_and(|x| Arc::ptr_eq(x, &cell) && x.get().is_none())
            {
                c.cells.remove(&key);
                c.order.retain(|u| *u != key);
            }
        }
        cert
    }

    async fn fetch_cert(
        &self,
        url: &reqwest::Url,
    ) -> Result<Arc<CertificateDer<'static>>, SnsError> {
        let unavailable = |e: String| {
            crate::warn_limited!(
                "sns_cert_fetch",
                "input {}: cannot fetch the SNS signing certificate {url}: {e}",
                self.input
            );
            SnsError::CertUnavailable(format!("{url}: {e}"))
        };
        let mut resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(unavailable(format!("answered {status}")));
        }
        if !status.is_success() {
            return Err(SnsError::Signature(format!("{url} answered {status}")));
        }
        let mut pem = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unavailable(error_chain(&e)))?
        {
            pem.extend_from_slice(&chunk);
            if pem.len() > MAX_CERT_BYTES {
                return Err(SnsError::Signature(format!(
                    "{url} is larger than {MAX_CERT_BYTES} bytes: not a certificate"
                )));
            }
        }
        let cert = CertificateDer::from_pem_slice(&pem)
            .map_err(|e| SnsError::Signature(format!("{url} is not a PEM certificate: {e:?}")))?;
        tracing::debug!(input = %self.input, %url, "fetched an SNS signing certificate");
        Ok(Arc::new(cert))
    }

    /// Confirms the subscription of `topic` by a GET of `url` when the settings allow it;
    /// otherwise logs the URL for an operator.
    async fn confirm(&self, topic: &str, url: &str) {
        if !self.cfg.auto_confirm {
            tracing::warn!(
                input = %self.input,
                topic,
                "SNS subscription awaits confirmation (sns.auto_confirm is false): open {url} to confirm it"
            );
            return;
        }
        if !self.topic_listed(Some(topic)) {
            tracing::warn!(
                input = %self.input,
                topic,
                "SNS subscription of a topic not in sns.topic_arns: not confirmed; to take it, add the topic or open {url}"
            );
            return;
        }
        let u = match self.allowed_url(url, false) {
            Ok(u) => u,
            Err(e) => {
                self.count("sns_confirm");
                tracing::warn!(
                    input = %self.input,
                    topic,
                    "SNS SubscribeURL refused ({e}): not confirmed; open {url} by hand if it is genuine"
                );
                return;
            }
        };
        match self.client.get(u).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!(input = %self.input, topic, "SNS subscription confirmed");
            }
            Ok(r) => {
                self.count("sns_confirm");
                tracing::error!(
                    input = %self.input,
                    topic,
                    "SNS subscription confirmation answered {}: open {url} by hand",
                    r.status()
                );
            }
            Err(e) => {
                self.count("sns_confirm");
                tracing::error!(
                    input = %self.input,
                    topic,
                    "SNS subscription confirmation failed ({}): open {url} by hand",
                    error_chain(&e)
                );
            }
        }
    }

    fn count(&self, kind: &'static str) {
        metrics::counter!("firelane_input_errors_total", "input" => self.input.clone(), "kind" => kind)
            .increment(1);
    }
}

/// The certificate cache key of `url`: `host[:port]/path` (scheme, query and fragment
/// left out; [`Sns::allowed_url`] refuses the last two for a certificate anyway).
fn cert_key(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}{}", url.path()),
        None => format!("{host}{}", url.path()),
    }
}

/// Whether `host` has the shape of an SNS endpoint: `sns.<region>.amazonaws.com` or, in
/// the China partition, `sns.<region>.amazonaws.com.cn` (region `cn-*`, and only there).
///
/// The region must have a region's shape ([`is_region`]): AWS's SDK validators accept any
/// `[a-zA-Z0-9-]{3,}` label, which also matches S3's legacy virtual-host names such as
/// `sns.s3-external-1.amazonaws.com` (a bucket named `sns` serves whatever its owner puts
/// there, so anyone could host a "signing certificate" on it).
pub(crate) fn is_sns_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    if let Some(region) = rest.strip_suffix(".amazonaws.com.cn") {
        return region.starts_with("cn-") && is_region(region);
    }
    rest.strip_suffix(".amazonaws.com")
        .is_some_and(|region| !region.starts_with("cn-") && is_region(region))
}

/// Whether `s` has the shape of an AWS region name:
/// `^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]+$` (`us-east-1`, `us-gov-west-1`,
/// `cn-north-1`, `us-isob-east-1`).
fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let letters = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let country = |p: &str| p.len() == 2 && letters(p);
    let partition = |p: &str| {
        p == "gov"
            || p.strip_prefix("iso")
                .is_some_and(|r| r.bytes().all(|b| b.is_ascii_lowercase()))
    };
    match parts.as_slice() {
        [c, area, n] => country(c) && letters(area) && digits(n),
        [c, part, area, n] => country(c) && partition(part) && letters(area) && digits(n),
        _ => false,
    }
}

/// The string SNS signs for a message of type `ty`: for each signed key present, in order,
/// `key\nvalue\n`, values as they are after JSON unescaping. Every key but a
/// notification's `Subject` is required (a `Subject` of `null` counts as absent).
pub(crate) fn string_to_sign(ty: MessageType, envelope: &Fields) -> Result<String, SnsError> {
    let mut s = String::new();
    for &key in ty.signed_keys() {
        let value = if key == "Subject" {
            match envelope.get(key) {
                None | Some(Value::Null) => continue,
                Some(Value::String(v)) => v.as_str(),
                Some(other) => {
                    return Err(SnsError::NotAMessage(format!(
                        "Subject must be a string, found {}",
                        json_kind(other)
                    )));
                }
            }
        } else {
            required(envelope, key)?
        };
        s.push_str(key);
        s.push('\n');
        s.push_str(value);
        s.push('\n');
    }
    Ok(s)
}

/// An error and its causes, `a: b: c` (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// RSA PKCS#1 v1.5 signature verification (ring) for webpki's
/// [`EndEntityCert::verify_signature`](webpki::EndEntityCert::verify_signature). SNS
/// `SignatureVersion` 1 needs SHA-1, which webpki's own algorithm list leaves out.
#[derive(Debug)]
struct RsaPkcs1 {
    params: &'static ring::signature::RsaParameters,
    signature_alg_id: AlgorithmIdentifier,
}

/// `sha1WithRSAEncryption` (RFC 3279 §2.2.1) with NULL parameters, as an
/// AlgorithmIdentifier's contents.
const SHA1_WITH_RSA: AlgorithmIdentifier = AlgorithmIdentifier::from_slice(&[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00,
]);

/// SNS `SignatureVersion` 1: SHA1withRSA.
static RSA_PKCS1_SHA1: RsaPkcs1 = RsaPkcs1 {
    params: &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
    signature_alg_id: SHA1_WITH_RSA,
};

/// SNS `SignatureVersion` 2: SHA256withRSA.
static RSA_PKCS1_SHA256: RsaPkcs1 = RsaPkcs1 {
    params: &ring::signature::RSA_PKCS1_2048_8192_SHA256,
    signature_alg_id: alg_id::RSA_PKCS1_SHA256,
};

impl rustls_pki_types::SignatureVerificationAlgorithm for RsaPkcs1 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        ring::signature::UnparsedPublicKey::new(self.params, public_key)
            .verify(message, signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.signature_alg_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(json: &str) -> Fields {
        match serde_json::from_str(json) {
            Ok(Value::Object(m)) => m,
            _ => panic!("not an object: {json}"),
        }
    }

    #[test]
    fn string_to_sign_of_a_notification_with_and_without_subject() {
        let with = envelope(
            r#"{"Type":"Notification","MessageId":"m-1","TopicArn":"arn:aws:sns:us-west-2:123456789012:t",
            "Subject":"Hi","Message":"line 1\nline \"2\"","Timestamp":"2012-04-26T20:45:04.751Z",
            "SignatureVersion":"1","Signature":"x","SigningCertURL":"u","UnsubscribeURL":"v","Extra":"ignored"}"#,
        );
        assert_eq!(
            string_to_sign(MessageType::Notification, &with).unwrap(),
            "Message\nline 1\nline \"2\"\nMessageId\nm-1\nSubject\nHi\nTimestamp\n2012-04-26T20:45:04.751Z\nTopicArn\narn:aws:sns:us-west-2:123456789012:t\nType\nNotification\n"
        );
        let mut without = with.clone();
        without.remove("Subject");
        let s = string_to_sign(MessageType::Notification, &without).unwrap();
        assert!(!s.contains("Subject"), "{s}");
        without.insert("Subject".into(), Value::Null);
        assert_eq!(
            string_to_sign(MessageType::Notification, &without).unwrap(),
            s,
            "null Subject is no Subject"
        );
        let mut missing = with.clone();
        missing.remove("Timestamp");
        let e = string_to_sign(MessageType::Notification, &missing).unwrap_err();
        assert_eq!(e.kind(), "not_an_sns_message");
        assert!(e.to_string().contains("\"Timestamp\""), "{e}");
    }

    #[test]
    fn string_to_sign_of_confirmations() {
        let m = envelope(
            r#"{"Type":"SubscriptionConfirmation","MessageId":"m-2","Token":"tok","TopicArn":"arn:t",
            "Message":"You have chosen to subscribe","SubscribeURL":"https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=tok",
            "Timestamp":"2012-04-26T20:45:04.751Z","SignatureVersion":"2","Signature":"x","SigningCertURL":"u"}"#,
        );
        let want = "Message\nYou have chosen to subscribe\nMessageId\nm-2\nSubscribeURL\nhttps://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=tok\nTimestamp\n2012-04-26T20:45:04.751Z\nToken\ntok\nTopicArn\narn:t\nType\nSubscriptionConfirmation\n";
        assert_eq!(
            string_to_sign(MessageType::SubscriptionConfirmation, &m).unwrap(),
            want
        );
        let mut u = m.clone();
        u.insert(
            "Type".into(),
            Value::String("UnsubscribeConfirmation".into()),
        );
        assert!(
            string_to_sign(MessageType::UnsubscribeConfirmation, &u)
                .unwrap()
                .ends_with("Type\nUnsubscribeConfirmation\n")
        );
        let mut no_token = m.clone();
        no_token.remove("Token");
        assert!(string_to_sign(MessageType::SubscriptionConfirmation, &no_token).is_err());
        let mut number = m;
        number.insert("Token".into(), Value::from(7));
        let e = string_to_sign(MessageType::SubscriptionConfirmation, &number).unwrap_err();
        assert!(e.to_string().contains("must be a string"), "{e}");
    }

    #[test]
    fn sns_hosts() {
        for ok in [
            "sns.us-east-1.amazonaws.com",
            "sns.us-gov-west-1.amazonaws.com",
            "SNS.EU-WEST-3.AMAZONAWS.COM",
            "sns.cn-north-1.amazonaws.com.cn",
            "sns.cn-northwest-1.amazonaws.com.cn",
            "sns.ap-southeast-5.amazonaws.com",
            "sns.us-iso-east-1.amazonaws.com",
            "sns.us-isob-east-1.amazonaws.com",
        ] {
            assert!(is_sns_host(ok), "{ok}");
        }
        for bad in [
            // S3 legacy virtual-host names: a bucket called "sns".
            "sns.s3-external-1.amazonaws.com",
            "sns.s3-us-west-2.amazonaws.com",
            "sns.s3.amazonaws.com",
            "sns.s3-website-us-east-1.amazonaws.com",
            "sns.s3.us-east-1.amazonaws.com",
            // Region shapes in the wrong partition, or not regions.
            "sns.cn-north-1.amazonaws.com",
            "sns.us-east-1.amazonaws.com.cn",
            "sns.us-east.amazonaws.com",
            "sns.us-east-1a.amazonaws.com",
            "sns.usa-east-1.amazonaws.com",
            "sns.us-gov-west.amazonaws.com",
            "sns.us-foo-west-1.amazonaws.com",
            "sns.us--east-1.amazonaws.com",
            "sns.amazonaws.com",
            "sns.x.amazonaws.com",
            "sns.evil.com.amazonaws.com",
            "sns.us-east-1.amazonaws.com.evil.com",
            "evil-sns.us-east-1.amazonaws.com",
            "sqs.us-east-1.amazonaws.com",
            "127.0.0.1",
            "",
        ] {
            assert!(!is_sns_host(bad), "{bad}");
        }
    }

    #[test]
    fn url_rules() {
        let sns = Sns::new(SnsConfig::default(), "t", false).unwrap();
        let pem = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-abc.pem";
        assert!(sns.allowed_url(pem, true).is_ok());
        let e = sns
            .allowed_url("http://sns.us-west-2.amazonaws.com/x.pem", true)
            .unwrap_err();
        assert!(e.contains("not HTTPS"), "{e}");
        let e = sns
            .allowed_url("https://example.com/x.pem", true)
            .unwrap_err();
        assert!(e.contains("not an SNS endpoint"), "{e}");
        let e = sns
            .allowed_url("https://sns.us-west-2.amazonaws.com/x.txt", true)
            .unwrap_err();
        assert!(e.contains(".pem"), "{e}");
        assert!(
            sns.allowed_url(
                "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
                false
            )
            .is_ok()
        );
        // A query names no other certificate: refused on a SigningCertURL (even an empty
        // one), which SNS never sends with one.
        for q in [format!("{pem}?n=1"), format!("{pem}?")] {
            let e = sns.allowed_url(&q, true).unwrap_err();
            assert!(e.contains("query"), "{q}: {e}");
        }
        // User info and fragments, on both kinds of URL.
        let subscribe = "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:111122223333:t&Token=tok";
        for cert in [true, false] {
            let url = if cert { pem } else { subscribe };
            let (scheme, rest) = url.split_at("https://".len());
            for bad in [
                format!("{scheme}user@{rest}"),
                format!("{scheme}user:pw@{rest}"),
                format!("{scheme}:pw@{rest}"),
            ] {
                let e = sns.allowed_url(&bad, cert).unwrap_err();
                assert!(e.contains("user info"), "{bad}: {e}");
            }
            for bad in [format!("{url}#x"), format!("{url}#")] {
                let e = sns.allowed_url(&bad, cert).unwrap_err();
                assert!(e.contains("fragment"), "{bad}: {e}");
            }
        }
        assert!(sns.allowed_url(subscribe, false).is_ok());
        // The cache key: host (port) and path only.
        let key = |u: &str| cert_key(&reqwest::Url::parse(u).unwrap());
        assert_eq!(
            key(pem),
            "sns.us-west-2.amazonaws.com/SimpleNotificationService-abc.pem"
        );
        assert_eq!(
            key("https://SNS.us-west-2.amazonaws.com/a.pem?x#y"),
            "sns.us-west-2.amazonaws.com/a.pem"
        );
        assert_eq!(key("https://127.0.0.1:8443/a.pem"), "127.0.0.1:8443/a.pem");
        let local = Sns::new(
            SnsConfig {
                cert_hosts: Some(vec!["localhost".into()]),
                ..SnsConfig::default()
            },
            "t",
            false,
        )
        .unwrap();
        assert!(
            local
                .allowed_url("https://LOCALHOST:8443/c.pem", true)
                .is_ok()
        );
        let e = local.allowed_url(pem, true).unwrap_err();
        assert!(e.contains("not in sns.cert_hosts"), "{e}");
    }

    #[tokio::test]
    async fn failed_fetches_take_no_place_in_the_cache() {
        // A port nothing listens on: the fetch fails at connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let sns = Sns::new(
            SnsConfig {
                cert_hosts: Some(vec!["127.0.0.1".into()]),
                ..SnsConfig::default()
            },
            "t",
            false,
        )
        .unwrap();
        for i in 0..3 {
            let url = sns
                .allowed_url(&format!("https://127.0.0.1:{port}/{i}.pem"), true)
                .unwrap();
            let e = sns.cert(&url).await.unwrap_err();
            assert_eq!(e.kind(), "sns_cert_fetch", "{e}");
        }
        let c = sns.certs.lock();
        assert!(c.cells.is_empty() && c.order.is_empty());
    }
}
