//! Who may call the admin API. With `admin.token_file`, every call that changes something (any
//! method but GET and HEAD, so routes added later are covered without thinking about it) needs
//! `Authorization: Bearer <token>`; reads need it too with `admin.protect_reads`. The liveness
//! and readiness probes stay open: kubelets and load balancers do not send tokens.

use http::Method;
use http::header::{self, HeaderMap};

use crate::config::model::Admin;

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Wrong,
}

impl Denied {
    /// The `error` value of the RFC 6750 challenge.
    pub fn challenge(self) -> &'static str {
        match self {
            Denied::Missing => "Bearer realm=\"switchyard-admin\"",
            Denied::Wrong => "Bearer realm=\"switchyard-admin\", error=\"invalid_token\"",
        }
    }
}

/// Whether this call may go ahead under `admin`'s settings.
pub fn check(
    admin: &Admin,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Denied> {
    let Some(token) = &admin.token else {
        return Ok(());
    };
    let read = method == Method::GET || method == Method::HEAD;
    let probe = matches!(path, "/livez" | "/readyz");
    // Shadow mismatch records hold copies of clients' request headers (API keys among them):
    // with a token configured they are never open.
    let sensitive = path.starts_with("/shadow");
    if read && (probe || (!admin.protect_reads && !sensitive)) {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .ok_or(Denied::Missing)?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Denied::Wrong)
    }
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive, RFC 7235).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = v.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::AdminToken;

    fn admin(protect_reads: bool) -> Admin {
        let dir = std::env::temp_dir().join(format!("sy-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("t{protect_reads}"));
        std::fs::write(&p, "tok\n").unwrap();
        Admin {
            bind: "127.0.0.1:0".parse().unwrap(),
            token: Some(AdminToken::read(&p).unwrap()),
            protect_reads,
            limits: Default::default(),
        }
    }

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn writes_need_the_token_and_reads_only_when_protected() {
        let a = admin(false);
        let none = HeaderMap::new();
        assert_eq!(
            check(&a, &Method::POST, "/reload", &none),
            Err(Denied::Missing)
        );
        assert_eq!(
            check(&a, &Method::POST, "/reload", &with("Bearer nope")),
            Err(Denied::Wrong)
        );
        assert_eq!(
            check(&a, &Method::POST, "/reload", &with("bearer tok")),
            Ok(())
        );
        assert_eq!(
            check(&a, &Method::DELETE, "/anything", &with("Basic tok")),
            Err(Denied::Missing)
        );
        assert_eq!(check(&a, &Method::GET, "/status", &none), Ok(()));
        // Shadow mismatch records carry copies of request headers: closed whenever a token is set.
        assert_eq!(
            check(&a, &Method::GET, "/shadow/checkout", &none),
            Err(Denied::Missing)
        );
        assert_eq!(
            check(&a, &Method::GET, "/shadow/checkout", &with("Bearer tok")),
            Ok(())
        );

        let a = admin(true);
        assert_eq!(
            check(&a, &Method::GET, "/status", &none),
            Err(Denied::Missing)
        );
        assert_eq!(
            check(&a, &Method::GET, "/metrics", &with("Bearer tok")),
            Ok(())
        );
        assert_eq!(check(&a, &Method::GET, "/readyz", &none), Ok(()));
    }

    #[test]
    fn without_a_token_everything_is_open() {
        let a = Admin {
            bind: "127.0.0.1:0".parse().unwrap(),
            token: None,
            protect_reads: false,
            limits: Default::default(),
        };
        assert_eq!(
            check(&a, &Method::POST, "/reload", &HeaderMap::new()),
            Ok(())
        );
    }
}
