//! The one writer of the snapshot. Every change to what the request path sees (a config file
//! edit, SIGHUP, `POST /reload`) is a command to this task, applied whole or not at all.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::loader::Loader;
use super::snapshot::{self, Snapshot};
use crate::backend::discovery::{Discovery, Found};
use crate::backend::health::HealthCheckers;
use crate::backend::{Backend, Registry};
use crate::config::model::{AdminToken, ListenerTls};
use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::routing::keeper::Keeper;
use crate::server::listener::{ListenerSet, OpenedLogs, Prepared};
use crate::server::shutdown::Stop;
use crate::server::tls::FreshCerts;
use crate::shared::Shared;

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// Fixed text (tests, the demo): reloads re-read it and find it unchanged.
    Text(String),
}

impl ConfigSource {
    /// A blocking read (see [`super::loader`]).
    fn read(&self) -> Result<String, ConfigErrors> {
        match self {
            ConfigSource::File(path) => config::read_text(path),
            ConfigSource::Text(t) => Ok(t.clone()),
        }
    }

    /// Names the source in errors and logs.
    fn describe(&self) -> String {
        match self {
            ConfigSource::File(path) => format!("the config file {}", path.display()),
            ConfigSource::Text(_) => "the config".to_owned(),
        }
    }

    /// Where errors about the source itself are reported.
    fn error_path(&self) -> String {
        match self {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Text(_) => String::new(),
        }
    }
}

/// What one load read, off the workers: the text, the config when it changed, and the
/// certificates of the listeners before and after.
struct Loaded {
    /// The text, or why it could not be read.
    text: Result<String, ConfigErrors>,
    /// `None`: the text and the admin token file are the ones in force.
    config: Option<Result<Config, ConfigErrors>>,
    certs: FreshCerts,
    /// The new config's access logs, opened (reloads only: at start they are opened when the
    /// listeners are first bound).
    logs: OpenedLogs,
}

impl Loaded {
    /// Reads the source and everything it names (a blocking read: run it through the
    /// [`Loader`]). `current` is the text in force and its token; `running` the TLS specs of
    /// the running listeners, whose certificates every reload re-reads.
    fn read(
        source: &ConfigSource,
        current: Option<(&str, Option<&AdminToken>)>,
        running: Vec<ListenerTls>,
    ) -> Loaded {
        let text = source.read();
        let unchanged = |text: &str| {
            // The admin token lives in its own file: a rotated token is a change too.
            current.is_some_and(|(now, token)| {
                now == text && !token.is_some_and(AdminToken::file_changed)
            })
        };
        let config = match &text {
            Ok(t) if !unchanged(t) => Some(config::parse_str(t)),
            _ => None,
        };
        let mut specs = running;
        if let Some(Ok(c)) = &config {
            specs.extend(c.listeners.iter().filter_map(|l| l.tls.clone()));
        }
        let certs = FreshCerts::read(&specs);
        Loaded {
            text,
            config,
            certs,
            logs: OpenedLogs::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied {
        generation: u64,
    },
    /// The text is the one in force; nothing was rebuilt.
    Unchanged {
        generation: u64,
    },
}

pub type ReloadResult = Result<ReloadOutcome, ConfigErrors>;

enum Command {
    Reload {
        reply: Option<oneshot::Sender<ReloadResult>>,
    },
    /// Run-time weights for a route (the rollout controller); `None` goes back to the config's.
    SetWeights {
        route: Arc<str>,
        weights: Option<Vec<u32>>,
        reply: oneshot::Sender<bool>,
    },
}

/// Asks the reloader for work; cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Command>,
}

impl ReloadHandle {
    /// Reloads and waits for the outcome.
    pub async fn reload(&self) -> ReloadResult {
        let (reply, rx) = oneshot::channel();
        let gone = || ConfigErrors(vec![ConfigError::new("", "switchyard is shutting down")]);
        self.tx
            .send(Command::Reload { reply: Some(reply) })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Asks for a reload without waiting (file watcher, SIGHUP). A reload already queued
    /// covers this one, so a full queue drops it.
    pub fn trigger(&self) {
        let _ = self.tx.try_send(Command::Reload { reply: None });
    }

    /// Sets a route's weights (same length as its split, not all zero; `None`: the config's)
    /// and waits until a snapshot with them is published. False if refused or shutting down.
    pub async fn set_weights(&self, route: Arc<str>, weights: Option<Vec<u32>>) -> bool {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::SetWeights {
            route,
            weights,
            reply,
        };
        self.tx.send(cmd).await.is_ok() && rx.await.unwrap_or(false)
    }
}

pub struct Reloader {
    source: ConfigSource,
    /// Runs the reads of every load off the workers, with a deadline.
    loader: Loader,
    text: Arc<str>,
    /// Certificates read with the first config, for its listeners.
    first_certs: FreshCerts,
    config: Arc<Config>,
    generation: u64,
    registry: Registry,
    health: HealthCheckers,
    /// DNS discovery's tasks and the sets they found.
    discovery: Discovery,
    stats: Keeper,
    /// Weights set at run time (rollouts), by route; they win over the config's.
    weights: HashMap<Arc<str>, Vec<u32>>,
    shared: Arc<Shared>,
    listeners: Option<ListenerSet>,
    rx: mpsc::Receiver<Command>,
}

impl Reloader {
    /// Loads and validates the first config off the workers (see [`Loader`]) and publishes
    /// generation 1. Listeners are bound by [`Reloader::bind_listeners`], once the caller has
    /// made the serving context.
    pub async fn open(
        source: ConfigSource,
        workers: usize,
    ) -> Result<(Reloader, ReloadHandle), ConfigErrors> {
        let loader = Loader::default();
        let from = source.clone();
        let loaded = loader
            .run(&source.describe(), move || {
                Loaded::read(&from, None, Vec::new())
            })
            .await
            .map_err(|why| ConfigErrors(vec![ConfigError::new(source.error_path(), why)]))?;
        Reloader::first(source, loader, loaded, workers)
    }

    /// [`Reloader::open`], reading on the calling thread: for fixed text ([`ConfigSource::Text`])
    /// and tests, never for files on a worker.
    pub fn load(
        source: ConfigSource,
        workers: usize,
    ) -> Result<(Reloader, ReloadHandle), ConfigErrors> {
        let loaded = Loaded::read(&source, None, Vec::new());
        Reloader::first(source, Loader::default(), loaded, workers)
    }

    fn first(
        source: ConfigSource,
        loader: Loader,
        loaded: Loaded,
        workers: usize,
    ) -> Result<(Reloader, ReloadHandle), ConfigErrors> {
        let text = loaded.text?;
        let config = match loaded.config {
            Some(c) => Arc::new(c?),
            None => Arc::new(config::parse_str(&text)?),
        };
        let mut registry = Registry::new(workers);
        let mut stats = Keeper::new(workers);
        let (pools, _) = registry.reconcile(&config, &HashMap::new());
        let mut health = HealthCheckers::default();
        health.reconcile(&config, &pools);
        let weights = HashMap::new();
        let first = snapshot::build(1, Arc::clone(&config), &pools, &weights, &mut stats);
        let shared = Arc::new(Shared::new(first));
        let mut discovery = Discovery::new(Arc::clone(&shared.discovery));
        discovery.reconcile(&config);
        let (tx, rx) = mpsc::channel(8);
        let reloader = Reloader {
            source,
            loader,
            text: text.into(),
            first_certs: loaded.certs,
            config,
            generation: 1,
            registry,
            health,
            discovery,
            stats,
            weights,
            shared,
            listeners: None,
            rx,
        };
        Ok((reloader, ReloadHandle { tx }))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Binds and starts the first config's listeners.
    pub async fn bind_listeners(&mut self, mut set: ListenerSet) -> Result<(), ConfigErrors> {
        let certs = std::mem::take(&mut self.first_certs);
        let (shared, config) = (Arc::clone(&self.shared), Arc::clone(&self.config));
        let logs = self
            .loader
            .run("the access log files", move || {
                OpenedLogs::open(&shared.access_logs, &config)
            })
            .await
            .map_err(|why| ConfigErrors(vec![ConfigError::new("listeners", why)]))?;
        let prepared = set
            .prepare(&self.config, &certs, logs)
            .map_err(ConfigErrors)?;
        set.commit(prepared);
        self.shared.set_listener_addrs(set.addrs());
        self.listeners = Some(set);
        Ok(())
    }

    /// Serves commands until `stop` fires, then stops every listener.
    pub async fn run(mut self, mut stop: Stop) {
        loop {
            let cmd = tokio::select! {
                () = stop.wait() => break,
                cmd = self.rx.recv() => cmd,
                Some(found) = self.discovery.next() => {
                    self.discovered(found);
                    continue;
                }
            };
            match cmd {
                Some(Command::Reload { reply }) => {
                    let (what, read) = (self.source.describe(), self.read_job());
                    let loaded = tokio::select! {
                        // Shutdown never waits for a read (the reply is dropped).
                        () = stop.wait() => break,
                        l = self.loader.run(&what, read) => l,
                    };
                    let result = self.reload(loaded);
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Some(Command::SetWeights {
                    route,
                    weights,
                    reply,
                }) => {
                    let _ = reply.send(self.set_weights(route, weights));
                }
                None => break,
            }
        }
        if let Some(mut set) = self.listeners.take() {
            set.stop_all();
        }
    }

    /// Waits (at most `limit`) until every discovered upstream has had its first lookup, taking
    /// in what they found, so that the first request already sees the pods. Before `run`.
    pub async fn first_lookups(&mut self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.discovery.all_reported() {
            match tokio::time::timeout_at(deadline, self.discovery.next()).await {
                Ok(Some(found)) => self.discovered(found),
                _ => break,
            }
        }
        let waiting = self.shared.discovery.waiting();
        if !waiting.is_empty() {
            tracing::warn!(upstreams = ?waiting, "no DNS answer yet for these upstreams: they have no backends, and /readyz says not ready until they have one");
        }
    }

    /// A discovery outcome: when it changes a set in force, the backends are reconciled and
    /// published in a snapshot of the same generation and weights (a rollout goes on as it was).
    fn discovered(&mut self, found: Found) {
        if !self.discovery.take(found) {
            return;
        }
        let (pools, changes) = self.registry.reconcile(&self.config, self.discovery.sets());
        self.health.reconcile(&self.config, &pools);
        self.discovery.removed(changes.removed);
        self.republish(&pools);
    }

    /// Publishes `pools` with the config and weights in force, under the same generation.
    fn republish(&mut self, pools: &HashMap<Arc<str>, Vec<Backend>>) {
        let next = snapshot::build(
            self.generation,
            Arc::clone(&self.config),
            pools,
            &self.weights,
            &mut self.stats,
        );
        self.shared.publish(next);
    }

    /// Applies run-time weights and publishes them in a snapshot of the same generation (the
    /// config did not change). Before the listeners start, this sets what the first request sees.
    pub fn set_weights(&mut self, route: Arc<str>, weights: Option<Vec<u32>>) -> bool {
        let fits = |w: &Vec<u32>| {
            self.config
                .route(&route)
                .is_some_and(|r| r.split.len() == w.len())
                && w.iter().any(|&x| x > 0)
        };
        match weights {
            Some(w) if !fits(&w) => return false,
            Some(w) => {
                if self.weights.get(&route) == Some(&w) {
                    return true;
                }
                self.weights.insert(route, w);
            }
            None => {
                if self.weights.remove(&route).is_none() {
                    return true;
                }
            }
        }
        let current = self.shared.snapshot();
        let pools = current
            .upstreams
            .iter()
            .map(|p| (Arc::clone(&p.spec.name), p.backends.clone()))
            .collect();
        self.republish(&pools);
        true
    }

    /// What the next load reads, to run off the workers.
    fn read_job(&self) -> impl FnOnce() -> Loaded + Send + 'static {
        let source = self.source.clone();
        let text = Arc::clone(&self.text);
        let token = self.config.admin.token.clone();
        let running = self
            .listeners
            .as_ref()
            .map(ListenerSet::tls_specs)
            .unwrap_or_default();
        let shared = Arc::clone(&self.shared);
        move || {
            let mut loaded = Loaded::read(&source, Some((&text, token.as_ref())), running);
            if let Some(Ok(config)) = &loaded.config {
                loaded.logs = OpenedLogs::open(&shared.access_logs, config);
            }
            loaded
        }
    }

    /// Applies what a load read (or the reason it could not), then logs and counts the
    /// outcome.
    fn reload(&mut self, loaded: Result<Loaded, String>) -> ReloadResult {
        let result = match loaded {
            Ok(loaded) => {
                if let Some(set) = &self.listeners {
                    set.reload_certificates(&loaded.certs);
                }
                self.try_reload(loaded)
            }
            Err(why) => Err(ConfigErrors(vec![ConfigError::new(
                self.source.error_path(),
                why,
            )])),
        };
        let counters = &self.shared.counters;
        use std::sync::atomic::Ordering::Relaxed;
        match &result {
            Ok(ReloadOutcome::Applied { generation }) => {
                counters.reloads_applied.fetch_add(1, Relaxed);
                tracing::info!(generation, "config applied");
            }
            Ok(ReloadOutcome::Unchanged { .. }) => {
                counters.reloads_unchanged.fetch_add(1, Relaxed);
                tracing::debug!("config unchanged; nothing to do");
            }
            Err(errors) => {
                counters.reloads_rejected.fetch_add(1, Relaxed);
                for e in &errors.0 {
                    tracing::warn!(path = %e.path, "config rejected: {}", e.message);
                }
                tracing::warn!(
                    generation = self.generation,
                    errors = errors.0.len(),
                    "config rejected; the previous config keeps serving"
                );
            }
        }
        counters.last_reload.record(result.is_ok());
        self.shared.note_reload(result.is_err());
        result
    }

    fn try_reload(&mut self, loaded: Loaded) -> ReloadResult {
        let text = loaded.text?;
        let Some(config) = loaded.config else {
            return Ok(ReloadOutcome::Unchanged {
                generation: self.generation,
            });
        };
        let config = Arc::new(config?);
        let prepared: Option<Prepared> = match &self.listeners {
            Some(set) => Some(
                set.prepare(&config, &loaded.certs, loaded.logs)
                    .map_err(ConfigErrors)?,
            ),
            None => None,
        };
        if config.admin.bind != self.config.admin.bind {
            tracing::warn!("admin.bind changed; the admin listener moves only on restart");
        }
        if config.ops.as_ref().map(|o| o.bind) != self.config.ops.as_ref().map(|o| o.bind) {
            tracing::warn!("ops changed; the ops listener starts, stops or moves only on restart");
        }

        self.discovery.reconcile(&config);
        let (pools, changes) = self.registry.reconcile(&config, self.discovery.sets());
        self.health.reconcile(&config, &pools);
        let removed = changes.removed.len();
        self.discovery.removed(changes.removed);
        self.weights.retain(|route, w| {
            // Run-time weights survive only while the route's split has the same shape.
            config
                .route(route)
                .zip(self.config.route(route))
                .is_some_and(|(new, old)| {
                    new.split.len() == w.len()
                        && new
                            .split
                            .iter()
                            .map(|s| &s.upstream)
                            .eq(old.split.iter().map(|s| &s.upstream))
                })
        });
        self.generation += 1;
        let next: Snapshot = snapshot::build(
            self.generation,
            Arc::clone(&config),
            &pools,
            &self.weights,
            &mut self.stats,
        );
        self.shared.publish(next);
        if let (Some(set), Some(prepared)) = (self.listeners.as_mut(), prepared) {
            set.commit(prepared);
            self.shared.set_listener_addrs(set.addrs());
        }
        tracing::info!(
            routes = config.routes.len(),
            upstreams = config.upstreams.len(),
            backends = self.registry.len(),
            added = changes.added.len(),
            removed,
            "backends reconciled"
        );
        self.config = config;
        self.text = text.into();
        Ok(ReloadOutcome::Applied {
            generation: self.generation,
        })
    }
}

#[cfg(test)]
#[path = "weights_tests.rs"]
mod weights_tests;
