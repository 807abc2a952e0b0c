//! `chappe-relay`: the Chappe relay daemon.
//!
//! - [`config`]: the TOML file, defaults, validation.
//! - [`admin`]: the local socket `backup` and `stats` ask the running relay
//!   through; [`restore`] puts a backup in place of a stopped relay's store.
//! - [`keys`]: the relay's Noise and TLS keys in the state directory, and
//!   their rotation.
//! - [`hardening`]: no core dumps, non-dumpable, before any key is read;
//!   who the process runs as.
//! - [`endpoint`]: QUIC/TLS policy and the accept loop.
//! - [`limits`]: admission limits (rates, per-key counts, QUIC Retry under a
//!   handshake flood) as plain state machines.
//! - [`session`]: per connection, the Noise handshake then an owner or
//!   sender session (the protocol logic itself is `chappe-proto`).
//! - [`router`]: live push from a sender's commit to the owner's session.
//! - [`relay`]: the shared state; [`metrics`] and [`http`] expose it.
//! - [`service`]: systemd's side: readiness, status, watchdog, inherited
//!   sockets; [`reload`]: SIGHUP; [`logging`]: stderr or the journal.
//! - [`shutdown`]: the SIGTERM signal every task listens to.
#![forbid(unsafe_code)]

mod admin;
mod check;
mod config;
mod endpoint;
mod hardening;
mod http;
mod keys;
mod limits;
mod logging;
mod metrics;
mod relay;
mod reload;
mod restore;
mod router;
mod service;
mod session;
mod shutdown;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
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
    /// Serve as root with a config file (normally refused: the relay parses
    /// input from anyone who reaches its port, and needs no privilege).
    #[arg(
        long,
        global = true,
        env = "CHAPPE_ALLOW_ROOT",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    allow_root: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default). With a config file the keys must exist
    /// (`init`); with the embedded default they are created on first run.
    Serve,
    /// Create the state directory and keys (never overwrites existing ones).
    Init,
    /// Print the relay descriptor clients pin.
    Descriptor {
        /// Also the descriptor of the previous key while a rotation overlap
        /// lasts (one per line, current first).
        #[arg(long)]
        all: bool,
    },
    /// Validate the config and exit (non-zero with the reason if invalid).
    CheckConfig,
    /// Make a new relay key and TLS certificate; the relay presents them
    /// from its next reload, and the old ones keep working for
    /// `keys.rotation_overlap_secs`.
    RotateKeys {
        /// Rotate even while an earlier overlap runs, destroying the key it
        /// keeps (clients still pinned to that one stop working).
        #[arg(long)]
        force: bool,
    },
    /// Write a consistent copy of the store, as of one instant, to DEST
    /// while the relay serves (through its admin socket). Relay keys are
    /// not included: back them up on their own (OPERATOR.md §12).
    Backup {
        /// A file that does not exist yet.
        dest: PathBuf,
    },
    /// Replace the store of a stopped relay with a backup, after checking
    /// it; the replaced store and journal are kept in the state directory.
    Restore { src: PathBuf },
    /// Mailboxes, envelopes, bytes, oldest expiry and journal use: from
    /// the running relay, or read from the store when it is stopped.
    Stats,
    /// Check a stopped relay's store and journal and report (non-zero exit
    /// on problems): totals and indexes of store.redb, what the journal
    /// replays at the next start, and damage that keeps the relay from
    /// starting, with what discarding it would lose.
    Check {
        /// Accept the loss the report names: drop the damaged journal
        /// record and every record after it (or a journal that is missing
        /// or unreadable), close the store cleanly, check again.
        #[arg(long)]
        discard_damaged_journal: bool,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages into a directory (for packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// Reads and validates the config; `quic` and `metrics` are the addresses
/// of sockets systemd passed, if any.
fn load_config(
    cli: &Cli,
    quic: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<Config> {
    let text = match &cli.config {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read config file {}", p.display()))?,
        None => String::new(),
    };
    // A socket systemd opened decides the address: the config's `listen`
    // then only says what the descriptor shows if `public_address` is unset.
    let overrides = config::Overrides {
        state_dir: cli.state_dir.clone(),
        listen: quic.map(|a| a.to_string()).or_else(|| cli.listen.clone()),
        metrics_listen: metrics
            .map(|a| a.to_string())
            .or_else(|| cli.metrics_listen.clone()),
    };
    Ok(Config::from_toml(&text, cli.config.as_deref(), &overrides)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = hardening::apply() {
        eprintln!("chappe-relay: cannot disable core dumps: {e}");
        return ExitCode::FAILURE;
    }
    match run_command(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chappe-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(mut cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.take().unwrap_or(Command::Serve);
    // Before any thread: taking the sockets clears their variables.
    let inherited = match command {
        Command::Serve => service::Inherited::take()?,
        _ => service::Inherited::default(),
    };
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "chappe-relay",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
            return Ok(());
        }
        _ => {}
    }
    let cfg = load_config(&cli, inherited.quic_addr(), inherited.metrics_addr())?;
    match command {
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
            hardening::act_as_state_owner(&cfg.state_dir)?;
            if keys::init(&cfg.state_dir)? {
                eprintln!("created keys in {}", cfg.state_dir.display());
            }
            print_descriptor(&keys::load(&cfg.state_dir)?, &cfg)
        }
        Command::Descriptor { all } => {
            let ring = keys::load_ring(&cfg.state_dir, cfg.rotation_overlap, SystemTime::now())?;
            print_descriptor(&ring.current, &cfg)?;
            if let (true, Some(p)) = (all, &ring.previous) {
                print_descriptor(&p.generation, &cfg)?;
                eprintln!(
                    "the second line is the previous key, working until {}",
                    keys::format_time(p.until)
                );
            }
            Ok(())
        }
        Command::RotateKeys { force } => {
            hardening::act_as_state_owner(&cfg.state_dir)?;
            let now = SystemTime::now();
            keys::rotate(&cfg.state_dir, cfg.rotation_overlap, now, force)?;
            print_descriptor(&keys::load(&cfg.state_dir)?, &cfg)?;
            eprintln!(
                "rotated: the relay presents this key from its next reload (`systemctl reload \
                 chappe-relay`); clients pinned to the previous descriptor keep working until {}",
                keys::format_time(now + cfg.rotation_overlap)
            );
            Ok(())
        }
        Command::Backup { dest } => {
            let Some(sock) = admin::connect(&cfg.state_dir)? else {
                anyhow::bail!(
                    "no relay is running on {} (no admin socket): `backup` asks the running \
                     relay for its copy. Start it, or, while it stays stopped, copy store.redb \
                     and store.journal together",
                    cfg.state_dir.display()
                );
            };
            let len = admin::fetch_backup(sock, &dest)?;
            eprintln!("wrote {} ({len} bytes)", dest.display());
            Ok(())
        }
        Command::Restore { src } => restore::run(&cfg, &src),
        Command::Check {
            discard_damaged_journal,
        } => check::run(&cfg, discard_damaged_journal),
        Command::Stats => match admin::connect(&cfg.state_dir)? {
            Some(sock) => {
                admin::fetch_stats(sock)?.print("the running relay");
                Ok(())
            }
            None => {
                let s = cfg.store_config();
                let st = chappe_store::backup::offline_stats(&s.path, &s.journal_path())
                    .with_context(|| format!("reading the stopped store {}", s.path.display()))?;
                admin::Stats {
                    mailboxes: st.totals.mailboxes,
                    envelopes: st.totals.envelopes,
                    bytes: st.totals.bytes,
                    oldest_expiry_hour: st.oldest_expiry_hour,
                    journal_bytes: st.journal_bytes,
                    journal_capacity: st.journal_capacity,
                }
                .print("the stopped store (journal records are counted once replayed)");
                Ok(())
            }
        },
        Command::Serve => {
            if cfg.source.is_some() {
                hardening::refuse_root(cli.allow_root)?;
                if !keys::exists(&cfg.state_dir) {
                    anyhow::bail!(
                        "no relay keys in {dir}. With a config file the relay does not create \
                         them, so that a mistyped `state_dir` cannot give it a new identity: \
                         check `state_dir`, or run `chappe-relay --config {config} init` once",
                        dir = cfg.state_dir.display(),
                        config = cfg
                            .source
                            .as_deref()
                            .unwrap_or(std::path::Path::new("?"))
                            .display()
                    );
                }
            }
            serve(cfg, cli, inherited)
        }
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    }
}

fn print_descriptor(k: &keys::Generation, cfg: &Config) -> anyhow::Result<()> {
    let d = k
        .descriptor(&cfg.public_address)
        .context("public_address is not host:port")?;
    println!("{d}");
    Ok(())
}

fn serve(cfg: Config, cli: Cli, inherited: service::Inherited) -> anyhow::Result<()> {
    let log = logging::init(&cfg.log_level);
    if nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "running as root; the packaged service runs as its own user (see the operator guide)"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("chappe-relay")
        .build()
        .context("starting the async runtime")?;
    let (quic, metrics) = (inherited.quic_addr(), inherited.metrics_addr());
    let load = Box::new(move || load_config(&cli, quic, metrics));
    rt.block_on(run(cfg, inherited, log, load))
}

async fn run(
    cfg: Config,
    inherited: service::Inherited,
    log: logging::LogHandle,
    load: Box<dyn Fn() -> anyhow::Result<Config> + Send>,
) -> anyhow::Result<()> {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if keys::init(&cfg.state_dir)? {
        tracing::info!(dir = %cfg.state_dir.display(), "created new relay keys");
    }
    let ring = keys::load_ring(&cfg.state_dir, cfg.rotation_overlap, SystemTime::now())?;
    let metrics = metrics::Metrics::new().context("registering metrics")?;
    let (trigger, shutdown) = shutdown::channel();
    // Probes answer from here on, also while the store opens (which, after a
    // crash, means replaying the journal).
    let status = http::Status::new(vec![metrics.registry.clone(), metrics.process.clone()]);
    let service::Inherited {
        quic: quic_socket,
        metrics: metrics_socket,
    } = inherited;
    let http = match cfg.metrics_listen {
        Some(addr) => {
            let l = http::bind(addr, metrics_socket)
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
    let extend = service::extend_while_opening();
    let store = tokio::task::spawn_blocking(move || chappe_store::Store::open(store_cfg))
        .await
        .context("the store-opening thread failed")?
        .context("opening the store")?;
    extend.abort();
    let admin = admin::bind(&cfg.state_dir)?;
    tokio::spawn(admin::serve(
        admin,
        store.clone(),
        cfg.state_dir.clone(),
        shutdown.clone(),
    ));
    let relay = relay::Relay::new(
        store.clone(),
        ring,
        cfg.limits.clone(),
        metrics,
        shutdown.clone(),
    );
    status.opened(relay.clone());

    // Handlers first: a SIGTERM right after "ready" must drain, not kill.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let endpoint = endpoint::bind(
        cfg.listen,
        quic_socket,
        endpoint::server_config(relay.live_keys(), &cfg.limits)?,
    )?;
    let (probe, probes) = service::accept_probe();
    let accept = tokio::spawn(endpoint::serve(endpoint.clone(), relay.clone(), probes));
    if let Some(interval) = service::watchdog_interval() {
        tracing::info!(?interval, "systemd watchdog on");
        tokio::spawn(service::watchdog(relay.clone(), probe, interval));
    }
    relay.set_ready(true);
    let descriptor = relay
        .keys()
        .current
        .descriptor(&cfg.public_address)
        .context("public_address is not host:port")?;
    tracing::info!(
        listen = %cfg.listen,
        metrics = ?cfg.metrics_listen,
        config = ?cfg.source,
        %descriptor,
        "chappe-relay ready"
    );
    println!("{descriptor}");
    service::ready(&relay.status_line(cfg.listen));
    tokio::spawn(service::status_line(relay.clone(), cfg.listen));

    let listen = cfg.listen;
    let mut reloader = reload::Reloader {
        load,
        running: cfg,
        endpoint,
        log,
    };
    loop {
        let retire = relay.keys().previous.as_ref().map(|p| {
            p.until
                .duration_since(SystemTime::now())
                .unwrap_or_default()
        });
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                service::reloading();
                let outcome = reloader.reload(&relay).await;
                // READY=1 before the count moves: whoever waits for the count
                // (the Ansible role) then finds the unit active again.
                service::ready(&relay.status_line(listen));
                count_reload(outcome, &relay);
            }
            _ = tokio::time::sleep(retire.unwrap_or_default()), if retire.is_some() => {
                retire_previous_key(&reloader.running, &relay);
            }
        }
    }
    tracing::info!("shutting down: finishing in-flight sends");
    service::stopping();
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

/// Logs and counts a reload's outcome.
fn count_reload(outcome: anyhow::Result<reload::Applied>, relay: &relay::Relay) {
    match outcome {
        Ok(applied) => {
            relay.metrics.reloads_total.with_label_values(&["ok"]).inc();
            if !applied.needs_restart.is_empty() {
                tracing::warn!(
                    keys = applied.needs_restart.join(", "),
                    "reloaded; these changed keys apply only after a restart and keep their running values"
                );
            }
            match applied.new_descriptor {
                Some(d) => {
                    tracing::info!(descriptor = %d, "reloaded; the relay presents a new descriptor");
                    // Whoever started the relay may have stopped reading.
                    let _ = writeln!(std::io::stdout(), "{d}");
                }
                None => tracing::info!("reloaded the configuration"),
            }
        }
        Err(e) => {
            relay
                .metrics
                .reloads_total
                .with_label_values(&["failed"])
                .inc();
            tracing::error!("reload refused, still running with the previous configuration: {e:#}");
        }
    }
}

/// The overlap of the previous key ended: stop presenting it and destroy it.
fn retire_previous_key(running: &Config, relay: &relay::Relay) {
    match keys::load_ring(
        &running.state_dir,
        running.rotation_overlap,
        SystemTime::now(),
    ) {
        Ok(ring) => {
            let gone = ring.previous.is_none();
            relay.set_keys(ring);
            if gone {
                tracing::info!("the rotation overlap ended; the previous relay key is destroyed");
            }
        }
        Err(e) => {
            tracing::error!("cannot retire the previous relay key: {e:#}");
        }
    }
}
