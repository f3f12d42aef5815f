//! One client connection: requests in order (pipelined ones too), each sent on a backend
//! connection from the worker's idle pool, its response relayed back.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::buf::Buf;
use crate::framing::Framing;
use crate::head::{self, Reject, Request, Response};
use crate::pool;
use crate::relay::{self, Side};
use crate::timer::Timer;

/// Per connection and direction; also the largest head accepted (nginx's
/// large_client_header_buffers is 8 KiB per line; hyper's default buffer 400 KiB).
const BUF: usize = 16 * 1024;

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
    content-length: 0\r\nconnection: close\r\n\r\n";
const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub(crate) struct Config {
    pub(crate) upstream: SocketAddr,
    pub(crate) timers: crate::timer::Mode,
}

/// How a client connection ends.
enum Stop {
    Close,
    /// Nothing of a response was sent yet: answer this, then close.
    Reply(&'static [u8]),
}

/// How sending a request and reading the response head failed.
enum Fail {
    Client,
    /// `early`: the backend failed before any byte of a response, so a request without a
    /// body may go again on a fresh connection (a pooled one may have been closed while idle).
    Backend {
        early: bool,
    },
}

struct Conn {
    cfg: &'static Config,
    timer: Timer,
    client_ip: Vec<u8>,
    from_client: Buf,
    from_backend: Buf,
    request_head: Vec<u8>,
    response_head: Vec<u8>,
}

pub(crate) async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    cfg: &'static Config,
    timer: Timer,
) {
    let mut c = Conn {
        cfg,
        timer,
        client_ip: peer.ip().to_string().into_bytes(),
        from_client: Buf::new(BUF),
        from_backend: Buf::new(BUF),
        request_head: Vec::with_capacity(1024),
        response_head: Vec::with_capacity(1024),
    };
    loop {
        match c.exchange(&mut client).await {
            Ok(true) => {}
            Ok(false) | Err(Stop::Close) => return,
            Err(Stop::Reply(answer)) => {
                let _ = c.timer.timed(client.write_all(answer)).await;
                let _ = client.shutdown().await;
                return;
            }
        }
    }
}

impl Conn {
    /// One request and its response. `Ok(false)`: the client closed cleanly between requests
    /// or this exchange ended the connection.
    async fn exchange(&mut self, client: &mut TcpStream) -> Result<bool, Stop> {
        let Some(req) = self.read_request(client).await? else {
            return Ok(false);
        };
        self.from_client.consume(req.len);
        if req.expect_continue && self.from_client.is_empty() {
            self.timer
                .timed(client.write_all(CONTINUE))
                .await
                .map_err(|_| Stop::Close)?;
        }
        let mut body = req.body;
        let mut retried = false;
        let (mut backend, resp) = loop {
            let pooled = if retried { None } else { pool::take() };
            let reused = pooled.is_some();
            let mut backend = match pooled {
                Some(s) => s,
                None => self.connect().await.ok_or(Stop::Reply(BAD_GATEWAY))?,
            };
            match self.send(client, &mut backend, &req, &mut body).await {
                Ok(resp) => break (backend, resp),
                Err(Fail::Backend { early: true }) if reused && req.body == Framing::Empty => {
                    retried = true;
                }
                Err(Fail::Backend { .. }) => return Err(Stop::Reply(BAD_GATEWAY)),
                Err(Fail::Client) => return Err(Stop::Close),
            }
        };
        self.from_backend.consume(resp.len);
        let mut body = resp.body;
        relay::message(
            &mut backend,
            &mut self.from_backend,
            client,
            &self.response_head,
            &mut body,
            &self.timer,
        )
        .await
        // The head may be out already: all that is left is to close.
        .map_err(|_| Stop::Close)?;
        if resp.reusable && self.from_backend.is_empty() {
            pool::give(backend);
        } else {
            self.from_backend.clear();
        }
        Ok(!resp.close_client)
    }

    /// Reads until a whole request head is buffered. `Ok(None)`: the client closed between
    /// requests.
    async fn read_request(&mut self, client: &mut TcpStream) -> Result<Option<Request>, Stop> {
        loop {
            if !self.from_client.is_empty() {
                match head::request(
                    self.from_client.filled(),
                    &self.client_ip,
                    &mut self.request_head,
                ) {
                    Ok(Some(req)) => return Ok(Some(req)),
                    Ok(None) if self.from_client.is_full() => return Err(Stop::Reply(TOO_LARGE)),
                    Ok(None) => {}
                    Err(Reject::Bad) => return Err(Stop::Reply(BAD_REQUEST)),
                    Err(Reject::TooLarge) => return Err(Stop::Reply(TOO_LARGE)),
                }
            }
            let n = self
                .timer
                .timed(self.from_client.read_from(client))
                .await
                .map_err(|_| Stop::Close)?;
            if n == 0 {
                return match self.from_client.is_empty() {
                    true => Ok(None),
                    false => Err(Stop::Close),
                };
            }
        }
    }

    /// Sends the request (head and body) and reads the final response head, relaying any
    /// interim (1xx) responses to the client on the way.
    async fn send(
        &mut self,
        client: &mut TcpStream,
        backend: &mut TcpStream,
        req: &Request,
        body: &mut Framing,
    ) -> Result<Response, Fail> {
        self.from_backend.clear();
        relay::message(
            client,
            &mut self.from_client,
            backend,
            &self.request_head,
            body,
            &self.timer,
        )
        .await
        .map_err(|side| match side {
            Side::Src => Fail::Client,
            Side::Dst => Fail::Backend { early: true },
        })?;
        let mut answered = false;
        loop {
            if !self.from_backend.is_empty() {
                match head::response(self.from_backend.filled(), req, &mut self.response_head) {
                    Ok(Some(resp)) if resp.interim => {
                        self.timer
                            .timed(client.write_all(&self.response_head))
                            .await
                            .map_err(|_| Fail::Client)?;
                        self.from_backend.consume(resp.len);
                        continue;
                    }
                    Ok(Some(resp)) => return Ok(resp),
                    Ok(None) if !self.from_backend.is_full() => {}
                    Ok(None) | Err(_) => return Err(Fail::Backend { early: false }),
                }
            }
            let n = match self.timer.timed(self.from_backend.read_from(backend)).await {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(Fail::Backend { early: false });
                }
                Err(_) => 0,
            };
            if n == 0 {
                return Err(Fail::Backend { early: !answered });
            }
            answered = true;
        }
    }

    async fn connect(&self) -> Option<TcpStream> {
        let s = self
            .timer
            .timed(TcpStream::connect(self.cfg.upstream))
            .await
            .ok()?;
        s.set_nodelay(true).ok()?;
        Some(s)
    }
}
