//! How the split pointed a request: worked out once, kept for its retries and reroutes.

use bytes::Bytes;
use http::HeaderMap;

use crate::config::model::StickyKey;
use crate::http::headers;
use crate::routing::RouteRuntime;

#[derive(Debug)]
pub(crate) struct Aim {
    pub(crate) target: usize,
    pub(crate) sticky: Option<Bytes>,
    pub(crate) seq: u64,
    /// Forced by the override header: never rerouted.
    pub(crate) forced: bool,
}

impl Aim {
    pub(crate) fn new(route: &RouteRuntime, headers: &HeaderMap) -> Aim {
        let spec = &route.spec;
        let forced = spec.override_header.as_ref().and_then(|name| {
            let wanted = headers.get(name)?.as_bytes();
            route
                .targets
                .iter()
                .position(|t| t.upstream.spec.name.as_bytes() == wanted)
        });
        let sticky = sticky_key(route, headers);
        let seq = route.next_seq();
        let target = forced.unwrap_or_else(|| match &sticky {
            Some(key) => route.split.pick_sticky(key),
            None => route.split.pick(seq),
        });
        Aim {
            target,
            sticky,
            seq,
            forced: forced.is_some(),
        }
    }
}

fn sticky_key(route: &RouteRuntime, headers: &HeaderMap) -> Option<Bytes> {
    let key = match route.spec.sticky.as_ref()? {
        StickyKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
        StickyKey::Cookie(name) => headers::cookie(headers, name),
    }?;
    (!key.is_empty()).then(|| Bytes::copy_from_slice(key))
}
