//! Raw bytes on a TCP socket: requests no client library would send as written.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on a connection until the server closed it.
#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
}

impl RawReply {
    /// The status code of the first response, 0 if none came.
    pub fn status(&self) -> u16 {
        let text = String::from_utf8_lossy(&self.bytes);
        text.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `request`, then reads until the server closes the connection (panics after 20 s:
/// a server that keeps the connection open after refusing a request fails the test).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may close before it has read everything we send: that is fine.
    let _ = s.write_all(request).await;
    read_to_close(&mut s).await
}

/// Reads until EOF (or a reset, which also ends the connection).
pub async fn read_to_close(s: &mut TcpStream) -> RawReply {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection stayed open; got {:?}",
        String::from_utf8_lossy(&bytes)
    );
    RawReply { bytes }
}

/// Reads one response head plus a body of `Content-Length` bytes (the connection stays open).
pub async fn read_response(s: &mut TcpStream) -> RawReply {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before a whole response");
            bytes.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&bytes).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if bytes.len() >= end + 4 + len {
                    return;
                }
            }
        }
    })
    .await
    .expect("no whole response within 20 s");
    RawReply { bytes }
}
