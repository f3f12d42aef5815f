//! Wiring: config -> registry -> snapshot; listeners, reloader, watcher, admin; shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminCtx, Surface};
use crate::config::{ConfigError, ConfigErrors};
use crate::fleet::FleetController;
use crate::reload::{ConfigSource, ReloadHandle, Reloader, watcher};
use crate::rollout::Controller;
use crate::server::conn::ServeCtx;
use crate::server::listener::{self, ListenerSet};
use crate::server::shutdown::{StopTrigger, Tracker, stop_pair};
use crate::server::workers::Workers;
use crate::shared::Shared;

/// How long start-up waits for discovered upstreams' first lookups before it opens the
/// listeners anyway (a lookup's own timeouts end it sooner).
const FIRST_LOOKUPS: Duration = Duration::from_secs(5);
/// How long the access log writers get at exit to write what is queued.
const ACCESS_LOG_CLOSE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Options {
    pub source: ConfigSource,
    /// Reload when the config file changes (only for [`ConfigSource::File`]).
    pub watch: bool,
    /// Worker threads serving traffic, the calling runtime being the first (see
    /// [`crate::server::workers`]).
    pub workers: usize,
}

impl Options {
    /// One worker, watching the file: what tests and embedders usually want.
    pub fn file(path: impl Into<std::path::PathBuf>) -> Self {
        Options {
            source: ConfigSource::File(path.into()),
            watch: true,
            workers: 1,
        }
    }
}

/// Who runs the rollouts: this process alone, or with its fleet (`cluster:`).
enum Rollouts {
    Local(Controller),
    Fleet(Box<FleetController>),
}

impl Rollouts {
    fn initial_weights(&self, config: &crate::config::Config) -> Vec<(Arc<str>, Vec<u32>)> {
        match self {
            Rollouts::Local(c) => c.initial_weights(config),
            Rollouts::Fleet(c) => c.initial_weights(config),
        }
    }

    /// `GET /rollouts` as of the first snapshot.
    fn refresh_views(&self) {
        match self {
            Rollouts::Local(c) => c.refresh_views(),
            Rollouts::Fleet(c) => c.refresh_views(),
        }
    }
}

/// A running switchyard.
pub struct Running {
    pub shared: Arc<Shared>,
    pub reload: ReloadHandle,
    pub admin_addr: SocketAddr,
    /// The ops listener's address, when `ops:` is configured.
    pub ops_addr: Option<SocketAddr>,
    drain_timeout: Duration,
    tracker: Tracker,
    stop_reloader: StopTrigger,
    stop_admin: StopTrigger,
    stop_rollouts: StopTrigger,
    stop_trace: StopTrigger,
    reloader: JoinHandle<()>,
    trace_export: JoinHandle<()>,
    rollouts: JoinHandle<()>,
    admin: JoinHandle<()>,
    workers: Workers,
    _watch: Option<watcher::WatchGuard>,
}

/// Loads the config, binds every listener and the admin API, and starts serving.
pub async fn start(opts: Options) -> Result<Running, ConfigErrors> {
    let workers = Workers::start(opts.workers.max(1)).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("cannot start worker threads: {e}"),
        )])
    })?;
    let (mut reloader, reload) = Reloader::open(opts.source.clone(), workers.len()).await?;
    let config = Arc::clone(reloader.config());
    let shared = Arc::clone(reloader.shared());
    // Span export runs from the first request on, reading the tracing config in force.
    let (stop_trace, trace_signal) = stop_pair();
    let settings = {
        let shared = Arc::clone(&shared);
        move || shared.snapshot().config.tracing.clone()
    };
    let mut trace_signal = trace_signal;
    let trace_export = tokio::spawn(shared.tracer.run(
        settings,
        shared.reload_events(),
        async move { trace_signal.wait().await },
    ));
    let tracker = Tracker::default();
    // Rollouts resumed from the state file (or taken from the fleet) set their weights before
    // the first request.
    let in_use = |e: crate::rollout::journal::InUse| {
        ConfigErrors(vec![ConfigError::new("state_dir", e.to_string())])
    };
    let (controller, rollouts, fleet) = match &config.cluster {
        None => {
            let (c, h) =
                Controller::new(&config, Arc::clone(&shared), reload.clone()).map_err(in_use)?;
            (Rollouts::Local(c), h, None)
        }
        Some(cluster) => {
            let (c, h, f) =
                FleetController::join(&config, cluster, Arc::clone(&shared), reload.clone())
                    .await
                    .map_err(in_use)?;
            (Rollouts::Fleet(Box::new(c)), h, Some(f))
        }
    };
    for (route, weights) in controller.initial_weights(&config) {
        reloader.set_weights(route, Some(weights));
    }
    controller.refresh_views();
    reloader.first_lookups(FIRST_LOOKUPS).await;

    let admin_listener = bind_control("admin.bind", config.admin.bind)?;
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.bind);
    let ops_listener = match &config.ops {
        Some(ops) => Some(bind_control("ops.bind", ops.bind)?),
        None => None,
    };
    let ops_addr = ops_listener.as_ref().and_then(|l| l.local_addr().ok());
    if !config.admin.bind.ip().is_loopback() && config.admin.token.is_none() {
        tracing::warn!(addr = %admin_addr, "the admin API listens beyond loopback without admin.token_file; anyone who can reach it can reload the config");
    }

    let proxy = Arc::new(crate::http::Proxy::new(Arc::clone(&shared)));
    let serve_ctx = Arc::new(ServeCtx::new(Arc::clone(&shared), tracker.clone(), proxy));
    let set = ListenerSet::new(serve_ctx, workers.handles().to_vec()).with_cert_watch(opts.watch);
    reloader.bind_listeners(set).await?;

    let watch = match (&opts.source, opts.watch) {
        (ConfigSource::File(path), true) => {
            match watcher::watch(std::slice::from_ref(path), reload.clone()) {
                Ok(guard) => Some(guard),
                Err(e) => {
                    return Err(ConfigErrors(vec![ConfigError::new(
                        path.display().to_string(),
                        format!("cannot watch the config file for changes: {e}"),
                    )]));
                }
            }
        }
        _ => None,
    };

    let (stop_reloader, reloader_signal) = stop_pair();
    let reloader_task = tokio::spawn(reloader.run(reloader_signal));

    let (stop_rollouts, rollouts_signal) = stop_pair();
    let rollouts_task = match controller {
        Rollouts::Local(c) => tokio::spawn(c.run(rollouts_signal)),
        Rollouts::Fleet(c) => tokio::spawn(c.run(rollouts_signal)),
    };

    let (stop_admin, admin_signal) = stop_pair();
    let admin_ctx = Arc::new(AdminCtx {
        shared: Arc::clone(&shared),
        reload: reload.clone(),
        tracker: tracker.clone(),
        started: Instant::now(),
        rollouts,
        fleet,
    });
    if let Some(ops) = ops_listener {
        let serve = admin::serve(
            ops,
            Arc::clone(&admin_ctx),
            Surface::Ops,
            admin_signal.clone(),
        );
        tokio::spawn(serve);
    }
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_ctx,
        Surface::Admin,
        admin_signal,
    ));
    if let Some(ops) = ops_addr {
        tracing::info!(addr = %ops, "ops listener (GET /livez, /readyz, /metrics only)");
    }
    tracing::info!(admin = %admin_addr, workers = workers.len(), generation = 1, "switchyard started");

    Ok(Running {
        shared,
        reload,
        admin_addr,
        ops_addr,
        drain_timeout: config.drain_timeout,
        tracker,
        stop_reloader,
        stop_admin,
        stop_rollouts,
        stop_trace,
        reloader: reloader_task,
        trace_export,
        rollouts: rollouts_task,
        admin: admin_task,
        workers,
        _watch: watch,
    })
}

impl Running {
    /// (name, address) of every proxy listener.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.shared.listener_addrs()
    }

    /// The address of the first proxy listener.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.listeners()
            .first()
            .map(|(_, a)| *a)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Open connections and upgraded tunnels right now.
    pub fn connections(&self) -> usize {
        self.tracker.live()
    }

    /// Graceful shutdown: not ready, stop accepting, let in-flight requests finish (up to the
    /// drain timeout), then stop the admin API. Returns whether everything finished in time.
    pub async fn shutdown(self) -> bool {
        self.shared.start_draining();
        tracing::info!(connections = self.tracker.live(), timeout = ?self.drain_timeout, "draining");
        self.stop_rollouts.fire();
        let _ = self.rollouts.await;
        self.stop_reloader.fire();
        let _ = self.reloader.await;
        let drained = tokio::time::timeout(self.drain_timeout, self.tracker.wait_idle())
            .await
            .is_ok();
        if drained {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!(
                left = self.tracker.live(),
                "drain timeout; closing what is left"
            );
        }
        // The last spans (the drained requests' included) go out within their own bound.
        self.stop_trace.fire();
        let bound = self
            .shared
            .snapshot()
            .config
            .tracing
            .otlp
            .as_ref()
            .map_or(Duration::ZERO, |o| o.shutdown_timeout);
        if tokio::time::timeout(bound + Duration::from_secs(1), self.trace_export)
            .await
            .is_err()
        {
            tracing::warn!("trace export did not finish within its shutdown bound");
        }
        self.stop_admin.fire();
        let _ = self.admin.await;
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
        // Every request has ended: the access logs write what is queued, within a bound (a
        // writer stuck on a hung disk or an unread pipe must not hold the exit).
        // On a thread of its own, not the blocking pool: a runtime waits for its blocking
        // tasks when it is dropped, so a stuck close there would hold the exit for good.
        let shared = Arc::clone(&self.shared);
        let (done, closed) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("access-log-close".into())
            .spawn(move || {
                shared.access_logs.close();
                let _ = done.send(());
            });
        if spawned.is_err()
            || tokio::time::timeout(ACCESS_LOG_CLOSE, closed)
                .await
                .is_err()
        {
            tracing::warn!(
                "access log lines still queued after {ACCESS_LOG_CLOSE:?} are lost (a writer cannot write)"
            );
        }
        drained
    }
}

/// Binds the admin or ops listener (one socket: only the first worker serves them).
fn bind_control(path: &str, addr: SocketAddr) -> Result<TcpListener, ConfigErrors> {
    let error = |e: std::io::Error| ConfigErrors(vec![listener::bind_error(path, addr, &e)]);
    listener::bind(addr)
        .and_then(TcpListener::from_std)
        .map_err(error)
}

/// Runs until `shutdown` resolves, then drains. SIGHUP reloads; SIGUSR1 reopens the access logs.
pub async fn run(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ConfigErrors> {
    let running = start(opts).await?;
    let reload = running.reload.clone();
    let hup = tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            reload.trigger();
        }
    });
    let shared = Arc::clone(&running.shared);
    let usr1 = tokio::spawn(async move {
        let Ok(mut usr1) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        else {
            return;
        };
        while usr1.recv().await.is_some() {
            shared.access_logs.reopen();
        }
    });
    shutdown.await;
    hup.abort();
    usr1.abort();
    running.shutdown().await;
    Ok(())
}
