//! What sends one try: the backend's connection pool, or (in unit tests) a stub that answers
//! as a test tells it to, so that retries, reroutes and timeouts run on a paused clock.

use http::{Request, Response};
use hyper::body::Incoming;

use crate::backend::Backend;
use crate::backend::pool::{Conn, Failed, Sent};
use crate::body::ReqBody;

pub(crate) trait Sender {
    type Body;
    /// The connection a response came on, kept until its body has been read.
    type Conn;

    /// Sends `req` to `backend` (on a new connection if `fresh`) and waits for the head.
    fn send(
        &self,
        backend: &Backend,
        req: Request<ReqBody>,
        fresh: bool,
    ) -> impl Future<Output = Result<(Response<Self::Body>, Self::Conn), Failed>> + Send;
}

/// The backends' own connection pools.
pub(crate) struct Pools;

impl Sender for Pools {
    type Body = Incoming;
    type Conn = Conn;

    async fn send(
        &self,
        backend: &Backend,
        req: Request<ReqBody>,
        fresh: bool,
    ) -> Result<(Response<Incoming>, Conn), Failed> {
        let Sent { resp, conn } = backend.pool.send(req, fresh).await?;
        Ok((resp, conn))
    }
}
