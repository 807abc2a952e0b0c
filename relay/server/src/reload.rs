//! Live reload (SIGHUP, `systemctl reload`): the config file and the keys
//! are read again and applied without dropping a connection.
//!
//! Everything is read and checked first; only a whole new set is applied,
//! so a broken file changes nothing. Keys that only take effect at start
//! (addresses bound, the state directory, store sizes) are named in a
//! warning and keep their running values until a restart.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;

use crate::config::Config;
use crate::endpoint;
use crate::keys;
use crate::logging::LogHandle;
use crate::relay::Relay;

/// What a reload needs besides the relay: how to read the config again,
/// what runs now, and the endpoint whose TLS and transport settings it
/// replaces.
pub struct Reloader {
    pub load: Box<dyn Fn() -> anyhow::Result<Config> + Send>,
    pub running: Config,
    pub endpoint: quinn::Endpoint,
    pub log: LogHandle,
}

/// The outcome, for the log and `/metrics`.
pub struct Applied {
    /// Keys changed in the file that a restart applies.
    pub needs_restart: Vec<&'static str>,
    /// The descriptor changed (rotated keys or a new `public_address`).
    pub new_descriptor: Option<String>,
}

impl Reloader {
    pub async fn reload(&mut self, relay: &Arc<Relay>) -> anyhow::Result<Applied> {
        let mut new = (self.load)()?;
        let needs_restart = self.running.needs_restart(&new);
        // The send budget is a semaphore sized at start: it keeps its size.
        new.limits.max_inflight_send_bytes = self.running.limits.max_inflight_send_bytes;
        let ring = keys::load_ring(
            &self.running.state_dir,
            new.rotation_overlap,
            SystemTime::now(),
        )
        .context("reading the relay keys")?;
        let server = endpoint::server_config(relay.live_keys(), &new.limits)?;
        let descriptor = ring
            .current
            .descriptor(&new.public_address)
            .context("public_address is not host:port")?
            .to_string();
        let old_descriptor = relay
            .keys()
            .current
            .descriptor(&self.running.public_address)
            .map(|d| d.to_string());
        // Checked; now applied. The store first: it is the one step that
        // can still fail (its writer gone), and then nothing else changed.
        relay
            .store
            .set_quotas(new.store_config().quotas())
            .await
            .context("the store did not take the new limits")?;
        relay.set_keys(ring);
        relay.set_limits(new.limits.clone());
        self.endpoint.set_server_config(Some(server));
        self.log.set_level(&new.log_level)?;
        self.running = Config {
            // What a restart applies keeps its running value, so the next
            // reload still names it.
            listen: self.running.listen,
            state_dir: self.running.state_dir.clone(),
            metrics_listen: self.running.metrics_listen,
            journal_mib: self.running.journal_mib,
            cache_mib: self.running.cache_mib,
            ..new
        };
        Ok(Applied {
            needs_restart,
            new_descriptor: (old_descriptor.as_deref() != Some(&descriptor)).then_some(descriptor),
        })
    }
}
