//! `chappe`: the command-line client. See `chappe --help`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use chappe_client::card::Card;
use chappe_client::error::ClientError;
use chappe_client::home::{Home, Mailbox};
use chappe_client::seal::{self, MailboxKeyPair};
use chappe_client::session::{OwnerSession, Sender};
use chappe_client::terminal;
use chappe_proto::descriptor::Descriptor;
use chappe_proto::{DeliveryToken, ReceiveId};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chappe",
    version,
    about = "Chappe messenger client: mailboxes, sealed sends, receive"
)]
struct Cli {
    /// Where identity, keys and mailboxes live.
    #[arg(long, global = true, env = "CHAPPE_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create your identity (once); prints its fingerprint.
    Init,
    /// Print your identity fingerprint.
    Whoami,
    /// Create, list, delete mailboxes and rotate their tokens.
    #[command(subcommand)]
    Mailbox(MailboxCmd),
    /// Print the contact card of a mailbox (share it with whoever may write to you).
    Card {
        /// Receive id (or a unique prefix); optional if you have one mailbox.
        mailbox: Option<String>,
    },
    /// Seal a message to a contact card and send it anonymously.
    Send {
        /// The card text, or @FILE to read it from a file.
        card: String,
        /// The message; "-" or nothing reads standard input.
        message: Option<String>,
    },
    /// Load-test a running relay (see docs/BENCHMARKS.md).
    Bench(BenchArgs),
    /// Print messages waiting in your mailboxes, acknowledging each once shown.
    ///
    /// One line per message: `from FINGERPRINT: BODY`. The body is the
    /// sender's choice, so it is printed escaped: newlines, tabs and other
    /// control characters (escape sequences included), bidirectional
    /// overrides and bytes that are not UTF-8 appear as `\n`, `\t`,
    /// `\x1b`, `\u{202e}`, `\xff`, and a backslash as `\\`. A body can
    /// neither start a line of its own nor move the cursor.
    Recv {
        /// Keep running and print messages as they arrive.
        #[arg(long)]
        follow: bool,
        /// Only this mailbox (receive id or prefix).
        #[arg(long)]
        mailbox: Option<String>,
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

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, env = "CHAPPE_RELAY")]
    relay: String,
    /// Owner sessions (one mailbox each).
    #[arg(long, default_value_t = 1)]
    owners: usize,
    /// Anonymous sender connections.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Envelope size in bytes (a bucket: 1024, 2048, 4096, 16384, 65536).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// online: owners connected; offline: store, then fetch + ack.
    #[arg(long, value_enum, default_value = "online")]
    mode: BenchMode,
    /// Target sends per second over all senders; 0 = closed loop at max.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Outstanding sends per sender connection in closed loop.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The relay's pid, to report its CPU and memory.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchMode {
    Online,
    Offline,
}

#[derive(Subcommand)]
enum MailboxCmd {
    /// Create a mailbox on a relay; prints its contact card.
    Create {
        /// The relay descriptor (`chappe-relay descriptor` prints it).
        #[arg(long, env = "CHAPPE_RELAY")]
        relay: String,
    },
    /// List your mailboxes with the number of envelopes waiting.
    List,
    /// Delete a mailbox on the relay (and its waiting envelopes) and here.
    Delete { mailbox: String },
    /// Issue a new delivery token; the old one stops working unless --keep-old.
    RotateToken {
        mailbox: String,
        /// Keep accepting the previous token too (for an overlap period).
        #[arg(long)]
        keep_old: bool,
    },
}

/// Exit status when the relay refused a request (the reason is printed).
const EXIT_REFUSED: u8 = 3;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chappe: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chappe: {e:#}");
            match e.downcast_ref::<ClientError>().and_then(ClientError::code) {
                Some(_) => ExitCode::from(EXIT_REFUSED),
                None => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Bench(a) => return bench(a).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "chappe", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)?;
            return Ok(());
        }
        other => other,
    };
    let home = Home::open(cli.home.unwrap_or_else(Home::default_dir))?;
    match command {
        Command::Init => {
            let existed = home.has_identity();
            let id = home.init(now())?;
            if !existed {
                eprintln!("created identity in {}", home.dir().display());
            }
            println!("{}", id.public_key().fingerprint());
        }
        Command::Whoami => println!("{}", home.identity(now())?.public_key().fingerprint()),
        Command::Mailbox(cmd) => mailbox(&home, cmd).await?,
        Command::Card { mailbox } => {
            let m = home.find_mailbox(mailbox.as_deref())?;
            println!("{}", card(&home, &m)?);
        }
        Command::Send { card, message } => send(&home, &card, message).await?,
        Command::Recv { follow, mailbox } => recv(&home, follow, mailbox.as_deref()).await?,
        Command::Bench(_) | Command::Completions { .. } | Command::Man { .. } => {}
    }
    Ok(())
}

fn card(home: &Home, m: &Mailbox) -> anyhow::Result<String> {
    let id = home.identity(now())?;
    let token = *m
        .tokens
        .first()
        .ok_or_else(|| anyhow!("mailbox has no token"))?;
    let c = Card::new(
        &id,
        &descriptor(&m.relay)?,
        m.send_id,
        token,
        m.keys.public_key().clone(),
    )
    .map_err(|e| anyhow!("building the card: {e}"))?;
    Ok(c.encode())
}

fn descriptor(text: &str) -> anyhow::Result<Descriptor> {
    text.parse()
        .map_err(|e| anyhow!("relay descriptor \"{text}\": {e}"))
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use chappe_client::bench;
    let cfg = bench::BenchConfig {
        owners: a.owners,
        senders: a.senders,
        size: a.size,
        mode: match a.mode {
            BenchMode::Online => bench::Mode::Online,
            BenchMode::Offline => bench::Mode::Offline,
        },
        rate: a.rate,
        inflight: a.inflight,
        duration: Duration::try_from_secs_f64(a.seconds).context("--seconds")?,
        relay_pid: a.relay_pid,
    };
    let report = bench::run(&descriptor(&a.relay)?, &cfg).await?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

async fn mailbox(home: &Home, cmd: MailboxCmd) -> anyhow::Result<()> {
    let owner = home.owner_key()?;
    match cmd {
        MailboxCmd::Create { relay } => {
            let desc = descriptor(&relay)?;
            let session = OwnerSession::connect(&desc, &owner).await?;
            let token = DeliveryToken::random();
            let (receive_id, send_id) = session.create_mailbox(&[token]).await?;
            session.close().await;
            let m = Mailbox {
                relay: desc.to_string(),
                receive_id,
                send_id,
                tokens: vec![token],
                keys: MailboxKeyPair::generate(),
            };
            home.save_mailbox(&m)?;
            eprintln!("created mailbox {}", receive_id.to_hex());
            println!("{}", card(home, &m)?);
        }
        MailboxCmd::List => {
            let mine = home.mailboxes()?;
            let mut by_relay: BTreeMap<&str, Vec<&Mailbox>> = BTreeMap::new();
            for m in &mine {
                by_relay.entry(&m.relay).or_default().push(m);
            }
            for (relay, boxes) in by_relay {
                let desc = descriptor(relay)?;
                let session = OwnerSession::connect(&desc, &owner).await?;
                let listed = session.list_mailboxes().await?;
                session.close().await;
                for m in boxes {
                    let stored = listed
                        .iter()
                        .find(|e| e.mailbox == m.receive_id)
                        .map_or("missing on relay".to_string(), |e| {
                            format!("{} waiting", e.stored)
                        });
                    println!("{}  {}  {}", m.receive_id.to_hex(), stored, relay);
                }
            }
        }
        MailboxCmd::Delete { mailbox } => {
            let m = home.find_mailbox(Some(&mailbox))?;
            let session = OwnerSession::connect(&descriptor(&m.relay)?, &owner).await?;
            session.delete_mailbox(m.receive_id).await?;
            session.close().await;
            home.delete_mailbox(&m.receive_id)?;
            eprintln!("deleted mailbox {}", m.receive_id.to_hex());
        }
        MailboxCmd::RotateToken { mailbox, keep_old } => {
            let mut m = home.find_mailbox(Some(&mailbox))?;
            let mut tokens = vec![DeliveryToken::random()];
            if keep_old {
                tokens.extend(m.tokens.iter().take(chappe_proto::frame::MAX_TOKENS - 1));
            }
            let session = OwnerSession::connect(&descriptor(&m.relay)?, &owner).await?;
            session.set_tokens(m.receive_id, &tokens).await?;
            session.close().await;
            m.tokens = tokens;
            home.save_mailbox(&m)?;
            println!("{}", card(home, &m)?);
        }
    }
    Ok(())
}

async fn send(home: &Home, card_arg: &str, message: Option<String>) -> anyhow::Result<()> {
    let text = match card_arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => card_arg.to_string(),
    };
    // The parser trims the whitespace a card may have around it, as the
    // protocol defines it (ASCII only).
    let card: Card = text.parse().map_err(|e| anyhow!("contact card: {e}"))?;
    let body = match message.as_deref() {
        Some(m) if m != "-" => m.as_bytes().to_vec(),
        _ => {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b)?;
            b
        }
    };
    let id = home.identity(now())?;
    let envelope = seal::seal(&id, card.recipient(), card.send_id(), &body, now())
        .map_err(|e| anyhow!("sealing: {e}"))?;
    let sender = Sender::connect(card.relay()).await?;
    let result = sender
        .send(*card.send_id(), *card.token(), Bytes::from(envelope))
        .await;
    sender.close().await;
    result?;
    eprintln!("sent ({} bytes sealed)", body.len());
    Ok(())
}

async fn recv(home: &Home, follow: bool, only: Option<&str>) -> anyhow::Result<()> {
    let mailboxes = match only {
        Some(p) => vec![home.find_mailbox(Some(p))?],
        None => home.mailboxes()?,
    };
    if mailboxes.is_empty() {
        bail!("no mailboxes: create one with `chappe mailbox create --relay DESCRIPTOR`");
    }
    let owner = home.owner_key()?;
    let mut by_relay: BTreeMap<String, Vec<Mailbox>> = BTreeMap::new();
    for m in mailboxes {
        by_relay.entry(m.relay.clone()).or_default().push(m);
    }
    // One session per relay, all read at once.
    let mut tasks = tokio::task::JoinSet::new();
    for (relay, boxes) in by_relay {
        let desc = descriptor(&relay)?;
        let session = OwnerSession::connect(&desc, &owner).await?;
        tasks.spawn(receive_from(home.clone(), session, boxes, follow));
    }
    while let Some(done) = tasks.join_next().await {
        done.context("receive task")??;
    }
    Ok(())
}

/// How long `recv` without `--follow` waits for more once the backlog it
/// was told about has arrived.
const SETTLE: Duration = Duration::from_millis(300);

async fn receive_from(
    home: Home,
    mut session: OwnerSession,
    boxes: Vec<Mailbox>,
    follow: bool,
) -> anyhow::Result<()> {
    let listed = session.list_mailboxes().await?;
    let mut expected: u64 = 0;
    for m in &boxes {
        if let Some(e) = listed.iter().find(|e| e.mailbox == m.receive_id) {
            expected += u64::from(e.stored);
        }
        session.subscribe(m.receive_id).await?;
    }
    let mut seen = home.seen()?;
    let mut got: u64 = 0;
    let stdout = std::io::stdout();
    loop {
        let wait = if follow {
            Duration::from_secs(3600)
        } else if got >= expected {
            SETTLE
        } else {
            Duration::from_secs(10)
        };
        let delivery = match tokio::time::timeout(wait, session.next_delivery()).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                let code = session.close_code();
                bail!("the relay closed the session ({code:?})");
            }
            Err(_) if follow => continue,
            Err(_) => break,
        };
        got += 1;
        let Some(m) = boxes.iter().find(|m| m.receive_id == delivery.mailbox) else {
            continue;
        };
        match seal::open(&m.keys, &m.send_id, &delivery.ciphertext) {
            Ok(msg) => {
                if seen.insert(msg.message_id) {
                    let mut out = stdout.lock();
                    // The body is the sender's: escaped, it stays on this
                    // line and cannot drive the terminal.
                    writeln!(
                        out,
                        "from {}: {}",
                        msg.sender_identity.fingerprint(),
                        terminal::escape(&msg.body)
                    )?;
                    out.flush()?;
                    home.mark_seen(&msg.message_id)?;
                }
            }
            Err(e) => eprintln!(
                "dropped an envelope in mailbox {} that does not open: {e}",
                short(&m.receive_id)
            ),
        }
        // Only after it is shown (or judged unreadable) may the relay forget it.
        session.ack(delivery.mailbox, vec![delivery.seq]).await?;
    }
    session.close().await;
    Ok(())
}

fn short(id: &ReceiveId) -> String {
    id.to_hex().chars().take(8).collect()
}
