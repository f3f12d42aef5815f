//! A minimal client for the admin API, used by the CLI (`switchyard status`, ...).

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// The token the CLI was given with `--token-file`; set once at start.
static TOKEN: OnceLock<String> = OnceLock::new();

/// Environment variable holding the admin token when `--token-file` is not given.
pub const TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

/// Reads the admin token from `path` for every later call (the file's text, trimmed).
pub fn use_token_file(path: &std::path::Path) -> Result<(), String> {
    let token = crate::config::secret::AdminToken::read(path)?;
    let _ = TOKEN.set(token.reveal().to_owned());
    Ok(())
}

/// `--token-file`'s token, else `SWITCHYARD_ADMIN_TOKEN`'s, else none.
fn token() -> Option<String> {
    TOKEN
        .get()
        .cloned()
        .or_else(|| std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_owned()))
        .filter(|t| !t.is_empty())
}

/// Sends one request to the admin API and returns (status, body).
pub async fn call(addr: SocketAddr, method: Method, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        format!("cannot reach the admin API at {addr}: {e} (is switchyard running? see --admin)")
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin API handshake failed: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    let req = match token() {
        Some(t) => req.header(http::header::AUTHORIZATION, format!("Bearer {t}")),
        None => req,
    };
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("admin API request failed: {e}"))?;
    let status = resp.status().as_u16();
    if status == 401 {
        return Err(format!(
            "the admin API at {addr} refused the call (401): give its token with --token-file FILE or {TOKEN_ENV}"
        ));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("admin API response failed: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
