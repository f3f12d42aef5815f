//! A request head as HTTP/2 carries it, and back; and which HTTP/2 failures left a request
//! unprocessed. Pure functions.

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Version};

use crate::config::model::BackendAddr;

/// Rewrites a prepared request (origin-form, `Host`) for an HTTP/2 backend: `:scheme` and
/// `:authority` from the client's host (or the backend's address when it has none usable),
/// no `Host`, and `te: trailers` on gRPC requests (which gRPC servers require and the
/// hop-by-hop filter removed). Idempotent.
pub(crate) fn to_h2<B>(req: &mut Request<B>, scheme: Scheme, backend: &BackendAddr) {
    if req.version() == Version::HTTP_2 {
        return;
    }
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| backend.authority.clone());
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if let Ok(uri) = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
    if is_grpc(req.headers()) {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Undoes [`to_h2`] for a request that came back unsent and may go to an HTTP/1.1 backend.
pub(crate) fn to_h1<B>(req: &mut Request<B>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    if let Some(a) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;
    req.headers_mut().remove(header::TE);
}

/// `content-type: application/grpc` (or `application/grpc+proto`, `application/grpc-web`...).
pub(crate) fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The backend refused the request before processing it: a GOAWAY that excluded its stream
/// (or arrived before it was opened), or `REFUSED_STREAM` (RFC 9113 8.7). Safe to send again,
/// whatever the method.
pub(crate) fn refused(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.is_remote())
                || (h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> BackendAddr {
        BackendAddr {
            authority: Authority::from_static("10.0.0.1:50051"),
        }
    }

    #[test]
    fn the_clients_host_becomes_the_authority_and_comes_back() {
        let mut req = Request::post("/pkg.Svc/Call?x=1")
            .header("host", "api.example.com")
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap();
        to_h2(&mut req, Scheme::HTTP, &addr());
        assert_eq!(req.uri(), "http://api.example.com/pkg.Svc/Call?x=1");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().get("host").is_none());
        assert_eq!(req.headers()["te"], "trailers");
        to_h2(&mut req, Scheme::HTTP, &addr());
        assert_eq!(
            req.uri(),
            "http://api.example.com/pkg.Svc/Call?x=1",
            "idempotent"
        );
        to_h1(&mut req);
        assert_eq!(req.uri(), "/pkg.Svc/Call?x=1");
        assert_eq!(req.headers()["host"], "api.example.com");
        assert_eq!(req.version(), Version::HTTP_11);
    }

    #[test]
    fn without_a_usable_host_the_backend_is_named() {
        let mut req = Request::get("/").body(()).unwrap();
        to_h2(&mut req, Scheme::HTTPS, &addr());
        assert_eq!(req.uri(), "https://10.0.0.1:50051/");
        assert!(req.headers().get("te").is_none(), "not gRPC");
    }
}
