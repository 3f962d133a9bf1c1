//! HTTP input: `POST /` and `POST /tag/<tag>` (or `PUT`) with a JSON object, a JSON array
//! of objects or NDJSON, EventBridge events ([`eventbridge`]) or SNS deliveries
//! ([`sns`], signatures verified), optionally gzip- or
//! deflate-compressed (`Content-Encoding`, one coding or a list of them in the order
//! applied, RFC 9110 §8.4). With `dedupe`, repeats of an event `id` are answered 200 and
//! dropped ([`crate::input::dedupe`]).
//!
//! A request is all or nothing: either every record in the body is accepted (2xx) or none
//! is (4xx/5xx). A full buffer answers 503 with `Retry-After`, never 429 or another 4xx:
//! SNS treats every 4xx as delivered and drops the message; EventBridge API destinations
//! retry 429 and 5xx alike.

pub(crate) mod config;
pub(crate) mod eventbridge;
pub(crate) mod sns;

use crate::input::json::json_kind;
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

use super::dedupe::{Dedupe, DedupeConfig};
use super::{Ingest, IngestError};
use crate::buffer::budget::{MemoryBudget, Reservation};
use crate::event::{Fields, Record, now_ns};
use crate::serve::{OnEvent, ServerLimits};

/// Who may post. `Debug` shows the header and user names, never the secrets.
#[derive(Clone, PartialEq)]
pub(crate) enum HttpAuth {
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

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::config::redact::HIDDEN;
        match self {
            HttpAuth::None => f.write_str("None"),
            HttpAuth::ApiKey { header, .. } => f
                .debug_struct("ApiKey")
                .field("header", header)
                .field("value", &HIDDEN)
                .finish(),
            HttpAuth::Bearer { .. } => f.debug_struct("Bearer").field("token", &HIDDEN).finish(),
            HttpAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &HIDDEN)
                .finish(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFormat {
    /// A JSON object, a JSON array of objects, or NDJSON, told apart by the content.
    Auto,
    /// Exactly one JSON document (object or array of objects).
    Json,
    /// One JSON object per line.
    Ndjson,
    /// EventBridge events as an API destination posts them: one event object or a JSON
    /// array of events, each tagged with its `detail-type` and timed by its `time`
    /// ([`eventbridge`]).
    EventBridge,
    /// Amazon SNS HTTP(S) subscription deliveries: signatures verified, notifications
    /// unwrapped, subscriptions confirmed per [`sns::SnsConfig`] ([`sns`]).
    Sns,
}

#[derive(Clone, Debug)]
pub(crate) struct HttpInputConfig {
    pub name: String,
    pub listen: String,
    pub auth: HttpAuth,
    /// Largest accepted body, compressed and decompressed alike. Default 8 MiB.
    pub max_body: usize,
    pub format: BodyFormat,
    /// Tag for records posted to `/` (default: the input name). EventBridge events posted
    /// to `/` are tagged with their `detail-type` instead; with
    /// [`BodyFormat::EventBridge`], a `tag` set here wins over the detail-type.
    pub tag: Option<String>,
    /// How long a request may wait for buffer space before answering 503. EventBridge API
    /// destinations give up after 5 s, so the default stays well below that.
    pub accept_timeout: Duration,
    /// Longest wait for the next bytes of a request body; a stalled request is answered
    /// 408 and closed. Default 10 s.
    pub body_timeout: Duration,
    /// Connection cap and head / keep-alive timeouts of this listener.
    pub limits: ServerLimits,
    /// Repeats of an event `id` (SNS: `MessageId`) dropped (`format = "eventbridge"` or
    /// `"sns"` only).
    pub dedupe: Option<DedupeConfig>,
    /// The `sns` settings; `Some` exactly when `format = "sns"`.
    pub sns: Option<sns::SnsConfig>,
}

impl HttpInputConfig {
    pub(crate) const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;
    /// `max_body` default with `format = "eventbridge"`: an event is at most 256 KB
    /// (PutEvents entry limit) and an API destination sends one per request; 1 MiB leaves
    /// room for arrays from other senders while refusing what no event can be.
    pub(crate) const EVENTBRIDGE_MAX_BODY: usize = 1024 * 1024;
    pub(crate) const DEFAULT_ACCEPT_TIMEOUT: Duration = Duration::from_secs(2);
    pub(crate) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
    /// Room for many clients, well under the 1024 open files a container may be limited to,
    /// next to the forward input, the outputs' sockets and the admin port.
    pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 512;

    pub(crate) fn new(name: &str, listen: &str) -> Self {
        HttpInputConfig {
            name: name.to_string(),
            listen: listen.to_string(),
            auth: HttpAuth::None,
            max_body: Self::DEFAULT_MAX_BODY,
            format: BodyFormat::Auto,
            tag: None,
            accept_timeout: Self::DEFAULT_ACCEPT_TIMEOUT,
            body_timeout: Self::DEFAULT_BODY_TIMEOUT,
            limits: ServerLimits::new(Self::DEFAULT_MAX_CONNECTIONS),
            dedupe: None,
            sns: None,
        }
    }
}

struct Shared {
    cfg: HttpInputConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    records: Counter,
    bytes: Counter,
    dedupe: Option<Dedupe>,
    /// Signature checks and confirmations (`format = "sns"`).
    sns: Option<sns::Sns>,
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
pub(crate) async fn spawn(
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
    let limits = cfg.limits.clone();
    let dedupe = cfg
        .dedupe
        .clone()
        .map(|d| Dedupe::new(d, &name, Some(budget.clone())));
    let sns = match &cfg.sns {
        Some(c) => Some(sns::Sns::new(c.clone(), &name, cfg.auth != HttpAuth::None)?),
        None => None,
    };
    let shared = Arc::new(Shared {
        sns,
        records: metrics::counter!("firelane_input_records_total", "input" => name.clone()),
        bytes: metrics::counter!("firelane_input_bytes_total", "input" => name.clone()),
        dedupe,
        cfg,
        ingest,
        budget,
    });
    let app = Router::new()
        // PUT too: an API destination's HttpMethod may be any but CONNECT and TRACE, and a
        // 405 (a 4xx) would make EventBridge drop the event.
        .route("/", post(post_root).put(post_root))
        .route("/tag/{*tag}", post(post_tagged).put(post_tagged))
        .with_state(shared);
    tracing::info!(input = %name, %addr, "http input listening");
    let input = name.clone();
    let on_event: OnEvent = Arc::new(move |e| {
        metrics::counter!("firelane_input_errors_total", "input" => input.clone(), "kind" => e.kind())
            .increment(1);
    });
    let what = format!("input {name}");
    Ok(tokio::spawn(async move {
        crate::serve::serve(
            listener,
            app,
            limits,
            on_event,
            &what,
            shutdown.stop_token(),
        )
        .await;
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

fn reply_ok(body: &'static str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn unavailable(msg: &str) -> Response {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

/// How long, and how much, a rejected request's unread body is still read (and discarded)
/// after the answer, so a client that writes its whole body before reading gets the answer
/// instead of a connection reset (unread data at close makes the kernel send RST).
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Budget is reserved in steps of at least this many bytes as a body arrives.
const RESERVE_STEP: usize = 16 * 1024;

/// The request body's `Content-Encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Gzip,
    /// RFC 9110 §8.4.1.2: zlib (RFC 1950) around deflate (RFC 1951). Some clients send raw
    /// deflate; both are accepted.
    Deflate,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// The body's content codings in the order they were applied (RFC 9110 §8.4: a list,
/// possibly over several header lines, e.g. `deflate, identity`; empty list elements are
/// ignored, §5.6.1), `identity` left out. `Err` names the first coding not supported.
fn encodings(headers: &HeaderMap) -> Result<Vec<Encoding>, String> {
    let mut out = Vec::new();
    for v in headers.get_all(header::CONTENT_ENCODING) {
        let Ok(v) = v.to_str() else {
            return Err(String::from_utf8_lossy(v.as_bytes()).into_owned());
        };
        for coding in v.split(',') {
            let coding = coding.trim().to_ascii_lowercase();
            match coding.as_str() {
                "" | "identity" => {}
                // RFC 9110 §8.4.1.3: x-gzip is an alias of gzip.
                "gzip" | "x-gzip" => out.push(Encoding::Gzip),
                "deflate" => out.push(Encoding::Deflate),
                _ => return Err(coding),
            }
        }
    }
    Ok(out)
}

/// Adds `Connection: close`: the connection ends after this answer (and the lingering read).
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Answers `r` to a request whose body is not read to its end: reads and discards up to
/// `max_bytes` more of it for [`LINGER_TIME`] in the background, then closes. A client
/// that sent `Expect: 100-continue` and whose body was not `started` (read from, which
/// sends the `100 Continue`) has sent no body: it gets the answer at once.
fn reject_unread(
    body: Body,
    headers: &HeaderMap,
    started: bool,
    max_bytes: usize,
    r: Response,
) -> Response {
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if started || !expects_continue {
        tokio::spawn(async move {
            let mut body = body;
            let mut seen = 0usize;
            let deadline = tokio::time::Instant::now() + LINGER_TIME;
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > max_bytes {
                    break;
                }
            }
        });
    }
    closing(r)
}

fn too_large(max: usize) -> Response {
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body larger than {max} bytes"),
    )
}

/// The answer to records the pipeline did not take: 413 for a record no output can ever
/// take, 503 + `Retry-After` for every transient kind (never another 4xx: SNS counts any
/// 4xx as delivered). The body names the cause (`disk full: ...`).
fn ingest_rejection(e: &IngestError) -> Response {
    match e {
        IngestError::TooLarge { .. } => reply(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
        IngestError::Full => unavailable("buffers are full, retry later"),
        IngestError::ShuttingDown | IngestError::DiskFull { .. } | IngestError::Buffer { .. } => {
            unavailable(&e.to_string())
        }
    }
}

/// Why a request's memory could not be reserved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The request needs more than requests may ever hold
    /// ([`MemoryBudget::shedding_limit`]): waiting would never help, so it is refused for
    /// good (413), before any transient answer.
    Never { need: usize, limit: usize },
    /// Not now: the budget is held by others (503 + `Retry-After`).
    NotNow,
}

/// Grows `reservation` to `total` bytes. Requests take budget only while a quarter of it
/// stays free ([`MemoryBudget::try_acquire_shedding`]): a request holds its reservation
/// until the buffers took its records, and the buffers reserve their own share meanwhile,
/// so requests holding the whole budget would stall the very pushes they wait for.
fn hold(budget: &MemoryBudget, reservation: &mut Reservation, total: usize) -> Result<(), Refusal> {
    // Whole KiB: the budget counts in KiB, so topping up by odd amounts would hold more
    // units than `bytes()` says, and a request near the limit could never fit.
    let total = total.next_multiple_of(crate::buffer::budget::UNIT);
    if total <= reservation.bytes() {
        return Ok(());
    }
    let limit = budget.shedding_limit();
    if total > limit {
        return Err(Refusal::Never { need: total, limit });
    }
    let r = budget
        .try_acquire_shedding(total - reservation.bytes())
        .ok_or(Refusal::NotNow)?;
    reservation.merge(r);
    Ok(())
}

/// Memory charged per JSON token that opens a value or a key (`{`, `[`, `,`, `:` outside
/// strings) on top of the body's bytes, when estimating what parsing will build: a
/// `serde_json::Value` with `preserve_order` and `arbitrary_precision` is 80 bytes, an
/// object entry adds its hash, key `String` and index slot, and every key and number is a
/// heap allocation of its own (measured: an NDJSON line of 150 bytes with 5 short fields
/// parses into about 1.4 KB).
const PARSED_TOKEN_COST: usize = 128;

/// Upper estimate of the memory [`parse_body`] builds from `data`, known before it builds
/// it, by one pass over the bytes: the bytes themselves (strings are copied) plus
/// [`PARSED_TOKEN_COST`] for every token that starts a value or a key. Top-level values
/// hold no such token; `parse_body` refuses a non-object document as soon as it is read,
/// so at most one of them is held.
fn parse_cost(data: &[u8]) -> usize {
    let mut tokens = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in data {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' | b',' | b':' => tokens += 1,
                _ => {}
            }
        }
    }
    data.len()
        .saturating_add(tokens.saturating_mul(PARSED_TOKEN_COST))
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    /// No bytes for `body_timeout`.
    Timeout,
    /// The memory budget could not take the next bytes.
    Budget(Refusal),
    Read(String),
}

/// Reads the body as it arrives, reserving budget for the buffer actually allocated
/// (never for what `Content-Length` announces: a client that sends nothing holds
/// nothing), with at most `body_timeout` between two reads. `declared` (Content-Length)
/// only caps how far the buffer grows ahead of the data.
async fn read_body(
    s: &Shared,
    body: &mut Body,
    declared: Option<usize>,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError> {
    let mut buf: Vec<u8> = Vec::new();
    let ceiling = declared.unwrap_or(s.cfg.max_body).min(s.cfg.max_body);
    loop {
        let frame = match tokio::time::timeout(s.cfg.body_timeout, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let need = buf.len() + data.len();
        if need > s.cfg.max_body {
            return Err(BodyError::TooLarge);
        }
        if need > buf.capacity() {
            // Doubling like `Vec`, but never past what this body can use: the reservation
            // covers the capacity, which is what is allocated.
            let cap = buf
                .capacity()
                .saturating_mul(2)
                .max(RESERVE_STEP)
                .min(ceiling)
                .max(need);
            hold(&s.budget, reservation, cap).map_err(BodyError::Budget)?;
            buf.reserve_exact(cap - buf.len());
            // The allocator may round up; what is allocated is held.
            hold(&s.budget, reservation, buf.capacity()).map_err(BodyError::Budget)?;
        }
        buf.extend_from_slice(&data);
    }
    Ok(Bytes::from(buf))
}

/// The answer to a request whose memory could not be reserved, counted: 413 for one that
/// can never be held (`kind="too_large"`), 503 + `Retry-After` otherwise (`kind="full"`).
fn refused(s: &Shared, refusal: Refusal) -> Response {
    match refusal {
        Refusal::Never { need, limit } => {
            s.error("too_large");
            crate::warn_limited!(
                "http_over_budget",
                "input {}: refused a request needing about {need} bytes of memory to read and parse; requests may hold at most {limit} (3/4 of runtime.memory_limit)",
                s.cfg.name
            );
            reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request needs about {need} bytes of memory to read and parse, more than \
                     a request may hold ({limit} bytes, 3/4 of runtime.memory_limit): send \
                     smaller requests"
                ),
            )
        }
        Refusal::NotNow => {
            s.error("full");
            unavailable("memory budget exhausted, retry later")
        }
    }
}

async fn handle(
    s: Arc<Shared>,
    tag: Option<String>,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    let max = s.cfg.max_body;
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
        return reject_unread(body, &headers, false, max, r);
    }
    let codings = match encodings(&headers) {
        Ok(e) => e,
        Err(e) => {
            s.error("bad_encoding");
            let r = reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "unsupported Content-Encoding {e:?} (gzip, deflate or identity, or a list of them)"
                ),
            );
            return reject_unread(body, &headers, false, max, r);
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        s.error("too_large");
        return reject_unread(body, &headers, false, max, too_large(max));
    }
    // Permanent answers come before transient ones: a body the budget can never hold is
    // 413 at once, not 503 to be retried forever.
    let declared = declared.map(|n| n as usize);
    if let Some(n) = declared {
        let limit = s.budget.shedding_limit();
        if n > limit {
            let r = refused(&s, Refusal::Never { need: n, limit });
            return reject_unread(body, &headers, false, max, r);
        }
    }
    let mut reservation = Reservation::empty();
    let raw = match read_body(&s, &mut body, declared, &mut reservation).await {
        Ok(raw) => raw,
        Err(BodyError::TooLarge) => {
            s.error("too_large");
            return reject_unread(body, &headers, true, max, too_large(max));
        }
        Err(BodyError::Budget(refusal)) => {
            let r = refused(&s, refusal);
            return reject_unread(body, &headers, true, max, r);
        }
        Err(BodyError::Timeout) => {
            s.error("body_timeout");
            crate::warn_limited!(
                "http_body_timeout",
                "input {}: closed a request whose body stalled for {:?} (body_timeout)",
                s.cfg.name,
                s.cfg.body_timeout
            );
            return closing(reply(
                StatusCode::REQUEST_TIMEOUT,
                "request body stalled (body_timeout)",
            ));
        }
        Err(BodyError::Read(e)) => {
            s.error("read_failed");
            return closing(reply(
                StatusCode::BAD_REQUEST,
                &format!("could not read the request body: {e}"),
            ));
        }
    };
    drop(body);
    s.bytes.increment(raw.len() as u64);
    // Codings are undone last applied first, each stage capped at max_body.
    let mut data = raw;
    for &encoding in codings.iter().rev() {
        match decode_capped(encoding, &data, max) {
            Ok(d) => {
                // Decoded bytes are held like received ones: within the budget or not at
                // all (16 concurrent 8 MiB bombs would otherwise hold 128 MiB outside it).
                let total = reservation.bytes().saturating_add(d.len());
                if let Err(refusal) = hold(&s.budget, &mut reservation, total) {
                    return refused(&s, refusal);
                }
                data = Bytes::from(d);
            }
            Err(DecodeError::TooLarge) => {
                s.error("too_large");
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("decompressed body larger than {max} bytes"),
                );
            }
            Err(DecodeError::Corrupt(e)) => {
                s.error("bad_body");
                return reply(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid {} body: {e}", encoding.name()),
                );
            }
        }
    }
    // Parsing happens within the budget or not at all: 120 concurrent 900 KB requests
    // under a 32 MiB budget used to parse outside it when this did not fit, to 285 MiB.
    let total = reservation.bytes().saturating_add(parse_cost(&data));
    if let Err(refusal) = hold(&s.budget, &mut reservation, total) {
        return refused(&s, refusal);
    }
    let default_tag = tag.is_none();
    let tag: Arc<str> = Arc::from(
        tag.or_else(|| s.cfg.tag.clone())
            .unwrap_or_else(|| s.cfg.name.clone()),
    );
    // The request's de-duplication key when the format has one per request (SNS).
    let mut request_key = None;
    let parsed = match (s.cfg.format, &s.sns) {
        (BodyFormat::Sns, Some(sns)) => {
            let named = (!default_tag || s.cfg.tag.is_some()).then_some(&tag);
            match sns
                .take(&headers, &data, named, &tag, &s.budget, &mut reservation)
                .await
            {
                Ok(sns::Delivery::Records {
                    records,
                    message_id,
                }) => {
                    request_key = message_id;
                    Ok(records)
                }
                Ok(sns::Delivery::Handled) => return reply_ok("{}"),
                Err(sns::SnsError::Budget(refusal)) => return refused(&s, refusal),
                Err(e) => {
                    s.error(e.kind());
                    crate::warn_limited!(
                        "http_sns",
                        "input {}: refused an SNS delivery: {e}",
                        s.cfg.name
                    );
                    return match e.status() {
                        StatusCode::SERVICE_UNAVAILABLE => unavailable(&e.to_string()),
                        status => reply(status, &e.to_string()),
                    };
                }
            }
        }
        (BodyFormat::EventBridge, _) => {
            // A tag named by the path or the input wins over each event's detail-type.
            let named = (!default_tag || s.cfg.tag.is_some()).then_some(&tag);
            eventbridge::parse(&data, named).map_err(|e| (e.kind(), e.to_string()))
        }
        (f, _) => parse_body(&data, f, &tag, default_tag).map_err(|e| ("bad_body", e)),
    };
    // The records own their strings; the body is not needed while the buffers take them.
    // The reservation stays until then: the records are not yet counted by any buffer.
    drop(data);
    let records = match parsed {
        Ok(r) => r,
        Err((kind, e)) => {
            s.error(kind);
            crate::warn_limited!(
                "http_bad_body",
                "input {}: rejected a request: {e}",
                s.cfg.name
            );
            return reply(StatusCode::BAD_REQUEST, &e);
        }
    };
    // Repeats of events already taken are answered like accepted ones (they are stored);
    // the others' keys are remembered only once they are buffered, below.
    let (records, keys, duplicates) = match (&s.dedupe, request_key) {
        // One key for the whole request: its records are all repeats or all fresh.
        (Some(d), Some(key)) => {
            let f = d.filter(vec![key], |k| Some(&**k));
            if f.duplicates > 0 {
                (Vec::new(), f.keys, f.duplicates)
            } else {
                (records, f.keys, 0)
            }
        }
        (Some(d), None) => {
            let f = d.filter(records, eventbridge::event_id);
            (f.fresh, f.keys, f.duplicates)
        }
        (None, _) => (records, Vec::new(), 0),
    };
    let accepted = |n: usize| {
        let body = if duplicates > 0 {
            format!("{{\"accepted\":{n},\"duplicates\":{duplicates}}}")
        } else {
            format!("{{\"accepted\":{n}}}")
        };
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    let n = records.len();
    if n == 0 {
        return accepted(0);
    }
    // ECS events update the cluster state once taken (a refused request comes again).
    let ecs = crate::admin::ecs_state::Observed::of(
        matches!(s.cfg.format, BodyFormat::EventBridge | BodyFormat::Sns),
        &records,
    );
    let err = match tokio::time::timeout(s.cfg.accept_timeout, s.ingest.ingest(records)).await {
        Ok(Ok(())) => {
            ecs.apply(|_| true);
            s.records.increment(n as u64);
            if let Some(d) = &s.dedupe {
                d.remember(keys);
            }
            drop(reservation);
            return accepted(n);
        }
        Ok(Err(e)) => e,
        Err(_) => IngestError::Full,
    };
    s.error(err.kind());
    if !matches!(err, IngestError::Full | IngestError::ShuttingDown) {
        crate::warn_limited!(
            "http_ingest",
            "input {}: refused a request: {err}",
            s.cfg.name
        );
    }
    ingest_rejection(&err)
}

/// Whether `headers` carry the credentials `auth` asks for (constant-time comparison).
pub(crate) fn authorized(auth: &HttpAuth, headers: &HeaderMap) -> bool {
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

enum DecodeError {
    TooLarge,
    Corrupt(String),
}

/// Decompresses `data`, failing once the output passes `cap` bytes (compression bombs
/// stop there, not at the end of the stream).
fn decode_capped(enc: Encoding, data: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    match enc {
        Encoding::Gzip => read_capped(flate2::read::MultiGzDecoder::new(data), cap),
        Encoding::Deflate if looks_like_zlib(data) => {
            match read_capped(flate2::read::ZlibDecoder::new(data), cap) {
                // Raw deflate can start with two bytes that pass the zlib header check.
                Err(DecodeError::Corrupt(_)) => {
                    read_capped(flate2::read::DeflateDecoder::new(data), cap)
                }
                r => r,
            }
        }
        Encoding::Deflate => read_capped(flate2::read::DeflateDecoder::new(data), cap),
    }
}

/// RFC 1950 §2.2: CM = 8 (deflate), CINFO <= 7, and CMF*256 + FLG a multiple of 31.
fn looks_like_zlib(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

fn read_capped(dec: impl Read, cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    dec.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if out.len() > cap {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

/// Parses a body into records; any invalid part rejects the whole body.
pub(crate) fn parse_body(
    data: &[u8],
    format: BodyFormat,
    tag: &Arc<str>,
    default_tag: bool,
) -> Result<Vec<Record>, String> {
    let now = now_ns();
    let mut docs: Vec<Value> = Vec::new();
    match format {
        BodyFormat::EventBridge => {
            return eventbridge::parse(data, (!default_tag).then_some(tag))
                .map_err(|e| e.to_string());
        }
        BodyFormat::Sns => {
            // Taking an SNS delivery fetches certificates and may confirm a subscription:
            // only the input's request handler does that.
            return Err("format = \"sns\" is taken by the HTTP input only (signatures are verified as requests arrive)".into());
        }
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
                        json_kind(&v)
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
                if format == BodyFormat::Json && !docs.is_empty() {
                    return Err(
                        "expected one JSON document (use format = \"ndjson\" for several)".into(),
                    );
                }
                // Checked as each document arrives: top-level scalars (`1 1 1 ...`) hold
                // none of the tokens `parse_cost` charges for, so they must not pile up.
                let first = docs.is_empty();
                if !(v.is_object() || (first && v.is_array())) {
                    return Err(format!(
                        "document {}: expected a JSON object, found {}",
                        docs.len() + 1,
                        json_kind(&v)
                    ));
                }
                if docs.first().is_some_and(Value::is_array) {
                    return Err("document 1: expected a JSON object, found an array".into());
                }
                docs.push(v);
            }
            if docs.len() == 1 && docs[0].is_array() {
                let Some(Value::Array(items)) = docs.pop() else {
                    unreachable!("checked is_array")
                };
                for (i, v) in items.iter().enumerate() {
                    if !v.is_object() {
                        return Err(format!(
                            "array element {i}: expected a JSON object, found {}",
                            json_kind(v)
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
                            json_kind(v)
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
            Record::new(tag, now, fields)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> Arc<str> {
        Arc::from("t")
    }

    #[test]
    fn auth_debug_never_shows_a_secret() {
        let shown = format!(
            "{:?} {:?} {:?} {:?}",
            HttpAuth::None,
            HttpAuth::ApiKey {
                header: "x-api-key".into(),
                value: "s3cr3t-key".into()
            },
            HttpAuth::Bearer {
                token: "s3cr3t-token".into()
            },
            HttpAuth::Basic {
                username: "ops".into(),
                password: "s3cr3t-pass".into()
            },
        );
        assert!(!shown.contains("s3cr3t"), "{shown}");
        for named in ["x-api-key", "ops", "Bearer", "<redacted>"] {
            assert!(shown.contains(named), "{named} missing: {shown}");
        }
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
        assert!(decode_capped(Encoding::Gzip, &gz, 20_000).is_ok());
        assert!(matches!(
            decode_capped(Encoding::Gzip, &gz, 5_000),
            Err(DecodeError::TooLarge)
        ));
        assert!(matches!(
            decode_capped(Encoding::Gzip, b"not gzip", 5_000),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn content_encoding_lists() {
        let h = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_ENCODING, HeaderValue::from_static(v));
            }
            encodings(&h)
        };
        use Encoding::{Deflate, Gzip};
        assert_eq!(h(&[]), Ok(vec![]));
        assert_eq!(h(&["identity"]), Ok(vec![]));
        assert_eq!(h(&["deflate, identity"]), Ok(vec![Deflate]));
        assert_eq!(h(&["gzip, identity"]), Ok(vec![Gzip]));
        assert_eq!(h(&["X-Gzip , ,Deflate"]), Ok(vec![Gzip, Deflate]));
        assert_eq!(h(&["gzip", "deflate"]), Ok(vec![Gzip, Deflate]));
        assert_eq!(h(&["gzip, br"]), Err("br".to_string()));
        assert_eq!(h(&["identity", "zstd"]), Err("zstd".to_string()));
    }

    #[test]
    fn deflate_zlib_and_raw() {
        use std::io::Write;
        let data = vec![b'd'; 10_000];
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let z = z.finish().unwrap();
        let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        r.write_all(&data).unwrap();
        let r = r.finish().unwrap();
        assert!(looks_like_zlib(&z));
        for body in [&z, &r] {
            let out = decode_capped(Encoding::Deflate, body, 20_000);
            assert!(matches!(out, Ok(ref d) if *d == data));
            assert!(matches!(
                decode_capped(Encoding::Deflate, body, 5_000),
                Err(DecodeError::TooLarge)
            ));
        }
        assert!(matches!(
            decode_capped(Encoding::Deflate, b"\x78\x9cnope", 5_000),
            Err(DecodeError::Corrupt(_))
        ));
    }

    /// An ingest that refuses every request with one error.
    struct Refuses(IngestError);

    #[async_trait::async_trait]
    impl Ingest for Refuses {
        async fn ingest(&self, _: Vec<Record>) -> Result<(), IngestError> {
            Err(self.0.clone())
        }
    }

    /// Posts one record to an input whose pipeline answers `err`; returns the status, the
    /// Retry-After header, the body, and the `kind`s counted as input errors.
    fn post_refused(err: IngestError) -> (StatusCode, Option<String>, String, Vec<String>) {
        let rec = crate::test_support::TestRecorder::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (status, retry, body) = metrics::with_local_recorder(&rec, || {
            rt.block_on(async {
                let s = Arc::new(Shared {
                    cfg: HttpInputConfig::new("web", "127.0.0.1:0"),
                    ingest: Arc::new(Refuses(err)),
                    budget: MemoryBudget::new(8 << 20),
                    records: metrics::counter!("firelane_input_records_total"),
                    bytes: metrics::counter!("firelane_input_bytes_total"),
                    dedupe: None,
                    sns: None,
                });
                let r = handle(s, None, HeaderMap::new(), Body::from(r#"{"a":1}"#)).await;
                let status = r.status();
                let retry = r
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (status, retry, String::from_utf8_lossy(&body).into_owned())
            })
        });
        let kinds = rec
            .by_label("firelane_input_errors_total", "kind")
            .into_iter()
            .map(|(kind, n)| {
                assert_eq!(n, 1, "{kind} counted once");
                kind
            })
            .collect();
        (status, retry, body, kinds)
    }

    #[test]
    fn ingest_errors_map_to_answers_and_are_counted_by_kind() {
        let disk_full = IngestError::DiskFull {
            output: "s3".into(),
        };
        let (status, retry, body, kinds) = post_refused(disk_full);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry.is_some(), "Retry-After on 503");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("disk full")),
            "{body}"
        );
        assert_eq!(kinds, ["disk_full"]);

        let too_large = IngestError::TooLarge {
            bytes: 2_000_000,
            limit: 1_048_576,
            output: "fh".into(),
        };
        let (status, retry, body, kinds) = post_refused(too_large);
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(retry.is_none());
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("fh")),
            "{body}"
        );
        assert_eq!(kinds, ["too_large"]);

        for (err, kind) in [
            (IngestError::Full, "full"),
            (IngestError::ShuttingDown, "shutting_down"),
            (
                IngestError::Buffer {
                    output: "o".into(),
                    reason: "EIO".into(),
                },
                "buffer_error",
            ),
        ] {
            let (status, retry, _, kinds) = post_refused(err);
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{kind}");
            assert!(retry.is_some(), "{kind}: Retry-After");
            assert_eq!(kinds, [kind]);
        }
    }

    #[tokio::test]
    async fn decoded_bodies_are_held_within_the_budget() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let json = format!("{{\"fill\":\"{}\"}}", " ".repeat(512 * 1024));
        e.write_all(json.as_bytes()).unwrap();
        let gz = e.finish().unwrap();
        let budget = MemoryBudget::new(256 * 1024);
        let s = Arc::new(Shared {
            cfg: HttpInputConfig::new("web", "127.0.0.1:0"),
            ingest: Arc::new(Refuses(IngestError::Full)),
            budget: budget.clone(),
            records: Counter::noop(),
            bytes: Counter::noop(),
            dedupe: None,
            sns: None,
        });
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        // 512 KiB decoded can never be held under a 256 KiB budget: 413, not 503.
        let r = handle(s.clone(), None, h.clone(), Body::from(gz.clone())).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("memory_limit"),
            "{body:?}"
        );
        assert_eq!(budget.used(), 0, "everything returned");

        // The same body under a budget that could hold it, but is held by others: 503.
        let budget = MemoryBudget::new(8 << 20);
        let held = budget.acquire(6 << 20).await.unwrap();
        let s = Arc::new(Shared {
            cfg: HttpInputConfig::new("web", "127.0.0.1:0"),
            ingest: Arc::new(Refuses(IngestError::Full)),
            budget: budget.clone(),
            records: Counter::noop(),
            bytes: Counter::noop(),
            dedupe: None,
            sns: None,
        });
        let r = handle(s, None, h, Body::from(gz)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key(header::RETRY_AFTER));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("memory budget"),
            "{body:?}"
        );
        drop(held);
        assert_eq!(budget.used(), 0, "everything returned");
    }

    #[test]
    fn parse_cost_counts_tokens_outside_strings() {
        let plain = br#"{"a":1,"b":[1,2]}"#;
        // `{` `:` `,` `:` `[` `,`
        assert_eq!(parse_cost(plain), plain.len() + 6 * PARSED_TOKEN_COST);
        let quoted = br#"{"a":"x,y:{[\"],"}"#;
        assert_eq!(parse_cost(quoted), quoted.len() + 2 * PARSED_TOKEN_COST);
        assert_eq!(parse_cost(b""), 0);
    }

    /// What parsing builds stays within the estimate the request reserved, for the
    /// shapes that cost most per byte (many tiny values).
    #[test]
    fn parse_cost_covers_the_parsed_records() {
        let bodies = [
            (0..2000)
                .map(|i| format!("{{\"i\":{i}}}\n"))
                .collect::<String>(),
            format!(
                "[{}]",
                (0..2000)
                    .map(|i| format!("{{\"a\":[1,2,3,{i}],\"b\":{{}}}}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ];
        for body in bodies {
            let records = parse_body(body.as_bytes(), BodyFormat::Auto, &tag(), false).unwrap();
            let parsed: usize = records.iter().map(Record::approx_size).sum();
            assert!(
                parsed <= parse_cost(body.as_bytes()),
                "{parsed} for {body:.40}"
            );
        }
    }

    #[test]
    fn hold_refuses_for_good_only_what_can_never_fit() {
        let budget = MemoryBudget::new(64 * 1024);
        let mut r = Reservation::empty();
        assert_eq!(hold(&budget, &mut r, 10_000), Ok(()));
        assert_eq!(r.bytes(), 10 * 1024, "whole KiB");
        assert_eq!(
            hold(&budget, &mut r, 49 * 1024),
            Err(Refusal::Never {
                need: 49 * 1024,
                limit: 48 * 1024
            })
        );
        let other = budget.try_acquire(40 * 1024).expect("free");
        assert_eq!(hold(&budget, &mut r, 20 * 1024), Err(Refusal::NotNow));
        drop(other);
        assert_eq!(hold(&budget, &mut r, 48 * 1024), Ok(()));
        drop(r);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn top_level_scalars_are_refused_as_they_arrive() {
        let e = parse_body(b"{\"a\":1} 1 2 3", BodyFormat::Auto, &tag(), true).unwrap_err();
        assert!(e.contains("document 2"), "{e}");
        let e = parse_body(b"[{\"a\":1}] {\"b\":2}", BodyFormat::Auto, &tag(), true).unwrap_err();
        assert!(e.contains("document 1"), "{e}");
    }
}
