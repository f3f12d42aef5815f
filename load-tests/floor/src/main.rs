//! floor: a minimal HTTP/1.1 keep-alive reverse proxy on tokio with its own codec (httparse),
//! correct for plain proxied traffic, to measure what the protocol work and the runtime cost
//! per request. Not part of switchyard; it leaves out Upgrade, HTTP/1.0 keep-alive, routing and
//! everything else a product needs. See load-tests/floor.sh.
//!
//!   floor LISTEN UPSTREAM                 e.g. floor 127.0.0.1:18085 127.0.0.1:18081
//!   floor run -c CONFIG.yaml [ignored]    the first listener's bind and the first backend of
//!                                         a switchyard config, so load-tests/callgrind.sh can
//!                                         start it with BIN=
//!   FLOOR_TIMEOUTS=tokio|coarse|off       how waits are bounded (timer.rs); default tokio
#![forbid(unsafe_code)]

mod buf;
mod conn;
mod framing;
mod head;
mod pool;
mod relay;
mod timer;

use std::net::SocketAddr;

use tokio::net::TcpListener;

use conn::Config;
use timer::{Mode, Timer};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream) = match addresses(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("floor: {e}\nusage: floor LISTEN UPSTREAM | floor run -c CONFIG.yaml");
            std::process::exit(2);
        }
    };
    let timers = match std::env::var("FLOOR_TIMEOUTS").as_deref() {
        Ok("off") => Mode::Off,
        Ok("coarse") => Mode::Coarse,
        _ => Mode::Tokio,
    };
    let mut rt = tokio::runtime::Builder::new_current_thread();
    rt.enable_io();
    if timers == Mode::Tokio {
        rt.enable_time();
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor: runtime: {e}");
            std::process::exit(1);
        }
    };
    let cfg: &'static Config = Box::leak(Box::new(Config { upstream, timers }));
    if let Err(e) = rt.block_on(accept(listen, cfg)) {
        eprintln!("floor: {listen}: {e}");
        std::process::exit(1);
    }
}

async fn accept(listen: SocketAddr, cfg: &'static Config) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    if cfg.timers == Mode::Coarse {
        timer::start_sweeper()?;
    }
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                let timer = Timer::new(cfg.timers);
                let task = tokio::spawn(conn::serve(s, peer, cfg, timer.clone()));
                timer.watch(task.abort_handle());
            }
            // Out of descriptors and the like: the listener stays, the next accept may work.
            Err(e) => eprintln!("floor: accept: {e}"),
        }
    }
}

fn addresses(args: &[String]) -> Result<(SocketAddr, SocketAddr), String> {
    let (listen, upstream) = match args {
        [cmd, flag, path, ..] if cmd == "run" && flag == "-c" => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            from_config(&text).ok_or(format!("{path}: no listeners[0].bind or backend"))?
        }
        [listen, upstream] => (listen.clone(), upstream.clone()),
        _ => return Err("expected two addresses".into()),
    };
    let parse = |a: &str| a.parse().map_err(|e| format!("{a}: {e}"));
    Ok((parse(&listen)?, parse(&upstream)?))
}

/// The first quoted `bind:` after `listeners` and the first quoted address after `backends:`,
/// which is all the configs load-tests/callgrind.sh and bench/ab.sh users write need.
fn from_config(text: &str) -> Option<(String, String)> {
    let listeners = &text[text.find("listeners")?..];
    Some((
        quoted_after(listeners, "bind:")?,
        quoted_after(text, "backends:")?,
    ))
}

fn quoted_after(text: &str, key: &str) -> Option<String> {
    let rest = &text[text.find(key)? + key.len()..];
    let open = rest.find(['\'', '"'])?;
    let quote = &rest[open..open + 1];
    let rest = &rest[open + 1..];
    Some(rest[..rest.find(quote)?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_callgrind_harness_config() {
        let text = "listeners: [{bind: '127.0.0.1:4000' }]\nadmin: {bind: '127.0.0.1:4001'}\n\
                    upstreams: { u: { backends: ['127.0.0.1:4002'] } }\n";
        assert_eq!(
            from_config(text),
            Some(("127.0.0.1:4000".into(), "127.0.0.1:4002".into()))
        );
    }
}
