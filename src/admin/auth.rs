//! `[admin] auth`: the admin port asks for the same credentials as the HTTP input
//! (`api_key`, `bearer`, `basic`; see `input::http::config::read_auth`).
//!
//! Open whatever `auth` says: `/health` and `/ready` (and Fluent Bit's `/api/v1/health`),
//! which ECS container health checks, load balancers and `firelane healthcheck` call
//! without credentials, and which tell nothing beyond output names and their state.
//! Everything else (`/metrics`, `/api/ecs/state`, the status page `/`, Fluent Bit's other
//! endpoints) answers 401 without them; with `basic`, a browser asks for them
//! (`WWW-Authenticate`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::input::http::HttpAuth;

/// Paths answered without credentials (health checks; `/api/v1/uptime` is the FireLens
/// examples' recommended one).
pub(crate) const OPEN_PATHS: [&str; 4] = ["/health", "/ready", "/api/v1/health", "/api/v1/uptime"];

/// Middleware: passes requests with valid credentials (or to an open path), answers 401
/// to the others and counts them in `firelane_admin_unauthorized_total`.
pub(crate) async fn require(
    State(auth): State<Arc<HttpAuth>>,
    req: Request,
    next: Next,
) -> Response {
    if matches!(*auth, HttpAuth::None)
        || OPEN_PATHS.contains(&req.uri().path())
        || crate::input::http::authorized(&auth, req.headers())
    {
        return next.run(req).await;
    }
    metrics::counter!("firelane_admin_unauthorized_total").increment(1);
    crate::warn_limited!(
        "admin_unauthorized",
        "admin: rejected a request for {} with missing or invalid credentials",
        req.uri().path()
    );
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "missing or invalid credentials ([admin] auth)\n",
    )
        .into_response();
    if let HttpAuth::Basic { .. } = *auth {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"firelane admin\""),
        );
    }
    r
}
