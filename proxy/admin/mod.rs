//! The admin API, on its own listener: health, status, metrics, reload.

mod auth;
pub mod client;
mod metrics;
mod rollouts;
mod shadow;
mod status;
mod traffic;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::reload::{ReloadHandle, ReloadOutcome};
use crate::server::shutdown::{Stop, Tracker};
use crate::shared::Shared;

pub struct AdminCtx {
    pub shared: Arc<Shared>,
    pub reload: ReloadHandle,
    pub tracker: Tracker,
    pub started: Instant,
    pub rollouts: crate::rollout::RolloutHandle,
}

type AdminResponse = Response<Full<Bytes>>;

/// Serves the admin API until `stop` fires.
pub async fn serve(listener: TcpListener, ctx: Arc<AdminCtx>, mut stop: Stop) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            () = stop.wait() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let ctx = Arc::clone(&ctx);
        let builder = Arc::clone(&builder);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(route(&ctx, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.wait() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn route(ctx: &AdminCtx, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path().trim_end_matches('/');
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
        (&Method::GET, "/status") => json_response(StatusCode::OK, &status::render(ctx)),
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
