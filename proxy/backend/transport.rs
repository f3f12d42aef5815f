//! Connections to backends: one keep-alive pool per backend, so that no lock is shared by
//! requests to different backends and a reload that keeps a backend keeps its warm connections.

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ReqBody;
use crate::config::model::Transport;

pub type HttpClient = Client<HttpConnector, ReqBody>;

/// Idle connections kept per backend; past this, finished connections are closed.
const MAX_IDLE_PER_BACKEND: usize = 256;

pub fn client(t: &Transport) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(t.connect_timeout));
    connector.set_reuse_address(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(t.idle_timeout)
        .pool_max_idle_per_host(MAX_IDLE_PER_BACKEND)
        // Keep the client's Host header; never invent one from the backend's address.
        .set_host(false)
        .build(connector)
}
