//! `type = "http"`: POSTs each batch as newline-delimited JSON to `url`.
//!
//! 2xx is delivered. 408, 429, 5xx, timeouts and connection errors are retried with
//! backoff, honouring `Retry-After` (seconds or an HTTP date). Any other status is a
//! permanent error for the batch: the server has told us the request itself is wrong, and
//! resending it unchanged will not help. Redirects are not followed (a 301/302 would turn
//! the POST into a GET and lose the body); they are permanent errors naming the location.

pub(crate) mod config;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{
    CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderName,
    HeaderValue, LOCATION, RETRY_AFTER, TE, TRANSFER_ENCODING, UPGRADE,
};
use reqwest::{Method, StatusCode, Url};

use super::compress::compress;
use super::encode::Encoding;
use super::lines::{LinesBatch, LinesBatchBuilder, batch_pool};
use super::pool::BufferPool;
use super::sink::{BatchSettings, Failure, SendResult, Sink};

/// How much of an error response body goes into the log line / dead letter.
const ERROR_BODY_LIMIT: usize = 1024;

/// `compression`: one definition for every component; HTTP outputs send `none` or `gzip`.
pub(crate) use crate::config::Compression as HttpCompression;

/// `Debug` hides header values and all of the URL but its origin.
#[derive(Clone, PartialEq)]
pub(crate) struct HttpConfig {
    pub url: String,
    /// Default `POST`.
    pub method: String,
    pub headers: Vec<(String, String)>,
    /// With `gzip`, `max_bytes` still applies to the uncompressed body.
    pub compression: HttpCompression,
    /// Whole request, connect to last body byte. Default 30 s.
    pub timeout: Duration,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::config::redact::{HeaderNames, UrlOrigin};
        f.debug_struct("HttpConfig")
            .field("url", &UrlOrigin(&self.url))
            .field("method", &self.method)
            .field("headers", &HeaderNames(&self.headers))
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            url: String::new(),
            method: "POST".into(),
            headers: Vec::new(),
            compression: HttpCompression::None,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpConfigError {
    #[error("url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("method {0:?} is not a valid HTTP method")]
    Method(String),
    #[error("header {name:?}: {reason}")]
    Header { name: String, reason: String },
    #[error("timeout must be greater than zero")]
    Timeout,
    #[error("compression {0}: http outputs support compression none or gzip")]
    Compression(HttpCompression),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

pub(crate) struct HttpSink {
    client: reqwest::Client,
    url: Url,
    method: Method,
    headers: HeaderMap,
    compression: HttpCompression,
    batch: BatchSettings,
    encoding: Arc<Encoding>,
    /// Batch buffers, reused from one batch to the next.
    pool: BufferPool,
}

impl HttpSink {
    pub(crate) fn new(
        config: &HttpConfig,
        encoding: Encoding,
        batch: &BatchSettings,
    ) -> Result<Self, HttpConfigError> {
        let url_err = |reason: String| HttpConfigError::Url {
            url: config.url.clone(),
            reason,
        };
        let url = Url::parse(&config.url).map_err(|e| url_err(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(url_err("scheme must be http or https".into()));
        }
        let method = Method::from_bytes(config.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| HttpConfigError::Method(config.method.clone()))?;
        if config.timeout.is_zero() {
            return Err(HttpConfigError::Timeout);
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        for (name, value) in &config.headers {
            let header_err = |reason: String| HttpConfigError::Header {
                name: name.clone(),
                reason,
            };
            let n =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| header_err(e.to_string()))?;
            if n == CONTENT_ENCODING {
                return Err(header_err("set by `compression`".into()));
            }
            // Framing headers belong to the HTTP client: a user's `Content-Length` would
            // make the client send a truncated body that the server takes as a whole
            // request, so acked records would vanish while counted as sent.
            if [
                CONTENT_LENGTH,
                TRANSFER_ENCODING,
                HOST,
                CONNECTION,
                TE,
                UPGRADE,
            ]
            .contains(&n)
            {
                return Err(header_err(
                    "set by the HTTP client for each request (message framing)".into(),
                ));
            }
            let v = HeaderValue::from_str(value).map_err(|e| header_err(e.to_string()))?;
            // A user-supplied Content-Type replaces the default; other names may repeat.
            if n == CONTENT_TYPE {
                headers.insert(n, v);
            } else {
                headers.append(n, v);
            }
        }
        match config.compression {
            HttpCompression::None => {}
            HttpCompression::Gzip => {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            c @ HttpCompression::Zstd => return Err(HttpConfigError::Compression(c)),
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(HttpSink {
            client,
            url,
            method,
            headers,
            compression: config.compression,
            batch: batch.clone(),
            encoding: Arc::new(encoding),
            pool: batch_pool(),
        })
    }

    fn body(&self, batch: &LinesBatch) -> std::io::Result<Bytes> {
        match self.compression {
            HttpCompression::None => Ok(batch.body.clone()),
            HttpCompression::Gzip => Ok(Bytes::from(compress(HttpCompression::Gzip, &batch.body)?)),
            // Refused by `new`.
            c @ HttpCompression::Zstd => Err(std::io::Error::other(format!(
                "compression {c} is not supported by http outputs"
            ))),
        }
    }
}

impl Sink for HttpSink {
    type Builder = LinesBatchBuilder;
    /// One stream of records: every batch is alike.
    type Partition = ();

    fn partition(&self, _record: &crate::event::Record) -> Result<(), &'static str> {
        Ok(())
    }

    fn new_batch(&self, _partition: &()) -> LinesBatchBuilder {
        LinesBatchBuilder::new(&self.batch, self.encoding.clone(), &self.pool)
    }

    async fn send(&self, _partition: &(), batch: &LinesBatch) -> SendResult {
        let body = match self.body(batch) {
            Ok(b) => b,
            Err(e) => {
                return SendResult::Failed(Failure::permanent("compression_error", e.to_string()));
            }
        };
        let request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .body(body);
        match request.send().await {
            Ok(response) => classify_response(response).await,
            Err(e) => SendResult::Failed(classify_error(&e)),
        }
    }
}

async fn classify_response(mut response: reqwest::Response) -> SendResult {
    let status = response.status();
    if status.is_success() {
        return SendResult::Delivered;
    }
    let retry_after = retry_after_of(&response);
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = body_snippet(&mut response, ERROR_BODY_LIMIT).await;
    let mut message = format!("HTTP {status}");
    if let Some(loc) = location {
        message.push_str(&format!(" (location: {loc})"));
    }
    if !text.is_empty() {
        message.push_str(": ");
        message.push_str(&text);
    }
    let (retryable, reason) = match status {
        StatusCode::TOO_MANY_REQUESTS => (true, "throttled"),
        StatusCode::REQUEST_TIMEOUT => (true, "request_timeout"),
        s if s.is_server_error() => (true, "server_error"),
        StatusCode::UNAUTHORIZED => (false, "unauthorized"),
        StatusCode::FORBIDDEN => (false, "forbidden"),
        StatusCode::NOT_FOUND => (false, "not_found"),
        StatusCode::PAYLOAD_TOO_LARGE => (false, "payload_too_large"),
        s if s.is_redirection() => (false, "redirect"),
        _ => (false, "client_error"),
    };
    let mut failure = if retryable {
        Failure::retryable(reason, message)
    } else {
        Failure::permanent(reason, message)
    };
    failure.retry_after = retry_after;
    SendResult::Failed(failure)
}

/// The `Retry-After` of an error answer (RFC 9110 §10.2.3), when it parses.
pub(crate) fn retry_after_of(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// The first `limit` bytes of an error answer's body as trimmed text, for the failure
/// message: enough to show the server's reason without reading a large body.
pub(crate) async fn body_snippet(response: &mut reqwest::Response, limit: usize) -> String {
    let mut snippet = Vec::new();
    while snippet.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                snippet.extend_from_slice(&chunk[..chunk.len().min(limit - snippet.len())])
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&snippet).trim().to_string()
}

fn classify_error(e: &reqwest::Error) -> Failure {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    let reason = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection_error"
    } else {
        "request_error"
    };
    Failure::retryable(reason, message)
}

/// `Retry-After: 120` or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT` (a date in the past
/// means "now"). Unparseable values are ignored: the jittered backoff applies.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(at);
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT"),
            Some(Duration::ZERO)
        );
        let future = chrono::Utc::now() + chrono::Duration::seconds(100);
        let header = future.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let d = parse_retry_after(&header).unwrap();
        assert!(
            d > Duration::from_secs(95) && d <= Duration::from_secs(100),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
    }

    #[test]
    fn config_errors_name_the_key() {
        let batch = BatchSettings {
            max_records: 10,
            max_bytes: 1000,
            max_age: Duration::from_secs(1),
        };
        let cfg = |f: fn(&mut HttpConfig)| {
            let mut c = HttpConfig {
                url: "http://127.0.0.1:1/x".into(),
                ..HttpConfig::default()
            };
            f(&mut c);
            HttpSink::new(&c, Encoding::default(), &batch)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(cfg(|_| {}), None);
        assert!(
            cfg(|c| c.url = "ftp://x/".into())
                .unwrap()
                .contains("scheme")
        );
        assert!(
            cfg(|c| c.url = "not a url".into())
                .unwrap()
                .starts_with("url")
        );
        assert!(
            cfg(|c| c.method = "PO ST".into())
                .unwrap()
                .contains("method")
        );
        assert!(
            cfg(|c| c.headers = vec![("bad name".into(), "v".into())])
                .unwrap()
                .contains("bad name")
        );
        // Framing headers: a user's Content-Length truncated every body (records acked,
        // counted as sent, never delivered whole).
        for name in ["Content-Length", "transfer-encoding", "Host", "connection"] {
            let c = HttpConfig {
                url: "http://127.0.0.1:1/x".into(),
                headers: vec![(name.into(), "5".into())],
                ..HttpConfig::default()
            };
            let e = HttpSink::new(&c, Encoding::default(), &batch)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("framing"), "{name}: {e:?}");
        }
        assert!(
            cfg(|c| c.headers = vec![("x".into(), "a\nb".into())])
                .unwrap()
                .starts_with("header")
        );
        assert!(
            cfg(|c| c.timeout = Duration::ZERO)
                .unwrap()
                .contains("timeout")
        );
    }

    mod server {
        use std::io::Read;
        use std::sync::Arc;
        use std::time::Instant;

        use axum::Router;
        use axum::body::Bytes as AxBytes;
        use axum::extract::State;
        use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
        use axum::response::{IntoResponse, Response};
        use axum::routing::post;
        use parking_lot::Mutex;

        /// What the server saw: arrival time, headers, decoded body.
        pub type Seen = Arc<Mutex<Vec<(Instant, AxHeaders, String)>>>;

        /// Answers the n-th request (from 0) with `script[n]`, then 200 forever.
        pub async fn start(script: Vec<(u16, Option<&'static str>)>) -> (String, Seen) {
            let seen: Seen = Arc::default();
            let state = (seen.clone(), Arc::new(script));
            let app = Router::new()
                .route("/ingest", post(handle))
                .with_state(state);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            (format!("http://{addr}/ingest"), seen)
        }

        type St = (Seen, Arc<Vec<(u16, Option<&'static str>)>>);

        async fn handle(
            State((seen, script)): State<St>,
            headers: AxHeaders,
            body: AxBytes,
        ) -> Response {
            let text = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                let mut out = String::new();
                if flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut out)
                    .is_err()
                {
                    return (AxStatus::BAD_REQUEST, "bad gzip").into_response();
                }
                out
            } else {
                String::from_utf8_lossy(&body).into_owned()
            };
            let n = {
                let mut s = seen.lock();
                s.push((Instant::now(), headers, text));
                s.len() - 1
            };
            match script.get(n) {
                Some(&(code, retry_after)) => {
                    let status =
                        AxStatus::from_u16(code).unwrap_or(AxStatus::INTERNAL_SERVER_ERROR);
                    match retry_after {
                        Some(ra) => (status, [("retry-after", ra)], "try later").into_response(),
                        None => (status, "nope").into_response(),
                    }
                }
                None => AxStatus::OK.into_response(),
            }
        }
    }

    fn settings() -> BatchSettings {
        BatchSettings {
            max_records: 100,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        }
    }

    async fn run_through(
        url: String,
        compression: HttpCompression,
        records: usize,
        policy: crate::output::retry::RetryPolicy,
    ) -> crate::output::OutputSummary {
        let cfg = HttpConfig {
            url,
            headers: vec![("x-api-key".into(), "secret".into())],
            compression,
            timeout: Duration::from_secs(5),
            ..HttpConfig::default()
        };
        let sink = Arc::new(
            HttpSink::new(
                &cfg,
                Encoding {
                    tag_key: Some("tag".into()),
                    time_key: None,
                },
                &settings(),
            )
            .unwrap(),
        );
        let (writer, reader) = crate::output::test_buffer();
        let recs = (0..records)
            .map(|i| {
                let mut f = serde_json::Map::new();
                f.insert("i".into(), i.into());
                crate::event::Record::new("web", 0, f)
            })
            .collect();
        writer.push(recs).await.unwrap();
        writer.close();
        let mut ctx = crate::output::OutputContext::new("http", settings());
        ctx.retry = policy;
        crate::output::run(ctx, sink, reader).await
    }

    #[tokio::test]
    async fn retries_503_and_429_honouring_retry_after_then_delivers_gzip() {
        let (url, seen) = server::start(vec![(503, Some("1")), (429, Some("1"))]).await;
        let policy = crate::output::retry::RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(10),
            ..Default::default()
        };
        let summary = run_through(url, HttpCompression::Gzip, 3, policy).await;
        assert_eq!(
            summary,
            crate::output::OutputSummary {
                sent: 3,
                ..Default::default()
            }
        );
        let seen = seen.lock();
        assert_eq!(seen.len(), 3);
        let want =
            "{\"tag\":\"web\",\"i\":0}\n{\"tag\":\"web\",\"i\":1}\n{\"tag\":\"web\",\"i\":2}\n";
        for (_, headers, body) in seen.iter() {
            assert_eq!(
                body, want,
                "gzip body decodes to the same NDJSON every attempt"
            );
            assert_eq!(headers["content-type"], "application/x-ndjson");
            assert_eq!(headers["x-api-key"], "secret");
        }
        // `Retry-After: 1` is honoured although it exceeds max_backoff (10 ms): each retry
        // waits the 1 s asked, not the jittered backoff.
        for pair in seen.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap >= Duration::from_millis(990) && gap < Duration::from_secs(3),
                "retry came after {gap:?}"
            );
        }
    }

    #[tokio::test]
    async fn retry_after_seconds_delay_is_respected() {
        let (url, seen) = server::start(vec![(503, Some("1"))]).await;
        let summary = run_through(url, HttpCompression::None, 2, Default::default()).await;
        assert_eq!(summary.sent, 2);
        let seen = seen.lock();
        assert_eq!(seen.len(), 2);
        let gap = seen[1].0 - seen[0].0;
        assert!(
            gap >= Duration::from_millis(990) && gap < Duration::from_secs(3),
            "gap {gap:?}"
        );
        assert!(seen[0].1.get("content-encoding").is_none());
    }

    #[tokio::test]
    async fn client_error_is_permanent_and_not_retried() {
        let (url, seen) = server::start(vec![(400, None)]).await;
        let summary = run_through(url, HttpCompression::None, 2, Default::default()).await;
        assert_eq!(
            summary,
            crate::output::OutputSummary {
                failed: 2,
                ..Default::default()
            }
        );
        assert_eq!(seen.lock().len(), 1);
    }

    #[tokio::test]
    async fn connection_refused_is_retryable() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = HttpConfig {
            url: format!("http://127.0.0.1:{port}/"),
            ..HttpConfig::default()
        };
        let sink = HttpSink::new(&cfg, Encoding::default(), &settings()).unwrap();
        let batch = LinesBatch {
            body: Bytes::from_static(b"{}\n"),
        };
        match sink.send(&(), &batch).await {
            SendResult::Failed(f) => {
                assert!(f.retryable && f.reason == "connection_error", "{f:?}")
            }
            other => panic!("expected failure, got {other:?}"),
        }
    }
}
