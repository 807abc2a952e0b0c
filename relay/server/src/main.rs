//! `chappe-relay`: the Chappe relay daemon.
//!
//! - [`config`]: the TOML file, defaults, validation.
//! - [`keys`]: the relay's Noise and TLS keys in the state directory.
//! - [`hardening`]: no core dumps, non-dumpable, before any key is read.
//! - [`endpoint`]: QUIC/TLS policy and the accept loop.
//! - [`session`]: per connection, the Noise handshake then an owner or
//!   sender session (the protocol logic itself is `chappe-proto`).
//! - [`router`]: live push from a sender's commit to the owner's session.
//! - [`relay`]: the shared state; [`metrics`] and [`http`] expose it.
//! - [`shutdown`]: the SIGTERM signal every task listens to.
#![forbid(unsafe_code)]

mod config;
mod endpoint;
mod hardening;
mod http;
mod keys;
mod metrics;
mod relay;
mod router;
mod session;
mod shutdown;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use config::Config;

#[derive(Parser)]
#[command(name = "chappe-relay", version, about = "Chappe sealed-sender relay")]
struct Cli {
    /// Config file (TOML). Without one, the embedded defaults: loopback only,
    /// state in ./chappe-data.
    #[arg(long, short, global = true, env = "CHAPPE_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `state_dir` from the config.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Overrides `listen` (QUIC, udp) from the config.
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Overrides `metrics.listen` from the config.
    #[arg(long, global = true)]
    metrics_listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default): create keys if missing, print the descriptor, run.
    Serve,
    /// Create the state directory and keys (never overwrites existing ones).
    Init,
    /// Print the relay descriptor clients pin.
    Descriptor,
    /// Validate the config and exit (non-zero with the reason if invalid).
    CheckConfig,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let text = match &cli.config {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read config file {}", p.display()))?,
        None => String::new(),
    };
    let overrides = config::Overrides {
        state_dir: cli.state_dir.clone(),
        listen: cli.listen.clone(),
        metrics_listen: cli.metrics_listen.clone(),
    };
    Ok(Config::from_toml(&text, cli.config.as_deref(), &overrides)?)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAPPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = hardening::apply() {
        eprintln!("chappe-relay: cannot disable core dumps: {e}");
        return ExitCode::FAILURE;
    }
    let result = load_config(&cli).and_then(|cfg| match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            for w in &cfg.warnings {
                println!("warning: {w}");
            }
            println!(
                "config ok: listen {} (udp), state {}, metrics {}",
                cfg.listen,
                cfg.state_dir.display(),
                cfg.metrics_listen
                    .map_or("off".to_string(), |m| m.to_string())
            );
            Ok(())
        }
        Command::Init => {
            let created = keys::init(&cfg.state_dir)?;
            let k = keys::load(&cfg.state_dir)?;
            if created {
                eprintln!("created keys in {}", cfg.state_dir.display());
            }
            print_descriptor(&k, &cfg)
        }
        Command::Descriptor => print_descriptor(&keys::load(&cfg.state_dir)?, &cfg),
        Command::Serve => serve(cfg),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chappe-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_descriptor(k: &keys::Keys, cfg: &Config) -> anyhow::Result<()> {
    let d = k
        .descriptor(&cfg.public_address)
        .context("public_address is not host:port")?;
    println!("{d}");
    Ok(())
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    init_logging(&cfg.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("chappe-relay")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if keys::init(&cfg.state_dir)? {
        tracing::info!(dir = %cfg.state_dir.display(), "created new relay keys");
    }
    let keys = keys::load(&cfg.state_dir)?;
    let descriptor = keys
        .descriptor(&cfg.public_address)
        .context("public_address is not host:port")?;
    let metrics = metrics::Metrics::new().context("registering metrics")?;
    let (trigger, shutdown) = shutdown::channel();
    // Probes answer from here on, also while the store opens (which, after a
    // crash, means a repair that reads the whole file).
    let status = http::Status::new(metrics.registry.clone());
    let http = match cfg.metrics_listen {
        Some(addr) => {
            let l = http::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr} (tcp)"))?;
            Some(tokio::spawn(http::serve(
                l,
                status.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let store_cfg = cfg.store_config();
    let store = tokio::task::spawn_blocking(move || chappe_store::Store::open(store_cfg))
        .await
        .context("the store-opening thread failed")?
        .context("opening the store")?;
    let relay = relay::Relay::new(
        store.clone(),
        keys.noise.clone(),
        cfg.limits.clone(),
        metrics,
        shutdown.clone(),
    );
    status.opened(relay.clone());

    // Handlers first: a SIGTERM right after "ready" must drain, not kill.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let endpoint = endpoint::bind(cfg.listen, endpoint::server_config(&keys, &cfg.limits)?)?;
    drop(keys);
    let accept = tokio::spawn(endpoint::serve(endpoint, relay.clone()));
    relay.set_ready(true);
    tracing::info!(
        listen = %cfg.listen,
        metrics = ?cfg.metrics_listen,
        config = ?cfg.source,
        "chappe-relay ready"
    );
    println!("{descriptor}");

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::warn!("SIGHUP: live reload is not supported yet; restart to apply config changes");
            }
        }
    }
    tracing::info!("shutting down: finishing in-flight sends");
    relay.set_ready(false);
    trigger.fire();
    let _ = accept.await;
    store.shutdown().await;
    if let Some(h) = http {
        let _ = h.await;
    }
    tracing::info!("stopped");
    Ok(())
}
