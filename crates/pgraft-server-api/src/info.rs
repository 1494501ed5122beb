//! The facts `server_info` gathers about a server.

use crate::error::{Error, Result};
use crate::version::PgVersion;

/// What a backup or HA tool needs to know about a server before it works with it.
///
/// Sizes are in bytes, read from `pg_settings` (value times unit), so they are the ones
/// the server was built and initialised with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version_num`.
    pub version: PgVersion,
    /// `server_version`, as the server prints it (for people, never for decisions).
    pub version_string: String,
    /// Whether data page checksums are on (`data_checksums`, fixed at initdb).
    pub checksums: bool,
    /// Whether the server is a primary: `pg_is_in_recovery()` is false.
    pub primary: bool,
    /// `wal_level`: `minimal`, `replica` or `logical`.
    pub wal_level: String,
    /// The WAL segment size, `wal_segment_size` (the reference's "WAL size"; fixed at
    /// initdb).
    pub wal_segment_size: u64,
    /// The size of one relation segment file, `segment_size` (fixed at build time, 1 GiB
    /// by default).
    pub segment_size: u64,
    /// The data page size, `block_size` (fixed at build time).
    pub block_size: u64,
    /// The WAL page size, `wal_block_size` (fixed at build time).
    pub wal_block_size: u64,
    /// `summarize_wal`, on servers that have it (17 and later); `None` before.
    pub summarize_wal: Option<bool>,
    /// `archive_mode`: `off`, `on` or `always`. When archiving is on, a backup can ask
    /// the server to wait until its WAL is archived.
    pub archive_mode: String,
}

/// Reads the facts over an open connection.
pub(crate) fn query(client: &mut postgres::Client, server: &str) -> Result<ServerInfo> {
    let q = |what: &str| {
        let what = what.to_string();
        move |source| Error::Query { server: server.to_string(), what, source }
    };
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_setting('server_version'), \
             pg_is_in_recovery()",
            &[],
        )
        .map_err(q("reading the server version"))?;
    let num: i32 = row.get(0);
    let version = PgVersion(u32::try_from(num).map_err(|_| Error::Protocol {
        server: server.to_string(),
        what: "server_version_num",
        detail: format!("negative version {num}"),
    })?);
    if version < PgVersion::MIN_SUPPORTED {
        return Err(Error::UnsupportedVersion { server: server.to_string(), version_num: version.0 });
    }
    let in_recovery: bool = row.get(2);
    let names = [
        "block_size",
        "wal_block_size",
        "segment_size",
        "wal_segment_size",
        "data_checksums",
        "wal_level",
        "summarize_wal",
        "archive_mode",
    ];
    let rows = client
        .query("SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1)", &[&&names[..]])
        .map_err(q("reading pg_settings"))?;
    let setting = |name: &'static str| -> Result<(String, Option<String>)> {
        rows.iter()
            .find(|r| r.get::<_, &str>(0) == name)
            .map(|r| (r.get::<_, String>(1), r.get::<_, Option<String>>(2)))
            .ok_or_else(|| Error::Protocol {
                server: server.to_string(),
                what: "pg_settings",
                detail: format!("the setting {name} is missing"),
            })
    };
    let bytes = |name: &'static str| -> Result<u64> {
        let (value, unit) = setting(name)?;
        setting_bytes(&value, unit.as_deref()).ok_or_else(|| Error::Protocol {
            server: server.to_string(),
            what: "pg_settings",
            detail: format!("{name} = {value:?} in unit {unit:?} is not a size"),
        })
    };
    let boolean = |name: &'static str| -> Result<bool> {
        let (value, _) = setting(name)?;
        match value.as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            other => Err(Error::Protocol {
                server: server.to_string(),
                what: "pg_settings",
                detail: format!("{name} = {other:?} is not on or off"),
            }),
        }
    };
    Ok(ServerInfo {
        version,
        version_string: row.get(1),
        checksums: boolean("data_checksums")?,
        primary: !in_recovery,
        wal_level: setting("wal_level")?.0,
        wal_segment_size: bytes("wal_segment_size")?,
        segment_size: bytes("segment_size")?,
        block_size: bytes("block_size")?,
        wal_block_size: bytes("wal_block_size")?,
        archive_mode: setting("archive_mode")?.0,
        summarize_wal: if version.has_summarize_wal() { Some(boolean("summarize_wal")?) } else { None },
    })
}

/// A `pg_settings` value in bytes: `setting` times `unit`, where the unit is absent
/// (bytes) or an optional multiplier and one of B, kB, MB, GB, TB (`8kB`, `16MB`).
pub(crate) fn setting_bytes(setting: &str, unit: Option<&str>) -> Option<u64> {
    let value: u64 = setting.parse().ok()?;
    let unit = unit.unwrap_or("B");
    let digits_end = unit.find(|c: char| !c.is_ascii_digit()).unwrap_or(unit.len());
    let factor: u64 = if digits_end == 0 { 1 } else { unit[..digits_end].parse().ok()? };
    let scale: u64 = match &unit[digits_end..] {
        "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    value.checked_mul(factor)?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::setting_bytes;

    #[test]
    fn units() {
        assert_eq!(setting_bytes("8192", None), Some(8192));
        assert_eq!(setting_bytes("131072", Some("8kB")), Some(1 << 30));
        assert_eq!(setting_bytes("16777216", Some("B")), Some(16 << 20));
        assert_eq!(setting_bytes("2048", Some("8kB")), Some(16 << 20));
        assert_eq!(setting_bytes("16", Some("MB")), Some(16 << 20));
        assert_eq!(setting_bytes("1", Some("ms")), None);
        assert_eq!(setting_bytes("x", None), None);
    }
}
