//! Log lines to stderr, at a level a reload can change.
//!
//! Under systemd, stderr is a stream to journald (`JOURNAL_STREAM` names
//! it); each line then starts with its syslog priority (`<3>` error, `<4>`
//! warning, `<6>` info, `<7>` debug), which journald strips and records,
//! so `journalctl -p warning -u chappe-relay` finds the warnings. Colours
//! only on a terminal, and no timestamp in the journal, which has its own.

use std::fmt;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Changes the level filter of the running logger.
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `CHAPPE_LOG` was set: it wins over `log.level`, at start and reload.
    from_env: bool,
}

impl LogHandle {
    /// Applies `log.level` from a reloaded config (already validated).
    pub fn set_level(&self, level: &str) -> anyhow::Result<()> {
        if self.from_env {
            tracing::info!("CHAPPE_LOG is set and keeps precedence over log.level");
            return Ok(());
        }
        let filter = EnvFilter::try_new(level)?;
        self.handle.reload(filter)?;
        Ok(())
    }
}

pub fn init(level: &str) -> LogHandle {
    let env = std::env::var("CHAPPE_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok());
    let from_env = env.is_some();
    let filter = env.unwrap_or_else(|| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let journal = stderr_is_journal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .event_format(Prioritised {
            journal,
            inner: Format::default(),
            bare: Format::default().without_time(),
        });
    tracing_subscriber::registry().with(filter).with(fmt).init();
    LogHandle { handle, from_env }
}

/// Whether stderr is the journald stream systemd connected (its device
/// and inode are in `JOURNAL_STREAM`).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", meta.dev(), meta.ino())
}

struct Prioritised {
    journal: bool,
    inner: Format,
    bare: Format<Full, ()>,
}

impl<S, N> FormatEvent<S, N> for Prioritised
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if !self.journal {
            return self.inner.format_event(ctx, writer, event);
        }
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.bare.format_event(ctx, writer, event)
    }
}
