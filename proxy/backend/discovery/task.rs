//! One discovered upstream's lookups: ask, report to the reloader, wait, ask again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::board::Watch;
use super::resolve::{Lookups, Outcome};
use super::{Answer, Found, schedule};
use crate::config::model::{BackendAddr, Discover, Resolver};
use crate::config::validate::backend_addr;

pub(super) struct Job {
    pub upstream: Arc<str>,
    pub id: u64,
    pub discover: Discover,
    pub resolver: Resolver,
    pub watch: Arc<Watch>,
    pub tx: mpsc::Sender<Found>,
}

/// Runs until aborted (the upstream is gone or its spec changed) or the reloader is gone.
pub(super) async fn run(job: Job) {
    let Job {
        upstream,
        id,
        discover,
        resolver,
        watch,
        tx,
    } = job;
    let mut lookups: Option<Lookups> = None;
    let mut misses = 0u32;
    let mut last_miss = None;
    loop {
        // Built here rather than by the reloader: reading resolv.conf is I/O, and a resolver
        // that cannot be built is a failed lookup like any other (counted, retried).
        let outcome = match &lookups {
            Some(l) => l.lookup(&discover.name).await,
            None => match Lookups::new(&resolver) {
                Ok(l) => lookups.insert(l).lookup(&discover.name).await,
                Err(why) => Outcome::Failed(why),
            },
        };
        let (answer, next) = match &outcome {
            Outcome::Addrs { ips, ttl } => {
                if misses > 0 {
                    tracing::info!(%upstream, dns = %discover.dns, misses, "DNS lookups answer again");
                }
                misses = 0;
                last_miss = None;
                let addrs = ips
                    .iter()
                    .filter_map(|ip| addr(SocketAddr::new(*ip, discover.port)))
                    .collect();
                (
                    Answer::Addrs(addrs),
                    schedule::after_answer(discover.refresh, *ttl),
                )
            }
            Outcome::Empty | Outcome::Failed(_) => {
                misses = misses.saturating_add(1);
                let why = match &outcome {
                    Outcome::Failed(why) => why.as_str(),
                    _ => "the name has no A or AAAA records",
                };
                // The first miss of a streak is news, and so is a change of why; the rest are
                // counted in the metrics.
                let kind = std::mem::discriminant(&outcome);
                if misses == 1 || last_miss != Some(kind) {
                    tracing::warn!(%upstream, dns = %discover.dns, %why, "DNS lookup failed; the last good set of backends stays");
                } else {
                    tracing::debug!(%upstream, dns = %discover.dns, %why, misses, "DNS lookup failed again");
                }
                last_miss = Some(kind);
                (Answer::Kept, schedule::after_miss(discover.refresh, misses))
            }
        };
        watch.record(&outcome, next);
        let found = Found {
            upstream: Arc::clone(&upstream),
            id,
            answer,
        };
        if tx.send(found).await.is_err() {
            return;
        }
        tokio::time::sleep(next).await;
    }
}

fn addr(sa: SocketAddr) -> Option<BackendAddr> {
    backend_addr(&sa.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_backends_with_the_upstreams_port() {
        let v4 = addr(SocketAddr::new("10.0.0.7".parse().unwrap(), 8080)).unwrap();
        assert_eq!(v4.as_str(), "10.0.0.7:8080");
        let v6 = addr(SocketAddr::new("fd00::7".parse().unwrap(), 8080)).unwrap();
        assert_eq!(v6.as_str(), "[fd00::7]:8080");
    }
}
