//! raft-rs logs through slog; pgraft logs through the `log` facade, which the extension
//! routes to PostgreSQL's log. This drain forwards one to the other.

use slog::{Drain, Level, OwnedKVList, Record, KV};

/// A slog drain that writes every record to the `log` facade under target `raft`.
pub struct LogBridge;

struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        self.0.push_str(&format!(", {key}: {val}"));
        Ok(())
    }
}

impl Drain for LogBridge {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            Level::Critical | Level::Error => log::Level::Error,
            Level::Warning => log::Level::Warn,
            Level::Info => log::Level::Info,
            Level::Debug => log::Level::Debug,
            Level::Trace => log::Level::Trace,
        };
        if log::log_enabled!(target: "raft", level) {
            let mut fields = Fields(String::new());
            let _ = record.kv().serialize(record, &mut fields);
            let _ = values.serialize(record, &mut fields);
            log::log!(target: "raft", level, "{}{}", record.msg(), fields.0);
        }
        Ok(())
    }
}

/// A raft logger that forwards to `log`.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(LogBridge.fuse(), slog::o!())
}
