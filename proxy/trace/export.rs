//! Export: finished requests' spans go into a bounded queue and a task of their own batches them
//! to the collector over OTLP/HTTP (protobuf).
//!
//! The request path only ever calls [`Tracer::submit`]: an atomic add and a channel push, or,
//! when the queue already holds `queue_size` spans, a counted drop. It never waits for the
//! collector, whatever the collector does: a dead, slow or refusing collector costs requests
//! nothing but the spans dropped (`switchyard_trace_spans_dropped_total`).
//!
//! The task sends a batch when it holds `batch_size` spans or its oldest span has waited
//! `flush_interval`. A batch the collector could not take for a reason worth retrying (no
//! connection, a timeout, 429, 502, 503, 504, as OTLP/HTTP names them) is sent again after a
//! backoff (doubling from 1 s, or the collector's `Retry-After`), up to [`MAX_TRIES`] times;
//! meanwhile the queue fills and overflows into the drop count. On shutdown the task sends what
//! is queued within `shutdown_timeout`, once per batch, and counts the rest as dropped.
//! Settings come from the config in force, read again after every reload.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::Recording;
use super::otlp::{self, Resource};
use super::span::WallClock;
use crate::config::model::{Otlp, Tracing};

/// Sends of one batch, the first included, before it is given up.
pub const MAX_TRIES: u32 = 5;
/// The first backoff; it doubles after every retryable failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two sends, `Retry-After` included.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A collector's answer is read up to this size (it is a short protobuf message).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why spans were dropped instead of exported (`reason` label of the drop counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue already held `queue_size` spans when a request finished.
    QueueFull,
    /// The collector could not be reached or refused the batch, after every retry.
    ExportFailed,
    /// The collector took the batch but said it rejected these spans (a partial success).
    Rejected,
    /// Still queued when the shutdown bound ran out.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::ExportFailed,
        DropReason::Rejected,
        DropReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// The export queue and its counters: one per process, kept across reloads.
#[derive(Debug)]
pub struct Tracer {
    tx: mpsc::UnboundedSender<Box<Recording>>,
    pub(super) rx: Mutex<Option<mpsc::UnboundedReceiver<Box<Recording>>>>,
    /// Spans in the queue; the channel is unbounded, this count bounds it.
    queued: AtomicUsize,
    /// Woken when the queue reaches a batch: the exporter otherwise sleeps until its next
    /// tick, so that a request's spans do not wake it each time.
    full: Notify,
    exported: AtomicU64,
    dropped: [AtomicU64; 4],
}

impl Default for Tracer {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Tracer {
            tx,
            rx: Mutex::new(Some(rx)),
            queued: AtomicUsize::new(0),
            full: Notify::new(),
            exported: AtomicU64::new(0),
            dropped: Default::default(),
        }
    }
}

impl Tracer {
    /// Queues a finished request's spans, unless `queue_size` spans are queued already; never
    /// waits. The exporter is woken when the queue reaches `batch_size`.
    pub(crate) fn submit(&self, spans: Box<Recording>, queue_size: usize, batch_size: usize) {
        let n = spans.spans.span_count();
        let before = self.queued.fetch_add(n, Relaxed);
        if before + n > queue_size {
            self.queued.fetch_sub(n, Relaxed);
            self.drop_spans(DropReason::QueueFull, n as u64);
            return;
        }
        if let Err(e) = self.tx.send(spans) {
            // Only when the export task is gone (shutting down).
            self.queued.fetch_sub(n, Relaxed);
            self.drop_spans(DropReason::Shutdown, e.0.spans.span_count() as u64);
            return;
        }
        if before < batch_size && before + n >= batch_size {
            self.full.notify_one();
        }
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Relaxed)
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Relaxed)
    }

    /// Spans waiting in the queue right now.
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    /// The oldest request's spans in the queue, taken out as the exporter would.
    #[cfg(test)]
    pub(crate) fn next_queued(&self) -> Option<Box<Recording>> {
        let mut rx = self.rx.lock().ok()?;
        let r = rx.as_mut()?.try_recv().ok()?;
        self.queued.fetch_sub(r.spans.span_count(), Relaxed);
        Some(r)
    }

    fn drop_spans(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Relaxed);
    }

    /// Starts the export task; `settings` reads the tracing config in force, and is read again
    /// whenever `reloads` changes. Resolves once `stop` fired and the last spans were sent (or
    /// `shutdown_timeout` ran out). Only the first call gets the queue; a second returns at once.
    pub fn run<T, F>(
        self: &Arc<Self>,
        settings: F,
        reloads: watch::Receiver<T>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        T: Send + Sync + 'static,
        F: Fn() -> Tracing + Send + 'static,
    {
        let stop: StopSignal = Box::pin(stop);
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let tracer = Arc::clone(self);
        async move {
            if let Some(rx) = rx {
                Exporter {
                    tracer,
                    rx,
                    client: None,
                    failing: false,
                }
                .run(settings, reloads, stop)
                .await;
            }
        }
    }
}

/// Fires once, when the exporter is to send what is left and end (polled until then only).
type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Exporter {
    tracer: Arc<Tracer>,
    rx: mpsc::UnboundedReceiver<Box<Recording>>,
    client: Option<Client>,
    /// The last export failed: logged once, until one succeeds again.
    failing: bool,
}

/// What a batch came to.
enum Sent {
    Done,
    /// `stop` fired while waiting to retry: the batch goes to the final flush.
    Stopped(Batch),
}

#[derive(Default)]
struct Batch {
    /// Boxed as they came through the queue: moving a box, not a request's few hundred bytes.
    #[allow(clippy::vec_box)]
    requests: Vec<Box<Recording>>,
    spans: usize,
}

impl Batch {
    fn push(&mut self, r: Box<Recording>) {
        self.spans += r.spans.span_count();
        self.requests.push(r);
    }

    fn take(&mut self) -> Batch {
        std::mem::take(self)
    }
}

impl Exporter {
    async fn run<T, F>(mut self, settings: F, mut reloads: watch::Receiver<T>, mut stop: StopSignal)
    where
        F: Fn() -> Tracing,
    {
        let mut config = settings();
        let mut batch = Batch::default();
        let mut reloading = true;
        let mut tick = Instant::now() + interval(&config);
        loop {
            // Woken by a full batch, or at a tick: what waited at most `flush_interval` goes.
            let ticked = tokio::select! {
                biased;
                () = stop.as_mut() => break,
                changed = reloads.changed(), if reloading => {
                    reloading = changed.is_ok();
                    config = settings();
                    tick = tick.min(Instant::now() + interval(&config));
                    false
                }
                () = self.tracer.full.notified() => false,
                () = tokio::time::sleep_until(tick) => {
                    tick = Instant::now() + interval(&config);
                    true
                }
            };
            let Some(otlp) = config.otlp.clone() else {
                // Export is off (turned off by a reload): what waited has nowhere to go.
                let mut gone = batch.take().spans;
                while let Ok(r) = self.rx.try_recv() {
                    self.tracer.queued.fetch_sub(r.spans.span_count(), Relaxed);
                    gone += r.spans.span_count();
                }
                self.tracer
                    .drop_spans(DropReason::ExportFailed, gone as u64);
                continue;
            };
            while let Ok(r) = self.rx.try_recv() {
                self.tracer.queued.fetch_sub(r.spans.span_count(), Relaxed);
                batch.push(r);
                if batch.spans >= otlp.batch_size
                    && let Sent::Stopped(b) =
                        self.send(&config, &otlp, batch.take(), &mut stop).await
                {
                    batch = b;
                    return self.flush(settings(), batch).await;
                }
            }
            if ticked
                && let Sent::Stopped(b) = self.send(&config, &otlp, batch.take(), &mut stop).await
            {
                batch = b;
                break;
            }
        }
        self.flush(settings(), batch).await;
    }

    /// Sends whatever is left within `shutdown_timeout`, each batch once.
    async fn flush(mut self, config: Tracing, mut batch: Batch) {
        while let Ok(r) = self.rx.try_recv() {
            self.tracer.queued.fetch_sub(r.spans.span_count(), Relaxed);
            batch.push(r);
        }
        self.rx.close();
        let Some(otlp) = config.otlp.clone() else {
            self.tracer
                .drop_spans(DropReason::Shutdown, batch.spans as u64);
            return;
        };
        let deadline = Instant::now() + otlp.shutdown_timeout;
        let resource = resource(&config);
        let mut requests = batch.requests.into_iter().peekable();
        while requests.peek().is_some() {
            let chunk = take_spans(&mut requests, otlp.batch_size);
            let n: usize = chunk.iter().map(|r| r.spans.span_count()).sum();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.tracer.drop_spans(DropReason::Shutdown, n as u64);
                continue;
            }
            let body = Bytes::from(otlp::encode(
                &resource,
                &WallClock::now(),
                chunk.iter().map(|r| &r.spans),
            ));
            match self.post(&otlp, body, left.min(otlp.timeout)).await {
                Ok(rejected) => self.accepted(n, rejected),
                Err(_) => self.tracer.drop_spans(DropReason::Shutdown, n as u64),
            }
        }
    }

    /// Sends one batch, retrying with backoff; gives up after [`MAX_TRIES`] or on a refusal
    /// that a retry cannot fix.
    async fn send(
        &mut self,
        config: &Tracing,
        otlp: &Arc<Otlp>,
        batch: Batch,
        stop: &mut StopSignal,
    ) -> Sent {
        if batch.spans == 0 {
            return Sent::Done;
        }
        let body = Bytes::from(otlp::encode(
            &resource(config),
            &WallClock::now(),
            batch.requests.iter().map(|r| &r.spans),
        ));
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_TRIES {
            // A send in progress does not hold up shutdown: the batch goes to the final flush.
            let sent = tokio::select! {
                biased;
                () = stop.as_mut() => return Sent::Stopped(batch),
                sent = self.post(otlp, body.clone(), otlp.timeout) => sent,
            };
            let failure = match sent {
                Ok(rejected) => {
                    self.accepted(batch.spans, rejected);
                    return Sent::Done;
                }
                Err(f) => f,
            };
            if !self.failing {
                tracing::warn!(endpoint = %otlp.endpoint, error = %failure.why, "trace export failed; spans are dropped (and counted) while it fails");
                self.failing = true;
            }
            let wait = match failure.retry {
                Retry::No => break,
                Retry::After(after) => after.min(MAX_BACKOFF),
                Retry::Backoff => backoff,
            };
            if attempt == MAX_TRIES {
                break;
            }
            tokio::select! {
                biased;
                () = stop.as_mut() => return Sent::Stopped(batch),
                () = tokio::time::sleep(jitter(wait)) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.tracer
            .drop_spans(DropReason::ExportFailed, batch.spans as u64);
        Sent::Done
    }

    fn accepted(&mut self, spans: usize, rejected: u64) {
        let rejected = rejected.min(spans as u64);
        self.tracer
            .exported
            .fetch_add(spans as u64 - rejected, Relaxed);
        if rejected > 0 {
            self.tracer.drop_spans(DropReason::Rejected, rejected);
        }
        if self.failing {
            tracing::info!("trace export works again");
            self.failing = false;
        }
    }

    /// One POST of a batch: the spans the collector rejected, or why it failed.
    async fn post(
        &mut self,
        otlp: &Arc<Otlp>,
        body: Bytes,
        limit: Duration,
    ) -> Result<u64, Failure> {
        let exchange = async {
            let client = match self.client.take() {
                Some(c) if Arc::ptr_eq(&c.otlp, otlp) && c.sender.is_ready() => c,
                _ => Client::connect(otlp).await?,
            };
            let mut client = client;
            let resp = client
                .sender
                .send_request(request(otlp, body))
                .await
                .map_err(|e| Failure::retry(format!("the exchange failed: {e}")))?;
            let (parts, body) = resp.into_parts();
            let read = Limited::new(body, MAX_RESPONSE_BYTES).collect().await;
            let body = read
                .map_err(|e| Failure::retry(format!("reading the answer failed: {e}")))?
                .to_bytes();
            // Kept for the next batch only once its answer was read whole.
            self.client = Some(client);
            Ok((parts, body))
        };
        let (parts, body) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| Failure::retry(format!("no answer within {limit:?}")))??;
        if parts.status.is_success() {
            return Ok(otlp::rejected_spans(&body));
        }
        let why = format!("the collector answered {}", parts.status);
        Err(match parts.status {
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Failure {
                why,
                retry: retry_after(parts.headers.get(header::RETRY_AFTER))
                    .map_or(Retry::Backoff, Retry::After),
            },
            _ => Failure {
                why,
                retry: Retry::No,
            },
        })
    }
}

#[allow(clippy::vec_box)]
fn take_spans(
    requests: &mut std::iter::Peekable<impl Iterator<Item = Box<Recording>>>,
    max: usize,
) -> Vec<Box<Recording>> {
    let mut chunk = Vec::new();
    let mut spans = 0;
    while let Some(r) = requests.next_if(|r| spans == 0 || spans + r.spans.span_count() <= max) {
        spans += r.spans.span_count();
        chunk.push(r);
    }
    chunk
}

/// How often the exporter looks at the queue: `flush_interval`, or once a second when export
/// is off (there is nothing to do then, but a reload may turn it on).
fn interval(config: &Tracing) -> Duration {
    config
        .otlp
        .as_ref()
        .map_or(Duration::from_secs(1), |o| o.flush_interval)
}

/// ±20 %, so that the replicas of a fleet do not retry against a recovering collector in step.
fn jitter(d: Duration) -> Duration {
    let r = super::ids::span_id().0[0];
    d.mul_f64(0.8 + 0.4 * f64::from(r) / 255.0)
}

fn resource(config: &Tracing) -> Resource {
    Resource {
        service_name: config.service_name.clone(),
        instance: config.instance.clone(),
    }
}

/// `Retry-After` in seconds (the form collectors send); a date is not worth parsing here.
fn retry_after(v: Option<&HeaderValue>) -> Option<Duration> {
    let secs: u64 = v?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

fn request(otlp: &Otlp, body: Bytes) -> Request<Full<Bytes>> {
    let len = body.len();
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from(otlp.path.clone());
    let h = req.headers_mut();
    if let Ok(host) = HeaderValue::from_str(otlp.address.as_str()) {
        h.insert(header::HOST, host);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    for (k, v) in &otlp.headers {
        h.insert(k.clone(), v.clone());
    }
    req
}

#[derive(Debug)]
struct Failure {
    why: String,
    retry: Retry,
}

impl Failure {
    fn retry(why: String) -> Failure {
        Failure {
            why,
            retry: Retry::Backoff,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Retry {
    No,
    Backoff,
    After(Duration),
}

/// One kept-alive connection to the collector (batches go one at a time).
struct Client {
    otlp: Arc<Otlp>,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(otlp: &Arc<Otlp>) -> Result<Client, Failure> {
        let addr = &otlp.address;
        let cannot =
            |e: std::io::Error| Failure::retry(format!("cannot connect to {}: {e}", addr.as_str()));
        let port = addr.authority.port_u16().unwrap_or(80);
        let host = addr
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = TcpStream::connect((host, port)).await.map_err(cannot)?;
        let _ = stream.set_nodelay(true);
        let sender = match &otlp.tls {
            None => handshake(stream).await?,
            Some(tls) => {
                let stream = crate::backend::tls::connect(tls, addr, stream)
                    .await
                    .map_err(cannot)?;
                handshake(stream).await?
            }
        };
        Ok(Client {
            otlp: Arc::clone(otlp),
            sender,
        })
    }
}

async fn handshake<S>(stream: S) -> Result<http1::SendRequest<Full<Bytes>>, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::retry(format!("the HTTP handshake failed: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "trace collector connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::ServerSpan;

    fn spans(tries: usize) -> Box<Recording> {
        let server = ServerSpan {
            trace_id: crate::trace::ids::trace_id(),
            span_id: crate::trace::ids::span_id(),
            parent: None,
            sampled: true,
            trace_state: None,
            start: tokio::time::Instant::now(),
            end: tokio::time::Instant::now(),
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            scheme: "http",
            version: http::Version::HTTP_11,
            host: None,
            user_agent: None,
            peer: "127.0.0.1:1".parse().unwrap(),
            status: 200,
            route: None,
            upstream: None,
            backend: None,
            error: None,
            flags: None,
        };
        let tries = (0..tries)
            .map(|i| crate::trace::span::ClientSpan {
                span_id: crate::trace::ids::span_id(),
                start: tokio::time::Instant::now(),
                end: tokio::time::Instant::now(),
                upstream: Arc::from("u"),
                backend: crate::config::validate::backend_addr("127.0.0.1:9").unwrap(),
                tls: false,
                status: Some(200),
                version: Some(http::Version::HTTP_11),
                outcome: "success",
                error: None,
                resend: i as u32,
            })
            .collect();
        Box::new(Recording {
            tracer: Arc::default(),
            queue_size: 0,
            batch_size: 0,
            spans: crate::trace::span::RequestSpans { server, tries },
        })
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let t = Tracer::default();
        t.submit(spans(1), 5, 5);
        t.submit(spans(2), 5, 5);
        assert_eq!(t.queued(), 5);
        t.submit(spans(0), 5, 5);
        assert_eq!(t.dropped(DropReason::QueueFull), 1);
        assert_eq!(t.queued(), 5);
    }

    #[test]
    fn batches_split_on_whole_requests() {
        let reqs = vec![spans(1), spans(1), spans(2), spans(0)];
        let mut it = reqs.into_iter().peekable();
        let sizes: Vec<usize> = std::iter::from_fn(|| {
            let c = take_spans(&mut it, 4);
            (!c.is_empty()).then(|| c.iter().map(|r| r.spans.span_count()).sum())
        })
        .collect();
        // 2+2, then 3+1: a request's spans are never split, and a large one still goes alone.
        assert_eq!(sizes, [4, 4]);
        let mut big = vec![spans(9)].into_iter().peekable();
        assert_eq!(take_spans(&mut big, 4).len(), 1);
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let v = HeaderValue::from_static("7");
        assert_eq!(retry_after(Some(&v)), Some(Duration::from_secs(7)));
        let d = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(retry_after(Some(&d)), None);
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(j >= Duration::from_secs(8) && j <= Duration::from_secs(12));
        }
    }
}
