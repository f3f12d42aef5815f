//! Listening sockets: bound with socket2, reconciled on reload (new binds are bound before the
//! new config is accepted, so a port in use rejects the reload instead of half-applying it).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::runtime::Handle;

use arc_swap::ArcSwap;

use super::accept::Acceptor;
use super::conn::{self, ServeCtx};
use super::limits::{Limit, ListenerLimits, OpenConnections};
use super::shutdown::{Stop, StopTrigger, stop_pair};
use super::tls::{CertTable, FreshCerts, TlsListener};
use crate::accesslog::{ListenerLog, LogSlot, Logs, Sink};
use crate::config::model::{Listener, ListenerTls};
use crate::config::{Config, ConfigError};

const BACKLOG: i32 = 4096;

/// Binds a listening socket: SO_REUSEADDR (restarts do not wait out TIME_WAIT), TCP_NODELAY
/// (inherited by accepted sockets), a deep backlog.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind_socket(addr, false)
}

/// One socket per worker on the same address, with SO_REUSEPORT so the kernel spreads new
/// connections over the workers. A single worker gets a plain socket.
///
/// SO_REUSEPORT would also let these sockets quietly join another process's group on the same
/// address (a second switchyard, by the same user), taking half of its connections. So the
/// group is bound beside a guard socket without SO_REUSEPORT: binding the guard fails if
/// anything listens on the address, whatever its options, and the guard does not stop our own
/// group from binding while it is held (it never listens). It is dropped once the group
/// listens.
pub fn bind_group(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if workers <= 1 {
        return Ok(vec![bind_socket(addr, false)?]);
    }
    let guard = socket_for(addr)?;
    guard.bind(&addr.into())?;
    // With port 0 the guard picks the port; the group joins it.
    let local = guard
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the guard socket has no IP address"))?;
    let group = (0..workers)
        .map(|_| bind_socket(local, true))
        .collect::<io::Result<Vec<_>>>()?;
    drop(guard);
    Ok(group)
}

/// A TCP socket for `addr` with SO_REUSEADDR (restarts do not wait out TIME_WAIT), and `[::]`
/// taking IPv4 too, as users expect from "all addresses".
fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    Ok(socket)
}

fn bind_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = socket_for(addr)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A bind failure as a config error a user can act on.
pub fn bind_error(path: &str, addr: SocketAddr, e: &io::Error) -> ConfigError {
    let why = match e.kind() {
        io::ErrorKind::AddrInUse => {
            format!("{addr} is already in use by another process; stop it or choose another port")
        }
        io::ErrorKind::PermissionDenied => format!(
            "binding {addr} needs privileges (ports below 1024 need root or CAP_NET_BIND_SERVICE); choose a port above 1023"
        ),
        io::ErrorKind::AddrNotAvailable => format!(
            "no local interface has the address {}; use 0.0.0.0 or an address of this host",
            addr.ip()
        ),
        _ => format!("cannot bind {addr}: {e}"),
    };
    ConfigError::new(path, why)
}

/// Tries every bind address of `config` (listeners, admin and ops); for `check`.
pub fn check_bindable(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let admin = ("admin.bind".to_owned(), config.admin.bind);
    let ops = config.ops.as_ref().map(|o| ("ops.bind".to_owned(), o.bind));
    let listeners = config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listeners[{i}].bind"), l.bind));
    for (path, addr) in listeners.chain(std::iter::once(admin)).chain(ops) {
        if let Err(e) = bind(addr) {
            errors.push(bind_error(&path, addr, &e));
        }
    }
    errors
}

struct Running {
    spec: Listener,
    local: SocketAddr,
    stop: StopTrigger,
    /// Swapped when a reload changes the listener's `tls:`; `None` serves plain HTTP.
    tls: Arc<ArcSwapOption<TlsListener>>,
    /// Read by the accept loops once per connection; replaced when a reload changes them.
    limits: Arc<ArcSwap<ListenerLimits>>,
    /// Where the listener logs requests; a reload changes what is in it.
    log: Arc<LogSlot>,
}

/// Listeners bound for a config but not yet serving.
pub struct Prepared {
    bound: Vec<(
        Listener,
        Vec<std::net::TcpListener>,
        Option<Arc<TlsListener>>,
    )>,
    wanted: Vec<Listener>,
    /// Running listeners whose `tls:` changed, with what they serve next.
    retls: Vec<(SocketAddr, Option<Arc<TlsListener>>)>,
    /// Each wanted listener's access log, opened (in `wanted`'s order).
    logs: Vec<Option<Sink>>,
}

/// The access logs a config's listeners name, opened ahead: opening a file blocks (on a hung
/// mount, for good), so the reloader opens them in its load, off the workers.
#[derive(Default)]
pub struct OpenedLogs(Vec<Option<io::Result<Sink>>>);

impl OpenedLogs {
    /// Opens (or finds in use) the access log of every listener of `config`: a blocking call.
    /// Listeners naming one target share one writer, the first one's settings.
    pub(crate) fn open(logs: &Logs, config: &Config) -> OpenedLogs {
        let mut first: Vec<Sink> = Vec::new();
        let mut each = |l: &Listener| {
            let spec = l.access_log.as_ref()?;
            if let Some(s) = first.iter().find(|s| *s.target() == spec.target) {
                return Some(Ok(s.clone()));
            }
            let opened = logs.sink(spec);
            if let Ok(s) = &opened {
                first.push(s.clone());
            }
            Some(opened)
        };
        OpenedLogs(config.listeners.iter().map(&mut each).collect())
    }

    fn take(&mut self, listener: usize) -> Option<io::Result<Sink>> {
        self.0.get_mut(listener).and_then(Option::take)
    }
}

/// The running listeners; only the reloader changes them.
pub struct ListenerSet {
    ctx: Arc<ServeCtx>,
    /// Where accept loops run: one per worker, each on its own socket.
    workers: Vec<Handle>,
    running: Vec<Running>,
    /// Watch certificate files (with the config file's `watch`).
    watch_certs: bool,
}

impl ListenerSet {
    pub fn new(ctx: Arc<ServeCtx>, workers: Vec<Handle>) -> Self {
        ListenerSet {
            ctx,
            workers,
            running: Vec::new(),
            watch_certs: true,
        }
    }

    /// Whether TLS listeners watch their certificate files; without, they are re-read on
    /// SIGHUP and `POST /reload` only.
    pub fn with_cert_watch(mut self, watch: bool) -> Self {
        self.watch_certs = watch;
        self
    }

    /// The TLS specs of the running listeners, whose certificates a reload re-reads.
    pub fn tls_specs(&self) -> Vec<ListenerTls> {
        self.running
            .iter()
            .filter_map(|r| r.tls.load_full().map(|t| t.spec().clone()))
            .collect()
    }

    /// Puts re-read certificates into service on every TLS listener (a reload command, even
    /// when the config text is unchanged: that is how certificates are reloaded by hand).
    pub fn reload_certificates(&self, certs: &FreshCerts) {
        for r in &self.running {
            if let Some(tls) = r.tls.load_full()
                && let Some(table) = certs.get(tls.spec())
            {
                tls.apply_certificates(table);
            }
        }
    }

    /// Binds the listeners `config` adds; fails, binding nothing, if any bind fails.
    /// Certificates come from `certs`, read off the workers, and access logs from `opened`,
    /// opened off them (one missing there is opened here).
    pub fn prepare(
        &self,
        config: &Config,
        certs: &FreshCerts,
        mut opened: OpenedLogs,
    ) -> Result<Prepared, Vec<ConfigError>> {
        let mut bound = Vec::new();
        let mut retls = Vec::new();
        let mut errors = Vec::new();
        let mut logs = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let sink = l.access_log.as_ref().and_then(|spec| {
                match opened
                    .take(i)
                    .unwrap_or_else(|| self.ctx.shared.access_logs.sink(spec))
                {
                    Ok(sink) => Some(sink),
                    Err(e) => {
                        errors.push(ConfigError::new(
                            format!("listeners[{i}].access_log.path"),
                            format!("cannot open {} for appending: {e}", spec.target.label()),
                        ));
                        None
                    }
                }
            });
            logs.push(sink);
        }
        for (i, l) in config.listeners.iter().enumerate() {
            let running = self.running.iter().find(|r| r.spec.bind == l.bind);
            if running.is_some_and(|r| r.spec.tls == l.tls) {
                continue;
            }
            let tls = match &l.tls {
                Some(spec) => {
                    let started = certs
                        .get(spec)
                        .unwrap_or_else(|| CertTable::load(spec))
                        .and_then(|table| {
                            TlsListener::start(
                                spec,
                                table,
                                &self.ctx.shared,
                                &l.name,
                                self.watch_certs,
                            )
                        });
                    match started {
                        Ok(t) => Some(Arc::new(t)),
                        Err(why) => {
                            let path = format!("listeners[{i}].tls");
                            errors.extend(why.into_iter().map(|w| ConfigError::new(&path, w)));
                            continue;
                        }
                    }
                }
                None => None,
            };
            if let Some(r) = running {
                retls.push((r.spec.bind, tls));
                continue;
            }
            match bind_group(l.bind, self.workers.len()) {
                Ok(group) => bound.push((l.clone(), group, tls)),
                Err(e) => errors.push(bind_error(&format!("listeners[{i}].bind"), l.bind, &e)),
            }
        }
        if errors.is_empty() {
            Ok(Prepared {
                bound,
                wanted: config.listeners.clone(),
                retls,
                logs,
            })
        } else {
            Err(errors)
        }
    }

    /// Starts what `prepare` bound and stops listeners the config no longer has. Their open
    /// connections finish their requests first.
    pub fn commit(&mut self, p: Prepared) {
        let log_of = |w: &Listener| {
            let i = p.wanted.iter().position(|x| x.bind == w.bind)?;
            let sink = p.logs.get(i)?.clone()?;
            Some(ListenerLog {
                sink,
                listener: Arc::from(w.name.as_str()),
            })
        };
        self.running
            .retain_mut(|r| match p.wanted.iter().find(|w| w.bind == r.spec.bind) {
                Some(w) => {
                    if w.name != r.spec.name || w.limits != r.spec.limits {
                        let counters = self.ctx.shared.limit_stats.counters(&w.name);
                        r.limits.store(Arc::new(
                            ListenerLimits::new(w.limits, counters).with_access_log(&r.log),
                        ));
                    }
                    if w.name != r.spec.name || w.access_log != r.spec.access_log {
                        r.log.set(log_of(w));
                    }
                    r.spec.name.clone_from(&w.name);
                    r.spec.limits = w.limits;
                    r.spec.access_log.clone_from(&w.access_log);
                    if let Some((_, tls)) = p.retls.iter().find(|(b, _)| *b == r.spec.bind) {
                        tracing::info!(listener = %w.name, tls = tls.is_some(), "listener TLS changed");
                        r.tls.store(tls.clone());
                        r.spec.tls.clone_from(&w.tls);
                    }
                    true
                }
                None => {
                    tracing::info!(listener = %r.spec.name, addr = %r.local, "listener removed");
                    r.stop.fire();
                    false
                }
            });
        for (spec, group, tls) in p.bound {
            let tls = Arc::new(ArcSwapOption::new(tls));
            let local = group
                .first()
                .and_then(|s| s.local_addr().ok())
                .unwrap_or(spec.bind);
            let (stop, signal) = stop_pair();
            tracing::info!(listener = %spec.name, addr = %local, workers = group.len(), "listening");
            let counters = self.ctx.shared.limit_stats.counters(&spec.name);
            let log = Arc::new(LogSlot::default());
            log.set(log_of(&spec));
            let limits = Arc::new(ArcSwap::from_pointee(
                ListenerLimits::new(spec.limits, Arc::clone(&counters)).with_access_log(&log),
            ));
            let open = Arc::new(OpenConnections::default());
            for (socket, worker) in group.into_iter().zip(&self.workers) {
                let ctx = Arc::clone(&self.ctx);
                let signal = signal.clone();
                let name = spec.name.clone();
                let tls = Arc::clone(&tls);
                let limits = Arc::clone(&limits);
                let open = Arc::clone(&open);
                let acceptor = Acceptor::new(&spec.name, Arc::clone(&counters.accept));
                // Registered with the worker's own reactor, so it must happen on that worker.
                worker.spawn(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => {
                            accept_loop(listener, ctx, limits, open, signal, tls, acceptor).await;
                        }
                        Err(e) => tracing::error!(listener = %name, error = %e, "cannot register listener"),
                    }
                });
            }
            self.running.push(Running {
                spec,
                local,
                stop,
                tls,
                limits,
                log,
            });
        }
        self.ctx
            .shared
            .access_logs
            .keep(p.logs.into_iter().flatten());
    }

    /// (name, local address) of every running listener, in start order.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.running
            .iter()
            .map(|r| (r.spec.name.clone(), r.local))
            .collect()
    }

    /// Stops accepting everywhere and tells every connection to finish.
    pub fn stop_all(&mut self) {
        for r in self.running.drain(..) {
            r.stop.fire();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ServeCtx>,
    limits: Arc<ArcSwap<ListenerLimits>>,
    open: Arc<OpenConnections>,
    mut stop: Stop,
    tls: Arc<ArcSwapOption<TlsListener>>,
    mut acceptor: Acceptor,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.wait() => break,
            a = acceptor.next(&listener) => a,
        };
        let limits = limits.load_full();
        // Over the cap: accepted (so the client is not left in the backlog) and closed.
        let Some(slot) = open.try_open(limits.spec.max_connections) else {
            limits.counters.hit(Limit::MaxConnections);
            tracing::debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        if let Some(tls) = tls.load_full() {
            tokio::spawn(super::tls::serve(
                tls,
                stream,
                peer,
                Arc::clone(&ctx),
                limits,
                slot,
                stop.clone(),
            ));
            continue;
        }
        tokio::spawn(conn::serve(
            stream,
            peer,
            "http",
            Arc::clone(&ctx),
            limits,
            slot,
            stop.clone(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_naming_one_new_log_share_one_writer_with_the_first_ones_settings() {
        let dir = std::env::temp_dir().join(format!("sy-listener-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shared.log");
        let p = path.display();
        let config = crate::config::parse_str(&format!(
            "listeners:\n\
             - {{bind: '127.0.0.1:0', access_log: {{path: '{p}', flush_interval: 2s}}}}\n\
             - {{bind: '127.0.0.1:0', access_log: {{path: '{p}', flush_interval: 5s}}}}\n\
             upstreams: {{u: {{backends: ['127.0.0.1:9']}}}}\n\
             routes: [{{name: r, split: [{{upstream: u, weight: 1}}]}}]\n"
        ))
        .unwrap();
        let logs = Logs::default();
        let mut opened = OpenedLogs::open(&logs, &config);
        let a = opened.take(0).unwrap().unwrap();
        let b = opened.take(1).unwrap().unwrap();
        assert!(a.shares_writer_with(&b), "two writers on one new file");
        logs.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
