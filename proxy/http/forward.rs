//! The answering backend's response, handed to the client: hop-by-hop headers out, the body
//! streamed behind an [`Exchange`], or an upgraded connection tunnelled both ways.

use std::sync::Arc;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::attempt::Answered;
use super::classify::Class;
use super::exchange::{Exchange, ProxyBody, Upstream};
use super::headers;
use super::record::Record;
use super::shadow::PrimaryTap;
use crate::backend::pool::Conn;
use crate::routing::Snapshot;
use crate::server::conn::ConnInfo;

/// Gives the client the answering try's response. `route` is the request's route in `snap`.
pub(crate) fn respond(
    snap: Arc<Snapshot>,
    route: usize,
    mut record: Box<Record>,
    answered: Answered<Incoming, Conn>,
    client_upgrade: Option<OnUpgrade>,
    compare: Option<Box<PrimaryTap>>,
    conn: &ConnInfo,
) -> Response<ProxyBody> {
    let Answered {
        mut resp,
        conn: upstream_conn,
        at,
        ticket,
        in_flight,
        ttfb,
        grpc,
    } = answered;
    let status = resp.status().as_u16();
    record.status = status;
    let rt = &snap.routes[route];
    rt.targets[at.target()].counters[at.index()].record(status);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        // Counted now: what follows is a tunnel's bytes, not a response body.
        let now = Instant::now();
        let outcome = Class::Success.backend_outcome();
        if let Some(o) = outcome {
            rt.backend(at).state.record(o, ticket, Some(ttfb), now);
        }
        let duration = now.saturating_duration_since(record.started);
        rt.targets[at.target()]
            .stats
            .answered(outcome, Some(ttfb), duration, now);
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let token = conn.tracker.token();
        let slot = Arc::clone(&conn.slot);
        tokio::spawn(async move {
            let _drain = token;
            let _slot = slot;
            let _in_flight = in_flight;
            // Hold the connection's handle until the upgrade is through.
            let _upstream_conn = upstream_conn;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        headers::strip_hop_by_hop(resp.headers_mut(), true);
        return resp
            .map(|_| ProxyBody::full(bytes::Bytes::new(), Some(Exchange::settled(snap, record))));
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    let compare = compare.map(|mut c| {
        c.begin(status, resp.headers());
        c
    });
    let up = Upstream {
        at,
        conn: upstream_conn,
        in_flight,
        ticket,
        ttfb,
        compare,
        grpc,
    };
    let exchange = Exchange::upstream(snap, record, up);
    resp.map(|b| ProxyBody::upstream(b, exchange))
}
