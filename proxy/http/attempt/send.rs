//! What sends one try: the backend's connection pool, or (in unit tests) a stub that answers
//! as a test tells it to, so that retries, reroutes and timeouts run on a paused clock.

use http::Request;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::backend::pool::{Conn, Failed, Sent};
use crate::body::ReqBody;

pub(crate) trait Sender {
    type Body;
    /// The connection a response came on, kept until its body has been read.
    type Conn;

    /// Sends `req` to `backend` (on a new connection if `fresh`) and waits for the head; `now`
    /// is when the try started.
    fn send<'a>(
        &'a self,
        backend: &'a Backend,
        req: Request<ReqBody>,
        fresh: bool,
        now: Instant,
    ) -> impl Future<Output = Result<Sent<Self::Body, Self::Conn>, Failed>> + Send + 'a;
}

/// The backends' own connection pools.
pub(crate) struct Pools;

impl Sender for Pools {
    type Body = Incoming;
    type Conn = Conn;

    fn send<'a>(
        &'a self,
        backend: &'a Backend,
        req: Request<ReqBody>,
        fresh: bool,
        now: Instant,
    ) -> impl Future<Output = Result<Sent, Failed>> + Send + 'a {
        backend.pool.send(req, fresh, now)
    }
}
