//! `pgraftctl config get|set`: pgraft's settings (pgraft_get_config, pgraft_set_config).
//!
//! `set` changes a run-time setting on every member through the log; any member takes it.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use postgres::Client;
use serde_json::{json, Value};

use crate::cluster_args::{sql_error, ClusterArgs};
use crate::server::Output;
use crate::table::{cell, Table};

#[derive(Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Every setting, or one: value, default, where the value comes from, when it can change.
    Get {
        /// A setting's name, with or without `pgraft.` (default: all).
        name: Option<String>,
    },
    /// Change a run-time setting (election_timeout, heartbeat_interval, log_level,
    /// failover_enabled) on every member; values take units (`75ms`, `1s`).
    Set {
        /// The setting's name, with or without `pgraft.`.
        name: String,
        /// The new value.
        value: String,
    },
}

pub fn run(args: ConfigArgs) -> Result<()> {
    let c = &args.cluster;
    let mut s = c.any()?;
    let on = s.endpoint.to_string();
    match args.command {
        ConfigCommand::Get { name } => {
            let name = name.map(|n| short_name(&n));
            let settings =
                get(&mut s.client, name.as_deref()).with_context(|| format!("pgraft_get_config on {on}"))?;
            if let (Some(n), true) = (&name, settings.is_empty()) {
                bail!("{on} has no setting pgraft.{n}; `pgraftctl config get` lists them");
            }
            print(c.output, &on, &settings);
        }
        ConfigCommand::Set { name, value } => {
            let ok: bool = s
                .client
                .query_one("SELECT pgraft_set_config($1, $2)", &[&name, &value])
                .map_err(sql_error)
                .with_context(|| format!("pgraft_set_config on {on}"))?
                .get(0);
            anyhow::ensure!(ok, "{on} answered false: pgraft.{name} was not changed");
            let settings = get(&mut s.client, Some(&short_name(&name)))
                .with_context(|| format!("pgraft_get_config on {on}"))?;
            print(c.output, &on, &settings);
        }
    }
    Ok(())
}

/// `pgraft.Heartbeat_Interval` as pgraft_get_config names it: `heartbeat_interval`.
fn short_name(n: &str) -> String {
    let n = n.trim().to_ascii_lowercase();
    n.strip_prefix("pgraft.").map(str::to_string).unwrap_or(n)
}

fn get(cl: &mut Client, name: Option<&str>) -> Result<Vec<Value>> {
    let rows = cl
        .query(
            "SELECT name, value, default_value, source, changeable FROM pgraft_get_config() \
              WHERE $1::text IS NULL OR name = $1 ORDER BY name",
            &[&name],
        )
        .map_err(sql_error)?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({
                "name": r.get::<_, String>(0),
                "value": r.get::<_, String>(1),
                "default": r.get::<_, String>(2),
                "source": r.get::<_, String>(3),
                "changeable": r.get::<_, String>(4),
            })
        })
        .collect())
}

fn print(out: Output, on: &str, settings: &[Value]) {
    match out {
        Output::Json => println!("{}", json!({ "endpoint": on, "settings": settings })),
        Output::Table => {
            let mut t = Table::new(&["NAME", "VALUE", "DEFAULT", "SOURCE", "CHANGEABLE"]);
            for v in settings {
                t.row(
                    ["name", "value", "default", "source", "changeable"]
                        .iter()
                        .map(|k| cell(&v[*k]))
                        .collect(),
                );
            }
            t.print();
        }
    }
}
