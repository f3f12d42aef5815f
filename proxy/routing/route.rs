//! Which route a request takes: a table compiled once per snapshot, then a pure lookup.
//!
//! Precedence: an exact host beats a `*.suffix` host (longer suffix first), which beats a route
//! with no host; within those, the longest path prefix wins, then the route with more header
//! matchers; among equals the first declared route wins. A host whose routes all miss falls
//! through to the wildcard and host-less routes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;

use crate::config::model::{HostMatch, Route, RouteMatch};

#[derive(Debug, Default)]
pub struct Router {
    matchers: Vec<RouteMatch>,
    exact: HashMap<String, Vec<usize>>,
    /// Longest suffix first.
    suffix: Vec<(String, Vec<usize>)>,
    any: Vec<usize>,
}

impl Router {
    pub fn new(routes: &[Arc<Route>]) -> Router {
        let mut r = Router {
            matchers: routes.iter().map(|r| r.matcher.clone()).collect(),
            ..Router::default()
        };
        for (i, route) in routes.iter().enumerate() {
            match &route.matcher.host {
                HostMatch::Exact(h) => r.exact.entry(h.clone()).or_default().push(i),
                HostMatch::Suffix(s) => match r.suffix.iter_mut().find(|(x, _)| x == s) {
                    Some((_, list)) => list.push(i),
                    None => r.suffix.push((s.clone(), vec![i])),
                },
                HostMatch::Any => r.any.push(i),
            }
        }
        r.suffix.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let by_specificity = |list: &mut Vec<usize>, m: &[RouteMatch]| {
            // A stable sort keeps declaration order among equals.
            list.sort_by_key(|&i| std::cmp::Reverse((m[i].path_prefix.len(), m[i].headers.len())));
        };
        for list in r.exact.values_mut() {
            by_specificity(list, &r.matchers);
        }
        for (_, list) in &mut r.suffix {
            by_specificity(list, &r.matchers);
        }
        by_specificity(&mut r.any, &r.matchers);
        r
    }

    /// The index of the route this request takes, if any.
    pub fn find(&self, host: Option<&str>, path: &str, headers: &HeaderMap) -> Option<usize> {
        let host = host.map(normalize_host);
        let first = |list: &[usize]| {
            list.iter()
                .copied()
                .find(|&i| matches_rest(&self.matchers[i], path, headers))
        };
        if let Some(host) = host.as_deref() {
            if let Some(i) = self.exact.get(host).and_then(|l| first(l)) {
                return Some(i);
            }
            for (suffix, list) in &self.suffix {
                if host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && let Some(i) = first(list)
                {
                    return Some(i);
                }
            }
        }
        first(&self.any)
    }
}

fn matches_rest(m: &RouteMatch, path: &str, headers: &HeaderMap) -> bool {
    path.starts_with(m.path_prefix.as_str())
        && m.headers
            .iter()
            .all(|(name, want)| headers.get_all(name).iter().any(|v| v == want))
}

/// Lowercase, without port or trailing dot; borrowed when already in that form.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        // An IPv6 literal: the port, if any, follows the closing bracket.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn router(routes: &str) -> (Router, Vec<String>) {
        let c = parse_str(&format!(
            "listeners: [{{bind: '127.0.0.1:0'}}]\nupstreams: {{ u: {{ backends: ['h:1'] }} }}\nroutes:\n{routes}"
        ))
        .unwrap();
        let names = c.routes.iter().map(|r| r.name.to_string()).collect();
        (Router::new(&c.routes), names)
    }

    fn find(
        r: &(Router, Vec<String>),
        host: &str,
        path: &str,
        hdrs: &[(&'static str, &'static str)],
    ) -> Option<String> {
        let mut h = HeaderMap::new();
        for (k, v) in hdrs {
            h.append(*k, v.parse().unwrap());
        }
        r.0.find(Some(host), path, &h).map(|i| r.1[i].clone())
    }

    const SPLIT: &str = "split: [{upstream: u, weight: 1}]";

    #[test]
    fn longest_prefix_wins_and_first_declared_breaks_ties() {
        let r = router(&format!(
            "  - {{ name: root, match: {{ path_prefix: / }}, {SPLIT} }}\n\
             \x20 - {{ name: api, match: {{ path_prefix: /api }}, {SPLIT} }}\n\
             \x20 - {{ name: api-v2, match: {{ path_prefix: /api/v2 }}, {SPLIT} }}\n\
             \x20 - {{ name: api-again, match: {{ path_prefix: /api }}, {SPLIT} }}\n"
        ));
        assert_eq!(
            find(&r, "x", "/api/v2/items", &[]).as_deref(),
            Some("api-v2")
        );
        assert_eq!(find(&r, "x", "/api/v1", &[]).as_deref(), Some("api"));
        assert_eq!(find(&r, "x", "/other", &[]).as_deref(), Some("root"));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_and_falls_through() {
        let r = router(&format!(
            "  - {{ name: any, {SPLIT} }}\n\
             \x20 - {{ name: wild, match: {{ host: '*.example.com' }}, {SPLIT} }}\n\
             \x20 - {{ name: deep, match: {{ host: '*.eu.example.com' }}, {SPLIT} }}\n\
             \x20 - {{ name: shop, match: {{ host: shop.example.com, path_prefix: /shop }}, {SPLIT} }}\n"
        ));
        assert_eq!(
            find(&r, "shop.example.com", "/shop/1", &[]).as_deref(),
            Some("shop")
        );
        assert_eq!(
            find(&r, "SHOP.Example.com:8080", "/shop", &[]).as_deref(),
            Some("shop")
        );
        assert_eq!(
            find(&r, "shop.example.com", "/x", &[]).as_deref(),
            Some("wild")
        );
        assert_eq!(
            find(&r, "a.eu.example.com", "/", &[]).as_deref(),
            Some("deep")
        );
        assert_eq!(find(&r, "example.com", "/", &[]).as_deref(), Some("any"));
        assert_eq!(find(&r, "other.org", "/", &[]).as_deref(), Some("any"));
    }

    #[test]
    fn header_matchers_need_an_exact_value() {
        let r = router(&format!(
            "  - {{ name: plain, match: {{ path_prefix: /c }}, {SPLIT} }}\n\
             \x20 - {{ name: eu, match: {{ path_prefix: /c, headers: {{ x-region: eu-west-1 }} }}, {SPLIT} }}\n"
        ));
        assert_eq!(
            find(&r, "h", "/c", &[("x-region", "eu-west-1")]).as_deref(),
            Some("eu")
        );
        assert_eq!(
            find(&r, "h", "/c", &[("x-region", "EU-WEST-1")]).as_deref(),
            Some("plain")
        );
        assert_eq!(find(&r, "h", "/c", &[]).as_deref(), Some("plain"));
    }

    #[test]
    fn no_match_is_none() {
        let r = router(&format!(
            "  - {{ name: a, match: {{ path_prefix: /a }}, {SPLIT} }}\n"
        ));
        assert_eq!(find(&r, "h", "/b", &[]), None);
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:80"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert!(matches!(normalize_host("a.b"), Cow::Borrowed(_)));
    }
}
