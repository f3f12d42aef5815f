//! Every backend's state, keyed by (upstream, address), reconciled against each new config and
//! each new set of discovered addresses.
//!
//! Only the reloader owns the registry. A reload or a re-resolution keeps the state of every
//! backend that stays (breaker, statistics, warm connections), creates state for new ones, and
//! forgets removed ones; snapshots still serving in-flight requests hold their own `Arc`s, so
//! nothing is torn down under a request.

use std::collections::HashMap;
use std::sync::Arc;

use super::discovery::Set;
use super::pool::ConnPool;
use super::state::BackendState;
use crate::config::Config;
use crate::config::model::{BackendAddr, Transport};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub upstream: Arc<str>,
    pub addr: BackendAddr,
}

/// A backend as a snapshot sees it: its lasting state and its connection pool.
#[derive(Clone)]
pub struct Backend {
    pub(crate) state: Arc<BackendState>,
    pub(crate) pool: Arc<ConnPool>,
}

struct Entry {
    backend: Backend,
}

impl Entry {
    fn new(state: Arc<BackendState>, transport: &Transport, workers: usize) -> Entry {
        let pool = ConnPool::new(state.addr.clone(), transport.clone(), workers);
        Entry {
            backend: Backend {
                state,
                pool: Arc::new(pool),
            },
        }
    }
}

pub struct Registry {
    entries: HashMap<BackendKey, Entry>,
    /// Worker threads: connection pools keep one idle stack per worker.
    workers: usize,
}

/// What a reconcile changed, for the parts that start or stop per-backend work.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<BackendKey>,
    /// Dropped backends; requests still in flight to them hold them until they finish.
    pub removed: Vec<Arc<BackendState>>,
}

impl Registry {
    pub fn new(workers: usize) -> Self {
        Registry {
            entries: HashMap::new(),
            workers,
        }
    }

    /// Brings the registry in line with `config` and, for upstreams that discover their
    /// backends, with `discovered` (none yet: no backends); returns each upstream's backends in
    /// config (or address) order.
    pub fn reconcile(
        &mut self,
        config: &Config,
        discovered: &HashMap<Arc<str>, Set>,
    ) -> (HashMap<Arc<str>, Vec<Backend>>, Changes) {
        let mut changes = Changes::default();
        let mut pools = HashMap::new();
        let mut next = HashMap::new();
        for up in &config.upstreams {
            let set = discovered.get(&up.name).filter(|_| up.discover.is_some());
            let addrs = match (&up.discover, set) {
                (None, _) => &up.backends[..],
                (Some(_), Some(set)) => &set.addrs[..],
                (Some(_), None) => &[],
            };
            // A pod found after the first set takes traffic once a check has passed.
            let gated = up.health_check.is_some() && set.is_some_and(|s| s.gated);
            let mut backends = Vec::with_capacity(addrs.len());
            for addr in addrs {
                let key = BackendKey {
                    upstream: Arc::clone(&up.name),
                    addr: addr.clone(),
                };
                let entry = match self.entries.remove(&key) {
                    Some(e) if *e.backend.pool.transport() == up.transport => {
                        e.backend.state.reconfigure_breaker(&up.breaker);
                        e
                    }
                    // Same backend, new connection settings: fresh pool, same state.
                    Some(e) => {
                        e.backend.state.reconfigure_breaker(&up.breaker);
                        Entry::new(e.backend.state, &up.transport, self.workers)
                    }
                    None => {
                        changes.added.push(key.clone());
                        let state = BackendState::new(
                            Arc::clone(&up.name),
                            addr.clone(),
                            up.breaker.clone(),
                            self.workers,
                        );
                        if gated {
                            state.set_pending();
                        }
                        Entry::new(Arc::new(state), &up.transport, self.workers)
                    }
                };
                backends.push(entry.backend.clone());
                next.insert(key, entry);
            }
            pools.insert(Arc::clone(&up.name), backends);
        }
        changes.removed = self.entries.drain().map(|(_, e)| e.backend.state).collect();
        self.entries = next;
        (pools, changes)
    }

    pub fn get(&self, key: &BackendKey) -> Option<&Arc<BackendState>> {
        self.entries.get(key).map(|e| &e.backend.state)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn config(backends: &str, connect_timeout: &str) -> Config {
        parse_str(&format!(
            "listeners: [{{bind: '127.0.0.1:0'}}]\n\
             upstreams: {{ a: {{ backends: [{backends}], connect_timeout: {connect_timeout} }} }}\n\
             routes: [{{ name: r, split: [{{upstream: a, weight: 1}}] }}]\n"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn state_survives_for_backends_that_stay() {
        let mut reg = Registry::new(1);
        let none = HashMap::new();
        let (pools, changes) = reg.reconcile(&config("'h:1', 'h:2'", "1s"), &none);
        assert_eq!(changes.added.len(), 2);
        let kept = Arc::clone(&pools["a"][1].state);

        let (pools, changes) = reg.reconcile(&config("'h:2', 'h:3'", "2s"), &none);
        assert!(
            Arc::ptr_eq(&pools["a"][0].state, &kept),
            "h:2 keeps its state"
        );
        assert_eq!(changes.added.len(), 1);
        assert_eq!(changes.removed.len(), 1);
        assert_eq!(changes.removed[0].addr.as_str(), "h:1");
        assert_eq!(reg.len(), 2);
    }
}
