//! An HTTP/2-only backend (h2c, prior knowledge) on 127.0.0.1:0 that refuses streams
//! unprocessed with `RST_STREAM(REFUSED_STREAM)` (RFC 9113 8.7), as a server over its stream
//! limit or draining does: the first `refuse` requests it gets (or every one, with
//! `u64::MAX`), whatever connection they come on; then 200 with body `h2 <path>\n`.
//!
//! Built on the `h2` crate directly: hyper's server has no way to refuse a stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    connections: AtomicU64,
    requests: AtomicU64,
    refused: AtomicU64,
    refuse: AtomicU64,
}

pub struct H2Refuser {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl H2Refuser {
    pub async fn start(refuse: u64) -> H2Refuser {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.refuse.store(refuse, Ordering::SeqCst);
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(Arc::clone(&st), stream));
            }
        });
        H2Refuser { addr, state, task }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far, refused or answered.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }
}

impl Drop for H2Refuser {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(st: Arc<State>, stream: tokio::net::TcpStream) {
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        st.requests.fetch_add(1, Ordering::SeqCst);
        let refuse = st
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            st.refused.fetch_add(1, Ordering::SeqCst);
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        let body = Bytes::from(format!("h2 {}\n", req.uri().path()));
        let head = Response::builder().status(StatusCode::OK).body(()).unwrap();
        if let Ok(mut send) = respond.send_response(head, false) {
            let _ = send.send_data(body, true);
        }
    }
}
