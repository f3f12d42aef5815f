//! The fleet's I/O with etcd, in one task: this replica's lease (kept alive every third of its
//! TTL), leadership (a key created under the lease by whoever gets there first, so it goes
//! when its holder stops renewing), the watch on the fleet's shared state, the leader's watch
//! on every replica's report, publishing this replica's report, and the writes the controller
//! asks for. The controller never waits on etcd: it sends [`Cmd`]s and reads [`Event`]s.
//!
//! When etcd stops answering, the task says so and retries (backing off to 2 s); when it
//! answers again, everything is read afresh (a watch cannot be trusted across a gap) and the
//! lease renewed, or a new one taken if it expired (the node's report is written again and the
//! leadership campaigned for).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::etcd::api::{Compare, Kv, Op, Range};
use super::etcd::watch::{Batch, Event as WatchEvent, Watch};
use super::etcd::{Etcd, EtcdError};
use super::state::{FleetState, NodeReport};
use super::status::Status;
use super::{Keys, unix_ms};
use crate::server::shutdown::Stop;

/// What the session tells the controller.
#[derive(Debug)]
pub(crate) enum Event {
    /// etcd answers again (`None`) or stopped answering (why).
    Down(Option<String>),
    /// Every rollout the fleet holds, read afresh: (route, state, mod revision).
    Rollouts(Vec<(String, FleetState, i64)>),
    /// One rollout changed; `None`: deleted.
    Rollout(String, Option<(FleetState, i64)>),
    /// Who leads, and whether it is this replica.
    Leader {
        leader: Option<String>,
        leading: bool,
    },
    /// Every replica's report, read afresh (leader only).
    Nodes(Vec<NodeReport>),
    /// One replica's report changed; `None`: it left (its lease ended).
    Node(String, Option<NodeReport>),
    /// A write's outcome: whether its compares held, and the revision it wrote at.
    Written {
        id: u64,
        result: Result<(bool, i64), EtcdError>,
    },
}

/// What the controller asks of the session.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// A transaction; `leader_only` adds "this replica's lease still holds the leadership".
    Write {
        id: u64,
        leader_only: bool,
        compare: Vec<Compare>,
        ops: Vec<Op>,
    },
}

/// The leader key's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaderValue {
    node: String,
    process: String,
    since_ms: u64,
}

/// Why the inner loop ended.
enum Exit {
    Stop,
    /// Read everything again (a watch ended, the lease expired, etcd went away).
    Resync,
}

pub(crate) struct Session {
    pub(crate) etcd: Arc<Etcd>,
    pub(crate) keys: Keys,
    pub(crate) node: String,
    pub(crate) process: String,
    pub(crate) ttl: Duration,
    pub(crate) publish_every: Duration,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) cmds: mpsc::UnboundedReceiver<Cmd>,
    pub(crate) report: watch::Receiver<Option<NodeReport>>,
    pub(crate) status: Arc<Status>,
    lease: Option<i64>,
    leading: bool,
    /// Bumped each time this replica starts leading: a new term needs a fresh nodes watch.
    terms: u64,
    leader: Option<String>,
    /// What was last published, and when: unchanged reports go out once per TTL.
    published: Option<(NodeReport, Instant)>,
    down: Option<String>,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        etcd: Arc<Etcd>,
        keys: Keys,
        node: String,
        process: String,
        ttl: Duration,
        publish_every: Duration,
        events: mpsc::UnboundedSender<Event>,
        cmds: mpsc::UnboundedReceiver<Cmd>,
        report: watch::Receiver<Option<NodeReport>>,
        status: Arc<Status>,
    ) -> Session {
        Session {
            etcd,
            keys,
            node,
            process,
            ttl,
            publish_every,
            events,
            cmds,
            report,
            status,
            lease: None,
            leading: false,
            terms: 0,
            leader: None,
            published: None,
            down: None,
        }
    }

    fn send(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Serves until `stop` fires; then gives up the lease (and with it the leadership and this
    /// replica's report) so the fleet need not wait for it to expire.
    pub(crate) async fn run(mut self, mut stop: Stop) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            match self.connect().await {
                Ok((control, nodes)) => {
                    backoff = BACKOFF_FIRST;
                    match self.serve(control, nodes, &mut stop).await {
                        Exit::Stop => break,
                        Exit::Resync => continue,
                    }
                }
                Err(e) => {
                    self.went_down(&e);
                    let until = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    if self.wait_down(until, &mut stop).await {
                        break;
                    }
                }
            }
        }
        if let Some(lease) = self.lease.take() {
            match self.etcd.lease_revoke(lease).await {
                Ok(()) => tracing::info!(node = %self.node, "left the fleet (lease revoked)"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not revoke the fleet lease; it expires by itself")
                }
            }
        }
    }

    fn went_down(&mut self, e: &EtcdError) {
        let why = e.to_string();
        if self.down.is_none() {
            tracing::error!(endpoints = %self.etcd.endpoints(), "etcd is unreachable: {why}; traffic goes on with the weights in force, steps wait, local aborts still act");
        }
        self.down = Some(why.clone());
        self.status.set_down(Some(why.clone()));
        if self.leading {
            self.leading = false;
            self.send(Event::Leader {
                leader: self.leader.clone(),
                leading: false,
            });
        }
        self.send(Event::Down(Some(why)));
    }

    /// Waits until `until` while etcd is down, failing the controller's writes at once.
    /// True when stopped.
    async fn wait_down(&mut self, until: Instant, stop: &mut Stop) -> bool {
        loop {
            tokio::select! {
                () = stop.wait() => return true,
                () = tokio::time::sleep_until(until) => return false,
                cmd = self.cmds.recv() => match cmd {
                    Some(Cmd::Write { id, .. }) => {
                        let why = self.down.clone().unwrap_or_default();
                        self.send(Event::Written { id, result: Err(EtcdError::Unreachable { endpoint: self.etcd.endpoints(), error: why }) });
                    }
                    None => return true,
                },
            }
        }
    }

    /// Takes (or renews) the lease, reads the fleet's shared state and starts watching it.
    async fn connect(&mut self) -> Result<(Watch, Option<Watch>), EtcdError> {
        let renewed = match self.lease {
            Some(lease) => self.etcd.lease_keepalive(lease).await?,
            None => false,
        };
        let fresh = !renewed;
        if fresh {
            let ttl = self.ttl.as_secs().max(1);
            let (lease, granted) = self.etcd.lease_grant(ttl).await?;
            tracing::info!(node = %self.node, lease, ttl = granted, "fleet lease granted");
            self.lease = Some(lease);
            self.published = None;
        }
        let range = self.etcd.range_prefix(&self.keys.control(), false).await?;
        let control = self
            .etcd
            .watch_prefix(&self.keys.control(), range.revision + 1)
            .await?;
        if self.down.take().is_some() {
            tracing::info!(endpoints = %self.etcd.endpoints(), "etcd answers again; reconciling with the fleet");
        }
        self.status.set_down(None);
        self.send(Event::Down(None));
        self.read_control(&range);
        self.publish(true).await;
        if self.leader.is_none() {
            self.campaign().await?;
        }
        let nodes = if self.leading {
            Some(self.watch_nodes().await?)
        } else {
            None
        };
        Ok((control, nodes))
    }

    /// Applies a fresh read of `control/`: the leader and every rollout.
    fn read_control(&mut self, range: &Range) {
        let mut rollouts = Vec::new();
        let mut leader = None;
        for kv in &range.kvs {
            if kv.key == self.keys.leader() {
                leader = Some(kv.clone());
            } else if let Some((route, st)) = self.rollout(kv) {
                rollouts.push((route, st, kv.mod_revision));
            }
        }
        self.send(Event::Rollouts(rollouts));
        self.set_leader(leader.as_ref());
    }

    fn rollout(&self, kv: &Kv) -> Option<(String, FleetState)> {
        let route = kv.key.strip_prefix(&self.keys.rollouts())?;
        match serde_json::from_slice(&kv.value) {
            Ok(st) => Some((route.to_owned(), st)),
            Err(e) => {
                tracing::error!(key = %kv.key, error = %e, "the fleet's rollout state cannot be read; this replica keeps what it applied last for that route");
                None
            }
        }
    }

    fn set_leader(&mut self, kv: Option<&Kv>) {
        let leader = kv.and_then(|kv| serde_json::from_slice::<LeaderValue>(&kv.value).ok());
        let leading = kv.is_some_and(|kv| Some(kv.lease) == self.lease);
        let name = leader.map(|l| l.node);
        if name != self.leader || leading != self.leading {
            match (&name, leading) {
                (_, true) => tracing::info!(node = %self.node, "this replica leads the fleet"),
                (Some(n), false) if self.leading => {
                    tracing::warn!(leader = %n, "this replica no longer leads the fleet")
                }
                (Some(n), false) => tracing::info!(leader = %n, "the fleet's leader"),
                (None, _) => tracing::info!("the fleet has no leader"),
            }
        }
        if leading && !self.leading {
            self.terms += 1;
        }
        self.leader = name;
        self.leading = leading;
        self.status.set_leader(self.leader.clone(), leading);
        self.send(Event::Leader {
            leader: self.leader.clone(),
            leading,
        });
    }

    /// Tries to take the leadership: create the leader key under this replica's lease unless
    /// it exists.
    async fn campaign(&mut self) -> Result<(), EtcdError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let value = LeaderValue {
            node: self.node.clone(),
            process: self.process.clone(),
            since_ms: unix_ms(),
        };
        let key = self.keys.leader();
        let (won, _) = self
            .etcd
            .txn(
                &[Compare::ModRevision(key.clone(), 0)],
                &[Op::Put {
                    key,
                    value: serde_json::to_vec(&value).unwrap_or_default(),
                    lease,
                }],
            )
            .await?;
        if won {
            // The watch delivers the key too; saying it now saves a round trip.
            if !self.leading {
                self.terms += 1;
            }
            self.leader = Some(self.node.clone());
            self.leading = true;
            tracing::info!(node = %self.node, "this replica leads the fleet");
            self.status.set_leader(self.leader.clone(), true);
            self.send(Event::Leader {
                leader: self.leader.clone(),
                leading: true,
            });
        }
        Ok(())
    }

    /// Reads every replica's report and watches them (the leader sums their counters).
    async fn watch_nodes(&mut self) -> Result<Watch, EtcdError> {
        let range = self.etcd.range_prefix(&self.keys.nodes(), false).await?;
        let reports: Vec<NodeReport> = range
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        self.send(Event::Nodes(reports));
        self.etcd
            .watch_prefix(&self.keys.nodes(), range.revision + 1)
            .await
    }

    async fn serve(
        &mut self,
        mut control: Watch,
        mut nodes: Option<Watch>,
        stop: &mut Stop,
    ) -> Exit {
        let mut keepalive = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(200)));
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        keepalive.reset();
        let mut publish = tokio::time::interval(self.publish_every);
        publish.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut count = tokio::time::interval(self.ttl);
        count.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.wait() => return Exit::Stop,
                _ = keepalive.tick() => {
                    let Some(lease) = self.lease else { return Exit::Resync };
                    match self.etcd.lease_keepalive(lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(node = %self.node, lease, "the fleet lease expired (this replica did not renew it in time); taking a new one");
                            self.lease = None;
                            self.set_leader(None);
                            return Exit::Resync;
                        }
                        Err(e) => {
                            self.went_down(&e);
                            return Exit::Resync;
                        }
                    }
                }
                _ = publish.tick() => self.publish(false).await,
                _ = count.tick(), if !self.leading => {
                    if let Ok(r) = self.etcd.range_prefix(&self.keys.nodes(), true).await {
                        self.status.set_nodes(r.count.max(0) as usize);
                    }
                }
                batch = control.next() => match batch {
                    Ok(Some(batch)) => {
                        let term = (self.leading, self.terms);
                        if let Err(e) = self.control_events(batch).await {
                            self.went_down(&e);
                            return Exit::Resync;
                        }
                        if (self.leading, self.terms) != term {
                            nodes = None;
                            if self.leading {
                                match self.watch_nodes().await {
                                    Ok(w) => nodes = Some(w),
                                    Err(e) => { self.went_down(&e); return Exit::Resync; }
                                }
                            }
                        }
                    }
                    // The stream ended (etcd restarted, or closed it): read everything again; if
                    // etcd is gone, connecting says so.
                    Ok(None) => return Exit::Resync,
                    Err(e) => { tracing::warn!(error = %e, "the fleet watch failed; reading everything again"); return Exit::Resync; }
                },
                batch = next(&mut nodes) => match batch {
                    Ok(Some(batch)) => self.node_events(batch),
                    Ok(None) | Err(_) => return Exit::Resync,
                },
                cmd = self.cmds.recv() => match cmd {
                    Some(Cmd::Write { id, leader_only, compare, ops }) => {
                        let result = self.write(leader_only, compare, ops).await;
                        if let Err(e) = &result && !e.answered() {
                            self.send(Event::Written { id, result });
                            self.went_down(&EtcdError::Unreachable { endpoint: self.etcd.endpoints(), error: "a write got no answer".into() });
                            return Exit::Resync;
                        }
                        self.send(Event::Written { id, result });
                    }
                    None => return Exit::Stop,
                },
            }
        }
    }

    async fn write(
        &mut self,
        leader_only: bool,
        mut compare: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<(bool, i64), EtcdError> {
        if leader_only {
            match (self.leading, self.lease) {
                (true, Some(lease)) => compare.push(Compare::Lease(self.keys.leader(), lease)),
                _ => return Ok((false, 0)),
            }
        }
        self.etcd.txn(&compare, &ops).await
    }

    async fn control_events(&mut self, batch: Batch) -> Result<(), EtcdError> {
        for ev in batch.events {
            let (kv, put) = match ev {
                WatchEvent::Put(kv) => (kv, true),
                WatchEvent::Delete(kv) => (kv, false),
            };
            if kv.key == self.keys.leader() {
                self.set_leader(put.then_some(&kv));
                if !put {
                    self.campaign().await?;
                }
            } else if let Some(route) = kv.key.strip_prefix(&self.keys.rollouts()) {
                let st = if put {
                    match self.rollout(&kv) {
                        Some((_, st)) => Some((st, kv.mod_revision)),
                        None => continue,
                    }
                } else {
                    None
                };
                self.send(Event::Rollout(route.to_owned(), st));
            }
        }
        Ok(())
    }

    fn node_events(&mut self, batch: Batch) {
        for ev in batch.events {
            match ev {
                WatchEvent::Put(kv) => {
                    let Some(node) = kv.key.strip_prefix(&self.keys.nodes()) else {
                        continue;
                    };
                    if let Ok(r) = serde_json::from_slice::<NodeReport>(&kv.value) {
                        self.send(Event::Node(node.to_owned(), Some(r)));
                    }
                }
                WatchEvent::Delete(kv) => {
                    let Some(node) = kv.key.strip_prefix(&self.keys.nodes()) else {
                        continue;
                    };
                    self.send(Event::Node(node.to_owned(), None));
                }
            }
        }
    }

    /// Writes this replica's report under its lease when it changed (`force`: now), and at
    /// least once per TTL so `/status` shows it alive.
    async fn publish(&mut self, force: bool) {
        let Some(lease) = self.lease else { return };
        let Some(mut report) = self.report.borrow().clone() else {
            return;
        };
        let now = Instant::now();
        let due = match &self.published {
            None => true,
            Some((last, at)) => {
                force || last.routes != report.routes || now.duration_since(*at) >= self.ttl
            }
        };
        if !due {
            return;
        }
        report.time_ms = unix_ms();
        let Ok(value) = serde_json::to_vec(&report) else {
            return;
        };
        match self
            .etcd
            .put(&self.keys.node(&self.node), &value, lease)
            .await
        {
            Ok(()) => {
                self.status.published(true, report.time_ms);
                self.published = Some((report, now));
            }
            Err(e) => {
                self.status.published(false, 0);
                tracing::debug!(error = %e, "publishing this replica's report failed");
            }
        }
    }
}

async fn next(w: &mut Option<Watch>) -> Result<Option<Batch>, EtcdError> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
