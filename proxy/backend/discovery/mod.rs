//! DNS discovery: an upstream written `discover: { dns: NAME:PORT }` has as its backends the
//! addresses NAME resolves to (every A and AAAA record), each a backend of its own with its own
//! breaker, histograms, health checks and connection pool, followed as pods come and go.
//!
//! Who does what:
//! - One task per discovered upstream ([`task`]) looks its name up, off the request path, with
//!   a resolver of its own ([`resolve`]), on a schedule ([`schedule`]): the sooner of `refresh`
//!   and the records' TTL, never more often than once a second.
//! - Every outcome goes to the reloader, the one writer of the snapshot. It keeps each
//!   upstream's set in force ([`Discovery::sets`]); when a set changes it reconciles the
//!   registry (state is kept by upstream and address, so a pod that stays keeps its breaker,
//!   statistics and warm connections, as across a reload) and publishes a snapshot of the same
//!   generation with the same run-time weights, so a rollout in progress goes on untouched.
//! - The request path reads the snapshot's backend list exactly as for static backends:
//!   discovery adds no work per request.
//! - [`board`] is what `/status`, `/metrics` and `/readyz` see.
//!
//! A lookup that fails or answers with no addresses keeps the last good set (logged, counted).
//! Until its first good set an upstream has no backends: the route sends its share to the
//! route's other upstreams, and a request nothing can take gets `503` `no-backend`. A backend
//! dropped from the set gets no new requests; requests in flight to it finish (they hold it).

pub mod board;
pub(crate) mod resolve;
pub(crate) mod schedule;
mod task;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use self::board::{Board, Watch};
use super::BackendState;
use crate::config::Config;
use crate::config::model::{BackendAddr, Discover, Resolver};

/// A lookup's outcome, on its way from a discovery task to the reloader.
#[derive(Debug)]
pub struct Found {
    upstream: Arc<str>,
    /// Which task: a report of one since replaced (the spec changed) is ignored.
    id: u64,
    answer: Answer,
}

#[derive(Debug)]
enum Answer {
    /// A good set: at least one address, sorted.
    Addrs(Vec<BackendAddr>),
    /// The lookup failed or found nothing: the set in force stays.
    Kept,
}

/// One upstream's discovered set in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub addrs: Vec<BackendAddr>,
    /// Addresses new in this set wait for their first passing health check before they take
    /// traffic. False for an upstream's first set: at start its pods are in rotation at once,
    /// as static backends are, and checks take out those that fail.
    pub gated: bool,
}

struct Task {
    discover: Discover,
    id: u64,
    /// It has sent its first outcome.
    reported: bool,
    watch: Arc<Watch>,
    handle: JoinHandle<()>,
}

/// The discovery tasks and the sets they found, owned by the reloader.
pub struct Discovery {
    /// The resolver the running tasks were started with.
    resolver: Resolver,
    tasks: HashMap<Arc<str>, Task>,
    sets: HashMap<Arc<str>, Set>,
    next_id: u64,
    tx: mpsc::Sender<Found>,
    rx: mpsc::Receiver<Found>,
    board: Arc<Board>,
}

impl Discovery {
    pub fn new(board: Arc<Board>) -> Discovery {
        // An outcome per lookup, lookups at least a second apart: the queue stays short.
        let (tx, rx) = mpsc::channel(64);
        Discovery {
            resolver: Resolver::System,
            tasks: HashMap::new(),
            sets: HashMap::new(),
            next_id: 0,
            tx,
            rx,
            board,
        }
    }

    /// Starts, restarts and stops tasks to match `config`. A set whose upstream still discovers
    /// stays in force (under a changed name too, until the new name's first good answer); the
    /// sets of upstreams that no longer discover are dropped. Must run inside a tokio runtime.
    pub fn reconcile(&mut self, config: &Config) {
        let resolver_changed = config.resolver != self.resolver;
        self.resolver = config.resolver.clone();
        let mut next = HashMap::new();
        for up in &config.upstreams {
            let Some(discover) = &up.discover else {
                continue;
            };
            let task = match self.tasks.remove(&up.name) {
                Some(t) if t.discover == *discover && !resolver_changed => t,
                previous => {
                    if let Some(t) = previous {
                        t.handle.abort();
                    }
                    self.start(&up.name, discover)
                }
            };
            next.insert(Arc::clone(&up.name), task);
        }
        for (_, t) in self.tasks.drain() {
            t.handle.abort();
        }
        self.tasks = next;
        self.sets.retain(|name, _| self.tasks.contains_key(name));
        let watches: BTreeMap<Arc<str>, Arc<Watch>> = self
            .tasks
            .iter()
            .map(|(name, t)| {
                t.watch
                    .set_in_force(self.sets.get(name).map_or(0, |s| s.addrs.len()));
                (Arc::clone(name), Arc::clone(&t.watch))
            })
            .collect();
        self.board.set(watches);
    }

    fn start(&mut self, upstream: &Arc<str>, discover: &Discover) -> Task {
        self.next_id += 1;
        let watch = Arc::new(Watch::new(&discover.dns, discover.refresh));
        let job = task::Job {
            upstream: Arc::clone(upstream),
            id: self.next_id,
            discover: discover.clone(),
            resolver: self.resolver.clone(),
            watch: Arc::clone(&watch),
            tx: self.tx.clone(),
        };
        Task {
            discover: discover.clone(),
            id: self.next_id,
            reported: false,
            watch,
            handle: tokio::spawn(task::run(job)),
        }
    }

    /// The next outcome of any task. Never ends while the discovery lives (it holds a sender).
    pub async fn next(&mut self) -> Option<Found> {
        self.rx.recv().await
    }

    /// Takes an outcome in; true when it changed a set in force (the caller then rebuilds the
    /// backends and publishes them).
    pub fn take(&mut self, found: Found) -> bool {
        let Some(task) = self
            .tasks
            .get_mut(&found.upstream)
            .filter(|t| t.id == found.id)
        else {
            return false;
        };
        task.reported = true;
        self.board.check_ready();
        let Answer::Addrs(addrs) = found.answer else {
            return false;
        };
        let previous = self.sets.get(&found.upstream);
        if previous.is_some_and(|p| p.addrs == addrs) {
            return false;
        }
        let (added, removed) = diff(previous.map_or(&[][..], |p| &p.addrs), &addrs);
        tracing::info!(
            upstream = %found.upstream,
            dns = %task.discover.dns,
            backends = addrs.len(),
            added = %list(&added),
            removed = %list(&removed),
            "discovered backends changed"
        );
        task.watch.set_in_force(addrs.len());
        let gated = previous.is_some_and(|p| !p.addrs.is_empty());
        self.sets.insert(found.upstream, Set { addrs, gated });
        true
    }

    /// The set in force of each discovered upstream that has had a good answer.
    pub fn sets(&self) -> &HashMap<Arc<str>, Set> {
        &self.sets
    }

    /// Every task has reported its first outcome.
    pub fn all_reported(&self) -> bool {
        self.tasks.values().all(|t| t.reported)
    }

    /// Backends the registry just dropped: those of discovered upstreams with requests still
    /// in flight are shown as draining.
    pub fn removed(&self, removed: Vec<Arc<BackendState>>) {
        for b in removed {
            if let Some(t) = self.tasks.get(&b.upstream) {
                t.watch.draining([b]);
            }
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.handle.abort();
        }
    }
}

/// What `next` adds to and drops from `prev` (both sorted).
fn diff<'a>(prev: &'a [BackendAddr], next: &'a [BackendAddr]) -> (Vec<&'a str>, Vec<&'a str>) {
    let added = next
        .iter()
        .filter(|a| !prev.contains(a))
        .map(|a| a.as_str())
        .collect();
    let removed = prev
        .iter()
        .filter(|a| !next.contains(a))
        .map(|a| a.as_str())
        .collect();
    (added, removed)
}

fn list(addrs: &[&str]) -> String {
    if addrs.is_empty() {
        "-".to_owned()
    } else {
        addrs.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use crate::config::validate::backend_addr;

    fn config(discover: bool) -> Config {
        let backends = if discover {
            "discover: { dns: 'a.test:80' }"
        } else {
            "backends: ['127.0.0.1:1']"
        };
        parse_str(&format!(
            "listeners: [{{bind: '127.0.0.1:0'}}]\nresolver: '127.0.0.1:1'\n\
             upstreams: {{ a: {{ {backends} }} }}\n\
             routes: [{{ name: r, split: [{{upstream: a, weight: 1}}] }}]\n"
        ))
        .unwrap()
    }

    fn found(id: u64, addrs: &[&str]) -> Found {
        let answer = if addrs.is_empty() {
            Answer::Kept
        } else {
            Answer::Addrs(addrs.iter().map(|a| backend_addr(a).unwrap()).collect())
        };
        Found {
            upstream: "a".into(),
            id,
            answer,
        }
    }

    #[tokio::test]
    async fn sets_change_on_new_answers_only_and_later_pods_are_gated() {
        let mut d = Discovery::new(Arc::default());
        d.reconcile(&config(true));
        let id = d.tasks["a"].id;
        assert!(!d.all_reported());
        assert!(!d.take(found(id + 1, &["10.0.0.1:80"])), "another task's");
        assert!(!d.take(found(id, &[])), "a miss changes nothing");
        assert!(d.all_reported());
        assert!(d.sets().is_empty());

        assert!(d.take(found(id, &["10.0.0.1:80", "10.0.0.2:80"])));
        assert!(!d.sets()["a"].gated, "the first set is not gated");
        assert!(!d.take(found(id, &["10.0.0.1:80", "10.0.0.2:80"])));
        assert!(d.take(found(id, &["10.0.0.2:80", "10.0.0.3:80"])));
        assert!(d.sets()["a"].gated);
        assert!(!d.take(found(id, &[])), "a miss keeps the set");
        assert_eq!(d.sets()["a"].addrs.len(), 2);

        // Same spec: same task, same set. No longer discovered: both gone.
        d.reconcile(&config(true));
        assert_eq!(d.tasks["a"].id, id);
        assert_eq!(d.sets().len(), 1);
        d.reconcile(&config(false));
        assert!(d.tasks.is_empty() && d.sets().is_empty());
    }
}
