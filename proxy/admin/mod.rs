//! The admin API, on its own listener: health, status, metrics, reload, rollouts; and the ops
//! listener, which serves only the probes and the metrics (for kubelets and Prometheus, so the
//! admin API can stay on loopback).
//!
//! Both are hardened like a public listener: HTTP/1.1 only, a header read timeout (for the
//! first request head and each next one on a kept-alive connection), a connection cap (over it,
//! a connection is accepted and closed at once), and accept failures backed off and logged
//! sparingly ([`crate::server::accept`]). Their limits and counters go by listener `admin` and
//! `ops` in `switchyard_limit_rejections_total` and `switchyard_accept_errors_total`.

mod auth;
pub mod client;
mod metrics;
mod rollouts;
mod shadow;
mod status;
mod traffic;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::config::model::ControlLimits;
use crate::reload::{ReloadHandle, ReloadOutcome};
use crate::server::accept::Acceptor;
use crate::server::limits::{Limit, LimitCounters, OpenConnections, OpenSlot};
use crate::server::shutdown::{Stop, Tracker};
use crate::shared::Shared;

pub struct AdminCtx {
    pub shared: Arc<Shared>,
    pub reload: ReloadHandle,
    pub tracker: Tracker,
    pub started: Instant,
    pub rollouts: crate::rollout::RolloutHandle,
    /// With `cluster:`: the fleet, for `/status` and `/metrics`.
    pub fleet: Option<crate::fleet::FleetHandle>,
}

type AdminResponse = Response<Full<Bytes>>;

/// Which API a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything: probes, status, metrics, reload, rollouts.
    Admin,
    /// `GET /livez`, `/readyz` and `/metrics`, nothing else.
    Ops,
}

impl Surface {
    /// Its `listener` label.
    pub fn name(self) -> &'static str {
        match self {
            Surface::Admin => "admin",
            Surface::Ops => "ops",
        }
    }

    /// Its limits in `config` (read per connection, so a reload changes them).
    fn limits(self, config: &Config) -> ControlLimits {
        match self {
            Surface::Admin => config.admin.limits,
            Surface::Ops => config.ops.as_ref().map(|o| o.limits).unwrap_or_default(),
        }
    }
}

/// Serves `surface` on `listener` until `stop` fires.
pub async fn serve(listener: TcpListener, ctx: Arc<AdminCtx>, surface: Surface, mut stop: Stop) {
    let counters = ctx.shared.limit_stats.counters(surface.name());
    let mut acceptor = Acceptor::new(surface.name(), Arc::clone(&counters.accept));
    let open = Arc::new(OpenConnections::default());
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.wait() => return,
            a = acceptor.next(&listener) => a,
        };
        let limits = surface.limits(&ctx.shared.snapshot().config);
        // Over the cap: accepted (so the client is not left in the backlog) and closed.
        let Some(slot) = open.try_open(limits.max_connections) else {
            counters.hit(Limit::MaxConnections);
            tracing::debug!(%peer, listener = surface.name(), "connection limit reached; closing");
            continue;
        };
        let conn = Connection {
            ctx: Arc::clone(&ctx),
            surface,
            limits,
            counters: Arc::clone(&counters),
            _slot: slot,
        };
        tokio::spawn(conn.serve(stream, peer, stop.clone()));
    }
}

/// One accepted admin or ops connection.
struct Connection {
    ctx: Arc<AdminCtx>,
    surface: Surface,
    limits: ControlLimits,
    counters: Arc<LimitCounters>,
    /// Counted against the cap until the connection ends.
    _slot: OpenSlot,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr, mut stop: Stop) {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // hyper restarts it for each request head, so it also bounds an idle keep-alive.
            .header_read_timeout(self.limits.header_read_timeout)
            .keep_alive(true);
        let (ctx, surface) = (Arc::clone(&self.ctx), self.surface);
        let service = service_fn(move |req| {
            let ctx = Arc::clone(&ctx);
            async move { Ok::<_, Infallible>(route(&ctx, surface, req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = stop.wait() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                self.counters.hit(Limit::HeaderReadTimeout);
            } else if e.is_parse_too_large() {
                self.counters.hit(Limit::RequestHeaders);
            } else if e.is_parse() {
                self.counters.hit(Limit::MalformedRequest);
            }
            tracing::debug!(%peer, listener = surface.name(), error = %e, "connection ended with an error");
        }
    }
}

async fn route(ctx: &AdminCtx, surface: Surface, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path().trim_end_matches('/');
    if surface == Surface::Ops && !matches!(path, "/livez" | "/readyz" | "/metrics") {
        // Nothing that changes state or shows more than the metrics do; not even the list of
        // what the admin API has.
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no ops endpoint {path}"),
                     "endpoints": ["GET /livez", "GET /readyz", "GET /metrics"] }),
        );
    }
    // First, so that every endpoint (those added later too) is covered.
    if let Err(denied) = auth::check(
        &ctx.shared.snapshot().config.admin,
        req.method(),
        path,
        req.headers(),
    ) {
        return unauthorized(denied);
    }
    match (req.method(), path) {
        (&Method::GET, "/livez") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if ctx.shared.is_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        (&Method::GET, "/readyz") if !ctx.shared.discovery.ready() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first DNS answer of a discovered upstream\n",
        ),
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/status") => json_response(StatusCode::OK, &status::render(ctx).await),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics::render(ctx))));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::stats::prometheus::CONTENT_TYPE),
            );
            resp
        }
        (&Method::POST, "/reload") => reload(ctx).await,
        (_, p) if p == "/rollouts" || p.starts_with("/rollouts/") => {
            rollouts::route(ctx, req.method(), p).await
        }
        (&Method::GET, p) if p.starts_with("/shadow/") => {
            let (status, body) = shadow::render(&ctx.shared.snapshot(), &p["/shadow/".len()..]);
            json_response(status, &body)
        }
        (_, "/livez" | "/readyz" | "/status" | "/metrics") => method_not_allowed("GET"),
        (_, "/reload") => method_not_allowed("POST"),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no admin endpoint {path}"),
                     "endpoints": ["GET /livez", "GET /readyz", "GET /status", "GET /metrics", "GET /shadow/{route}", "POST /reload", "GET /rollouts", "GET /rollouts/{route}", "POST /rollouts/{route}/{promote|pause|resume|abort}"] }),
        ),
    }
}

async fn reload(ctx: &AdminCtx) -> AdminResponse {
    match ctx.reload.reload().await {
        Ok(ReloadOutcome::Applied { generation }) => json_response(
            StatusCode::OK,
            &json!({ "result": "applied", "generation": generation }),
        ),
        Ok(ReloadOutcome::Unchanged { generation }) => json_response(
            StatusCode::OK,
            &json!({ "result": "unchanged", "generation": generation }),
        ),
        Err(errors) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "result": "rejected",
                "generation": ctx.shared.snapshot().generation,
                "errors": errors.0.iter().map(|e| json!({ "path": e.path, "message": e.message })).collect::<Vec<_>>(),
            }),
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn unauthorized(denied: auth::Denied) -> AdminResponse {
    let mut resp = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "error": "this admin call needs `Authorization: Bearer <token>` with the token of admin.token_file" }),
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(denied.challenge()),
    );
    resp
}

fn method_not_allowed(allow: &'static str) -> AdminResponse {
    let mut resp = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": format!("use {allow}") }),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}
