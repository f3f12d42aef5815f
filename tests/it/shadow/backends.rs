//! Backends of our own: one answering from a script and recording bodies, one that never
//! answers.

use super::*;

/// One request as a [`Scripted`] backend received it.
#[derive(Debug, Clone)]
pub(super) struct Got {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

type Script = dyn Fn(&str) -> (u16, &'static str, String) + Send + Sync;

/// A backend answering each path as its script says (status, content type, body), recording
/// every request with its body.
pub(super) struct Scripted {
    pub(super) addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    pub(super) async fn start(
        script: impl Fn(&str) -> (u16, &'static str, String) + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let g = Arc::clone(&got);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (g, script) = (Arc::clone(&g), Arc::clone(&script));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (g, script) = (Arc::clone(&g), Arc::clone(&script));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let path = parts.uri.path().to_owned();
                            g.lock().unwrap().push(Got {
                                method: parts.method.to_string(),
                                path: path.clone(),
                                headers: parts.headers,
                                body,
                            });
                            let (status, ctype, text) = script(&path);
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", ctype.parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Scripted { addr, got, task }
    }

    pub(super) fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend that accepts connections, reads whatever comes and never answers.
pub(super) struct BlackHole {
    pub(super) addr: SocketAddr,
    /// Connections open right now.
    pub(super) open: Arc<AtomicI64>,
    /// Request heads received (`\r\n\r\n` seen), over all connections.
    pub(super) requests: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    pub(super) async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, requests) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicU64::new(0)));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (o, r, c) = (Arc::clone(&open), Arc::clone(&requests), Arc::clone(&conns));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                o.fetch_add(1, Ordering::SeqCst);
                let (o, r) = (Arc::clone(&o), Arc::clone(&r));
                let t = tokio::spawn(async move {
                    // Counted closed however this task ends (EOF, error, or aborted).
                    struct Closed(Arc<AtomicI64>);
                    impl Drop for Closed {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _closed = Closed(o);
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tail.extend_from_slice(&buf[..n]);
                        if tail.windows(4).any(|w| w == b"\r\n\r\n") {
                            r.fetch_add(1, Ordering::SeqCst);
                            tail.clear();
                        }
                    }
                });
                c.lock().unwrap().push(t.abort_handle());
            }
        });
        BlackHole {
            addr,
            open,
            requests,
            conns,
            task,
        }
    }

    /// Cuts every connection, as a crashed process would.
    pub(super) fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}
