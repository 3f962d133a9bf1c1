//! HTTP input: `POST /` and `POST /tag/<tag>` with a JSON object, a JSON array of objects
//! or NDJSON, optionally gzip-compressed.
//!
//! A request is all or nothing: either every record in the body is accepted (2xx) or none
//! is (4xx/5xx). A full buffer answers 503 with `Retry-After`, never 429 or another 4xx:
//! SNS treats every 4xx as delivered and drops the message; EventBridge API destinations
//! retry 429 and 5xx alike.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use http_body_util::BodyExt;
use metrics::Counter;
use serde_json::Value;

use super::{Ingest, IngestError};
use crate::buffer::budget::MemoryBudget;
use crate::event::{Fields, Record, now_ns};

/// Who may post.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpAuth {
    None,
    /// A header that must carry this exact value (EventBridge connections' `API_KEY`).
    ApiKey {
        header: String,
        value: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        token: String,
    },
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        username: String,
        password: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// A JSON object, a JSON array of objects, or NDJSON, told apart by the content.
    Auto,
    /// Exactly one JSON document (object or array of objects).
    Json,
    /// One JSON object per line.
    Ndjson,
}

#[derive(Clone, Debug)]
pub struct HttpInputConfig {
    pub name: String,
    pub listen: String,
    pub auth: HttpAuth,
    /// Largest accepted body, compressed and decompressed alike. Default 8 MiB.
    pub max_body: usize,
    pub format: BodyFormat,
    /// Tag for records posted to `/` (default: the input name). EventBridge events posted
    /// to `/` are tagged with their `detail-type` instead.
    pub tag: Option<String>,
    /// How long a request may wait for buffer space before answering 503. EventBridge API
    /// destinations give up after 5 s, so the default stays well below that.
    pub accept_timeout: Duration,
}

impl HttpInputConfig {
    pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;

    pub fn new(name: &str, listen: &str) -> Self {
        HttpInputConfig {
            name: name.to_string(),
            listen: listen.to_string(),
            auth: HttpAuth::None,
            max_body: Self::DEFAULT_MAX_BODY,
            format: BodyFormat::Auto,
            tag: None,
            accept_timeout: Duration::from_secs(2),
        }
    }
}

struct Shared {
    cfg: HttpInputConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    records: Counter,
    bytes: Counter,
}

impl Shared {
    fn error(&self, kind: &'static str) {
        metrics::counter!("firelane_input_errors_total", "input" => self.cfg.name.clone(), "kind" => kind)
            .increment(1);
    }
}

/// Binds the listener (so the caller can mark readiness) and serves until the drain window
/// of `shutdown` is over (it keeps accepting after SIGTERM; see [`crate::input::drain`]),
/// then finishes the requests in flight.
pub async fn spawn(
    cfg: HttpInputConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    shutdown: crate::input::drain::InputShutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // The caller adds "input NAME" as context; these messages say what went wrong.
    let addr: SocketAddr = cfg
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid listen address {:?}: {e}", cfg.listen))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let name = cfg.name.clone();
    let shared = Arc::new(Shared {
        records: metrics::counter!("firelane_input_records_total", "input" => name.clone()),
        bytes: metrics::counter!("firelane_input_bytes_total", "input" => name.clone()),
        cfg,
        ingest,
        budget,
    });
    let app = Router::new()
        .route("/", post(post_root))
        .route("/tag/{*tag}", post(post_tagged))
        .with_state(shared);
    tracing::info!(input = %name, %addr, "http input listening");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.stopped_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(input = %name, "http input stopped: {e}");
        }
    }))
}

async fn post_root(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    handle(s, None, headers, body).await
}

async fn post_tagged(
    State(s): State<Arc<Shared>>,
    Path(tag): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(s, Some(tag), headers, body).await
}

fn reply(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::json!({ "error": msg }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn unavailable(msg: &str) -> Response {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

async fn handle(s: Arc<Shared>, tag: Option<String>, headers: HeaderMap, body: Body) -> Response {
    if !authorized(&s.cfg.auth, &headers) {
        s.error("unauthorized");
        crate::warn_limited!(
            "http_unauthorized",
            "input {}: rejected a request with bad credentials",
            s.cfg.name
        );
        let mut r = reply(StatusCode::UNAUTHORIZED, "missing or invalid credentials");
        if let HttpAuth::Basic { .. } = s.cfg.auth {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"firelane\""),
            );
        }
        return r;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.cfg.max_body as u64) {
        s.error("too_large");
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than {} bytes", s.cfg.max_body),
        );
    }
    // Admission: reserve the body's size before reading it, so a burst of large posts
    // waits for memory instead of growing the process.
    let Some(mut reservation) = s.budget.try_acquire(declared.unwrap_or(64 * 1024) as usize) else {
        s.error("full");
        return unavailable("memory budget exhausted, retry later");
    };
    let raw = match http_body_util::Limited::new(body, s.cfg.max_body)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                s.error("too_large");
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body larger than {} bytes", s.cfg.max_body),
                );
            }
            s.error("read_failed");
            return reply(StatusCode::BAD_REQUEST, "could not read the request body");
        }
    };
    s.bytes.increment(raw.len() as u64);
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => false,
        Some(e) if e.is_empty() || e == "identity" => false,
        Some(e) if e == "gzip" || e == "x-gzip" => true,
        Some(e) => {
            s.error("bad_encoding");
            return reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("unsupported Content-Encoding {e:?}"),
            );
        }
    };
    let data: Bytes = if gzip {
        match gunzip_capped(&raw, s.cfg.max_body) {
            Ok(d) => Bytes::from(d),
            Err(GunzipError::TooLarge) => {
                s.error("too_large");
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("decompressed body larger than {} bytes", s.cfg.max_body),
                );
            }
            Err(GunzipError::Corrupt(e)) => {
                s.error("bad_body");
                return reply(StatusCode::BAD_REQUEST, &format!("invalid gzip body: {e}"));
            }
        }
    } else {
        raw
    };
    if let Some(extra) = s.budget.try_acquire(data.len().saturating_mul(3)) {
        reservation.merge(extra);
    }
    let default_tag = tag.is_none();
    let tag: Arc<str> = Arc::from(
        tag.or_else(|| s.cfg.tag.clone())
            .unwrap_or_else(|| s.cfg.name.clone()),
    );
    let records = match parse_body(&data, s.cfg.format, &tag, default_tag) {
        Ok(r) => r,
        Err(e) => {
            s.error("bad_body");
            crate::warn_limited!(
                "http_bad_body",
                "input {}: rejected a request: {e}",
                s.cfg.name
            );
            return reply(StatusCode::BAD_REQUEST, &e);
        }
    };
    let n = records.len();
    if n == 0 {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"accepted":0}"#,
        )
            .into_response();
    }
    match tokio::time::timeout(s.cfg.accept_timeout, s.ingest.ingest(records)).await {
        Ok(Ok(())) => {
            s.records.increment(n as u64);
            drop(reservation);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"accepted\":{n}}}"),
            )
                .into_response()
        }
        Ok(Err(IngestError::ShuttingDown)) => unavailable("shutting down"),
        Ok(Err(IngestError::Full)) | Err(_) => {
            s.error("full");
            unavailable("buffers are full, retry later")
        }
        Ok(Err(e @ IngestError::TooLarge { .. })) => {
            s.error(e.kind());
            (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response()
        }
        Ok(Err(e)) => {
            s.error(e.kind());
            unavailable(&e.to_string())
        }
    }
}

fn authorized(auth: &HttpAuth, headers: &HeaderMap) -> bool {
    let authz = || {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    match auth {
        HttpAuth::None => true,
        HttpAuth::ApiKey {
            header: name,
            value,
        } => headers
            .get(name.as_str())
            .is_some_and(|v| constant_time_eq(v.as_bytes(), value.as_bytes())),
        HttpAuth::Bearer { token } => {
            let given = authz();
            let given = given
                .strip_prefix("Bearer ")
                .or_else(|| given.strip_prefix("bearer "))
                .unwrap_or("");
            !given.is_empty() && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
        }
        HttpAuth::Basic { username, password } => {
            let given = authz();
            let Some(b64) = given
                .strip_prefix("Basic ")
                .or_else(|| given.strip_prefix("basic "))
            else {
                return false;
            };
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
                return false;
            };
            let expected = format!("{username}:{password}");
            constant_time_eq(&decoded, expected.as_bytes())
        }
    }
}

/// Comparison whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

enum GunzipError {
    TooLarge,
    Corrupt(String),
}

fn gunzip_capped(data: &[u8], cap: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::new();
    let mut dec = flate2::read::MultiGzDecoder::new(data).take(cap as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| GunzipError::Corrupt(e.to_string()))?;
    if out.len() > cap {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

/// Parses a body into records; any invalid part rejects the whole body.
pub fn parse_body(
    data: &[u8],
    format: BodyFormat,
    tag: &Arc<str>,
    default_tag: bool,
) -> Result<Vec<Record>, String> {
    let now = now_ns();
    let mut docs: Vec<Value> = Vec::new();
    match format {
        BodyFormat::Ndjson => {
            for (i, line) in data.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let v: Value =
                    serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", i + 1))?;
                if !v.is_object() {
                    return Err(format!(
                        "line {}: expected a JSON object, found {}",
                        i + 1,
                        kind(&v)
                    ));
                }
                docs.push(v);
            }
        }
        BodyFormat::Json | BodyFormat::Auto => {
            let mut stream = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
            for item in stream.by_ref() {
                let v = item.map_err(|e| {
                    format!(
                        "invalid JSON at line {} column {}: {e}",
                        e.line(),
                        e.column()
                    )
                })?;
                docs.push(v);
            }
            if format == BodyFormat::Json && docs.len() > 1 {
                return Err(
                    "expected one JSON document (use format = \"ndjson\" for several)".into(),
                );
            }
            if docs.len() == 1 && docs[0].is_array() {
                let Some(Value::Array(items)) = docs.pop() else {
                    unreachable!("checked is_array")
                };
                for (i, v) in items.iter().enumerate() {
                    if !v.is_object() {
                        return Err(format!(
                            "array element {i}: expected a JSON object, found {}",
                            kind(v)
                        ));
                    }
                }
                docs = items;
            } else {
                for (i, v) in docs.iter().enumerate() {
                    if !v.is_object() {
                        return Err(format!(
                            "document {}: expected a JSON object, found {}",
                            i + 1,
                            kind(v)
                        ));
                    }
                }
            }
        }
    }
    Ok(docs
        .into_iter()
        .filter_map(|v| match v {
            Value::Object(fields) => Some(fields),
            _ => None,
        })
        .map(|fields| {
            let tag = if default_tag {
                eventbridge_tag(&fields).unwrap_or_else(|| tag.clone())
            } else {
                tag.clone()
            };
            Record {
                tag,
                time_ns: now,
                fields,
            }
        })
        .collect())
}

/// An EventBridge event (`source`, `detail-type`, `detail`) is tagged with its detail-type.
fn eventbridge_tag(fields: &Fields) -> Option<Arc<str>> {
    match (
        fields.get("source"),
        fields.get("detail-type"),
        fields.get("detail"),
    ) {
        (Some(Value::String(_)), Some(Value::String(dt)), Some(_)) => Some(Arc::from(dt.as_str())),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> Arc<str> {
        Arc::from("t")
    }

    #[test]
    fn body_shapes() {
        assert_eq!(
            parse_body(br#"{"a":1}"#, BodyFormat::Auto, &tag(), true)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            parse_body(br#"[{"a":1},{"b":2}]"#, BodyFormat::Auto, &tag(), true)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_body(b"{\"a\":1}\n{\"b\":2}\n\n", BodyFormat::Auto, &tag(), true)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_body(b"{\"a\":1}\n{\"b\":2}", BodyFormat::Ndjson, &tag(), true)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_body(b"", BodyFormat::Auto, &tag(), true)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn bad_bodies_reject_everything() {
        assert!(
            parse_body(
                b"{\"a\":1}\n{bad}\n{\"c\":3}",
                BodyFormat::Auto,
                &tag(),
                true
            )
            .is_err()
        );
        assert!(parse_body(b"{\"a\":1}\n{bad}", BodyFormat::Ndjson, &tag(), true).is_err());
        assert!(parse_body(b"42", BodyFormat::Auto, &tag(), true).is_err());
        assert!(parse_body(b"\"x\"", BodyFormat::Auto, &tag(), true).is_err());
        assert!(parse_body(b"[1,2]", BodyFormat::Auto, &tag(), true).is_err());
        assert!(parse_body(b"[{\"a\":1}, 2]", BodyFormat::Auto, &tag(), true).is_err());
        assert!(parse_body(b"{\"a\":1}{\"b\":2}", BodyFormat::Json, &tag(), true).is_err());
        assert!(parse_body(b"\xff\xfe", BodyFormat::Auto, &tag(), true).is_err());
    }

    #[test]
    fn eventbridge_events_are_tagged_by_detail_type() {
        let body = br#"{"source":"aws.ecs","detail-type":"ECS Task State Change","detail":{}}"#;
        let r = parse_body(body, BodyFormat::Auto, &tag(), true).unwrap();
        assert_eq!(&*r[0].tag, "ECS Task State Change");
        let r = parse_body(body, BodyFormat::Auto, &tag(), false).unwrap();
        assert_eq!(&*r[0].tag, "t");
    }

    #[test]
    fn auth_schemes() {
        let mut h = HeaderMap::new();
        let key = HttpAuth::ApiKey {
            header: "x-api-key".into(),
            value: "s3cret".into(),
        };
        assert!(!authorized(&key, &h));
        h.insert("x-api-key", HeaderValue::from_static("s3cret"));
        assert!(authorized(&key, &h));
        h.insert("x-api-key", HeaderValue::from_static("wrong!"));
        assert!(!authorized(&key, &h));

        let bearer = HttpAuth::Bearer {
            token: "tok".into(),
        };
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert!(authorized(&bearer, &h));
        let basic = HttpAuth::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        assert!(!authorized(&basic, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpw"),
        );
        assert!(authorized(&basic, &h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(!authorized(&basic, &h));
    }

    #[test]
    fn gzip_cap() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&vec![b'a'; 10_000]).unwrap();
        let gz = e.finish().unwrap();
        assert!(gunzip_capped(&gz, 20_000).is_ok());
        assert!(matches!(
            gunzip_capped(&gz, 5_000),
            Err(GunzipError::TooLarge)
        ));
        assert!(matches!(
            gunzip_capped(b"not gzip", 5_000),
            Err(GunzipError::Corrupt(_))
        ));
    }
}
