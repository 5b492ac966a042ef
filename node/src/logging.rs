//! One log stream: raft-rs logs through `slog`; [`raft_logger`] gives it a
//! drain that forwards every record to `tracing` (target `raft`), with the
//! record's key-value pairs appended. [`init_tracing`] sets up the
//! subscriber for the binaries.

use std::fmt::{self, Write as _};

use slog::{Drain, Level, Never, OwnedKVList, Record, Serializer, KV};

/// A `slog` drain that re-emits records as `tracing` events.
pub struct TracingDrain;

struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), Never> {
        // raft-rs logs every message at debug level: decide before formatting.
        let enabled = match record.level() {
            Level::Critical | Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            Level::Info => tracing::enabled!(target: "raft", tracing::Level::INFO),
            Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        let kv = kv.0;
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{kv}"),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{kv}"),
            Level::Info => tracing::info!(target: "raft", "{msg}{kv}"),
            Level::Debug => tracing::debug!(target: "raft", "{msg}{kv}"),
            Level::Trace => tracing::trace!(target: "raft", "{msg}{kv}"),
        }
        Ok(())
    }
}

/// The logger handed to raft-rs for one replica.
pub fn raft_logger(group: &str, peer_id: u64) -> slog::Logger {
    slog::Logger::root(
        TracingDrain.fuse(),
        slog::o!("group" => group.to_string(), "peer" => format!("{peer_id:016x}")),
    )
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn filter_handle() -> &'static std::sync::OnceLock<(FilterHandle, parking_lot::Mutex<String>)> {
    static H: std::sync::OnceLock<(FilterHandle, parking_lot::Mutex<String>)> =
        std::sync::OnceLock::new();
    &H
}

/// Installs the global `tracing` subscriber: `RUST_LOG` wins, otherwise
/// `default_filter` (for example `info,raft=warn`). The filter can be
/// changed later with [`set_log_filter`]. Safe to call twice.
pub fn init_tracing(default_filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| tracing_subscriber::EnvFilter::try_new(s).is_ok());
    let spec = spec.unwrap_or_else(|| default_filter.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (layer, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = filter_handle().set((handle, parking_lot::Mutex::new(spec)));
    }
}

/// The log filter in effect (as given to [`init_tracing`] or [`set_log_filter`]).
pub fn log_filter() -> Option<String> {
    filter_handle().get().map(|(_, s)| s.lock().clone())
}

/// Changes the log filter at run time (`info`, `debug,raft=info`, ...).
pub fn set_log_filter(spec: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(spec)
        .map_err(|e| format!("invalid log filter {spec:?}: {e}"))?;
    let (handle, current) = filter_handle()
        .get()
        .ok_or("logging was not set up with a reloadable filter")?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    *current.lock() = spec.to_string();
    Ok(())
}

/// For tests: logs only when `RUST_LOG` is set, through the test harness's
/// captured output. Safe to call many times.
pub fn init_test_tracing() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}
