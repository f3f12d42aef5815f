//! `switchyard demo`: two built-in backends (blue and green) and a proxy splitting 90/10
//! between them, from a config file the user can edit while it runs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A request with this header fails (500) when the green backend answers it.
pub const DEMO_FAIL_HEADER: &str = "x-demo-fail";

/// The demo's canary rollout of green (appended to [`config_text`] by `switchyard demo
/// --rollout`): a step every 10 s once the tests show green not worse, or after 30 s anyway
/// (a demo gets too few requests for the tests to decide: `on_inconclusive: promote`); failing
/// requests are still caught by the abort rule. State in `state_dir`.
pub fn rollout_text(state_dir: &std::path::Path) -> String {
    format!(
        "    rollout:\n      strategy: canary\n      stable: blue\n      canary: green\n      steps: [10, 25, 50, 100]\n      step_interval: 10s\n      max_step_duration: 30s\n      on_inconclusive: promote\n      gates: {{ min_requests: 20, max_error_rate: 0.02 }}\nstate_dir: \"{}\"\n",
        state_dir.display()
    )
}

/// Starts a backend on `addr` that answers every request with its color.
pub async fn color_backend(color: &'static str, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let body = format!("{color} {} {}\n", req.method(), req.uri().path());
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    // Lets a demo user make the new version (green) fail and watch the rollback.
                    if color == "green" && req.headers().contains_key(DEMO_FAIL_HEADER) {
                        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    resp.headers_mut()
                        .insert("x-color", HeaderValue::from_static(color));
                    resp.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

/// The demo's config: a 90/10 split with sticky users and an override header.
pub fn config_text(
    listen: SocketAddr,
    admin: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
) -> String {
    format!(
        r#"# switchyard demo config. Edit and save: switchyard reloads it on the fly.
listeners:
  - name: public
    bind: "{listen}"
admin:
  bind: "{admin}"
upstreams:
  blue:
    backends: ["{blue}"]
  green:
    backends: ["{green}"]
routes:
  - name: demo
    match: {{ path_prefix: / }}
    split:
      - {{ upstream: blue, weight: 90 }}
      - {{ upstream: green, weight: 10 }}
    sticky: {{ header: x-user-id }}
    override_header: x-switchyard-upstream
"#
    )
}

/// Where the demo writes its config: a fresh directory under the system temp dir.
pub fn config_path() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join("switchyard.yaml"))
}
