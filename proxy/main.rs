//! The `switchyard` command line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use http::Method;
use switchyard::app::{self, Options};
use switchyard::reload::ConfigSource;
use switchyard::{admin, config, demo, server};

/// jemalloc instead of glibc's malloc. glibc keeps what a thread freed inside that thread's
/// arena: after 10,000 keep-alive connections closed, RSS stayed at 300-400 MB. jemalloc's
/// background thread hands freed pages back to the kernel within seconds (`background_threads`
/// feature), and it held idle connections in less memory than mimalloc in
/// load-tests/idle-conns.sh.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A traffic-splitting reverse proxy: weighted, sticky and canary pools with hot reload."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// For commands that call the admin API (--admin): a file holding its bearer token
    /// (admin.token_file of the running switchyard). Default: SWITCHYARD_ADMIN_TOKEN.
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file; it reloads when the file changes, on SIGHUP and on
    /// POST /reload; SIGUSR1 reopens the access logs.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Do not watch the config file (reload only on SIGHUP or POST /reload).
        #[arg(long)]
        no_watch: bool,
        /// Worker threads (default: TOKIO_WORKER_THREADS, else one per CPU).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a config file: print every error with its YAML path, exit 1 on any.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Skip trying to bind the listener and admin addresses (for example while the
        /// running switchyard holds them).
        #[arg(long)]
        skip_bind: bool,
    },
    /// Start built-in blue and green backends and a proxy splitting 90/10 between them.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Worker threads (default: TOKIO_WORKER_THREADS, else one per CPU).
        #[arg(long)]
        workers: Option<usize>,
        /// Also run a canary rollout of green (10 -> 25 -> 50 -> 100 %) driven by its gates.
        #[arg(long)]
        rollout: bool,
    },
    /// Show what a running switchyard is doing (its /status), or one route's rollout.
    Status {
        /// A route: show its rollout (GET /rollouts/ROUTE) instead.
        route: Option<String>,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Move a route's rollout to its next step now (or finish it).
    Promote {
        route: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Hold a route's rollout at its step.
    Pause {
        route: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Continue a paused rollout.
    Resume {
        route: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Roll a route's rollout back to stable now.
    Abort {
        route: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // notify logs its own bookkeeping when a watched directory is deleted (the watcher
        // re-arms, see reload::watcher): not news for an operator.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Worker 0: the control plane and a share of the traffic (see server::workers).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &cli.token_file
        && let Err(e) = admin::client::use_token_file(path)
    {
        eprintln!("switchyard: --token-file: {e}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(dispatch(cli.command));
    // Blocking tasks still running (a read of a config file on a hung mount) must not hold
    // the exit: every bound of a graceful stop has passed by now.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            no_watch,
            workers,
        } => {
            let opts = Options {
                source: ConfigSource::File(config.clone()),
                watch: !no_watch,
                workers: workers.unwrap_or_else(server::workers::default_count),
            };
            serve(opts, &config.display().to_string()).await
        }
        Command::Check { config, skip_bind } => Ok(check(&config, skip_bind)),
        Command::Demo {
            listen,
            admin,
            workers,
            rollout,
        } => {
            run_demo(
                listen,
                admin,
                workers.unwrap_or_else(server::workers::default_count),
                rollout,
            )
            .await
        }
        Command::Status { route, admin } => {
            let path = route.map_or_else(|| "/status".to_owned(), |r| format!("/rollouts/{r}"));
            admin_call(admin, Method::GET, &path).await
        }
        Command::Promote { route, admin } => rollout_op(admin, &route, "promote").await,
        Command::Pause { route, admin } => rollout_op(admin, &route, "pause").await,
        Command::Resume { route, admin } => rollout_op(admin, &route, "resume").await,
        Command::Abort { route, admin } => rollout_op(admin, &route, "abort").await,
    }
}

async fn rollout_op(admin: SocketAddr, route: &str, op: &str) -> anyhow::Result<ExitCode> {
    admin_call(admin, Method::POST, &format!("/rollouts/{route}/{op}")).await
}

/// Prints the admin API's answer; exits 1 unless it is a 200.
async fn admin_call(admin: SocketAddr, method: Method, path: &str) -> anyhow::Result<ExitCode> {
    let (status, body) = admin::client::call(admin, method, path)
        .await
        .map_err(anyhow::Error::msg)?;
    println!("{body}");
    Ok(if status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn serve(opts: Options, what: &str) -> anyhow::Result<ExitCode> {
    match app::run(opts, terminated()).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(errors) => {
            eprintln!("switchyard: cannot start with {what}: {errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn check(path: &std::path::Path, skip_bind: bool) -> ExitCode {
    let errors = match config::load_file(path) {
        Ok((c, _)) if skip_bind => {
            print_ok(path, &c);
            return ExitCode::SUCCESS;
        }
        Ok((c, _)) => {
            let errors = server::listener::check_bindable(&c);
            if errors.is_empty() {
                print_ok(path, &c);
                return ExitCode::SUCCESS;
            }
            errors
        }
        Err(e) => e.0,
    };
    eprintln!("{}: {}", path.display(), config::ConfigErrors(errors));
    ExitCode::FAILURE
}

fn print_ok(path: &std::path::Path, c: &config::Config) {
    let backends: usize = c.upstreams.iter().map(|u| u.backends.len()).sum();
    let discovered = c.upstreams.iter().filter(|u| u.discover.is_some()).count();
    let discovered = match discovered {
        0 => String::new(),
        n => format!(", {n} discovered by DNS"),
    };
    println!(
        "{}: OK ({} listeners, {} routes, {} upstreams, {} backends{discovered})",
        path.display(),
        c.listeners.len(),
        c.routes.len(),
        c.upstreams.len(),
        backends
    );
}

async fn run_demo(
    listen: SocketAddr,
    admin_addr: SocketAddr,
    workers: usize,
    rollout: bool,
) -> anyhow::Result<ExitCode> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let blue = demo::color_backend("blue", any)
        .await
        .context("starting the blue backend")?;
    let green = demo::color_backend("green", any)
        .await
        .context("starting the green backend")?;
    let path = demo::config_path().context("creating the demo config directory")?;
    let mut text = demo::config_text(listen, admin_addr, blue, green);
    if rollout {
        let state = path.with_file_name("state");
        text.push_str(&demo::rollout_text(&state));
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "\nswitchyard demo\n\
         \x20 proxy     http://{listen}/   (90% blue, 10% green)\n\
         \x20 admin     http://{admin_addr}/status   /metrics\n\
         \x20 backends  blue {blue}, green {green}\n\
         \x20 config    {}   (edit the weights and save: it reloads live)\n\n\
         Try:\n\
         \x20 for i in $(seq 20); do curl -s http://{listen}/; done | sort | uniq -c\n\
         \x20 curl -s -H 'x-user-id: alice' http://{listen}/        # the same user keeps one color\n\
         \x20 curl -s -H 'x-switchyard-upstream: green' http://{listen}/\n",
        path.display()
    );
    if rollout {
        println!(
            "Canary rollout of green: 10 -> 25 -> 50 -> 100 %, a step every 10 s once green has\n\
             20 requests at it. Keep traffic flowing (the loop above, in a `while true`) and watch:\n\
             \x20 {} status demo --admin {admin_addr}\n\
             Make green fail and see it rolled back within a second:\n\
             \x20 for i in $(seq 200); do curl -s -H '{}: 1' http://{listen}/; done\n",
            cli_command(),
            demo::DEMO_FAIL_HEADER
        );
    }
    let opts = Options {
        source: ConfigSource::File(path.clone()),
        watch: true,
        workers,
    };
    let code = serve(opts, &path.display().to_string()).await;
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    code
}

/// How to run this CLI again: `switchyard` when that is on the PATH, else the path of this
/// executable (after `cargo run`, nothing put `switchyard` on the PATH).
fn cli_command() -> String {
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("switchyard").is_file())
    });
    if on_path {
        return "switchyard".to_owned();
    }
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "switchyard".to_owned())
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
