//! `pgraftctl kv get|put|del`: the replicated key-value store, like `etcdctl get|put|del`.
//!
//! Any member serves them: a follower forwards writes to the leader and asks it for a
//! linearizable read. Keys and values always travel as bind parameters.

use std::io::Read;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use postgres::Client;
use serde_json::{json, Value};

use crate::cluster_args::{sql_error, ClusterArgs};
use crate::server::Output;
use crate::table::{cell, Table};

#[derive(Args)]
pub struct KvArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Read a key, or every key that starts with it (--prefix); prints nothing when absent.
    Get {
        /// The key (with --prefix, the prefix; "" for every key).
        key: String,
        /// Every key that starts with KEY, with its version and revisions.
        #[arg(long)]
        prefix: bool,
        /// Read this member's applied state without asking the leader (may be behind).
        #[arg(long)]
        serializable: bool,
    },
    /// Store a value under a key; without VALUE, the value is read from stdin.
    Put {
        /// The key.
        key: String,
        /// The value (text).
        value: Option<String>,
    },
    /// Delete a key, or every key that starts with it (--prefix); prints how many existed.
    Del {
        /// The key (with --prefix, the prefix).
        key: String,
        /// Delete every key that starts with KEY, one at a time (not atomically: keys
        /// written meanwhile under the prefix may survive).
        #[arg(long)]
        prefix: bool,
    },
}

pub fn run(args: KvArgs) -> Result<()> {
    let c = &args.cluster;
    let mut s = c.any()?;
    let on = s.endpoint.to_string();
    let cl = &mut s.client;
    match args.command {
        KvCommand::Get { key, prefix: false, serializable } => {
            let f = if serializable { "pgraft_kv_get_serializable" } else { "pgraft_kv_get" };
            let v: Option<String> = cl
                .query_one(&format!("SELECT {f}($1)"), &[&key])
                .map_err(sql_error)
                .with_context(|| format!("{f} on {on}"))?
                .get(0);
            let kvs: Vec<Value> = v.map(|v| json!({ "key": key, "value": v })).into_iter().collect();
            print_kvs(c.output, &on, &kvs, &["KEY", "VALUE"], &["key", "value"]);
        }
        KvCommand::Get { key, prefix: true, serializable } => {
            let kvs = range(cl, &key, serializable).with_context(|| format!("pgraft_kv_range on {on}"))?;
            print_kvs(
                c.output,
                &on,
                &kvs,
                &["KEY", "VALUE", "VERSION", "CREATE REVISION", "MOD REVISION"],
                &["key", "value", "version", "create_revision", "mod_revision"],
            );
        }
        KvCommand::Put { key, value } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::stdin().read_to_string(&mut v).context("read the value from stdin")?;
                    v
                }
            };
            let ok: bool = cl
                .query_one("SELECT pgraft_kv_put($1::text, $2::text)", &[&key, &value])
                .map_err(sql_error)
                .with_context(|| format!("pgraft_kv_put on {on}"))?
                .get(0);
            anyhow::ensure!(ok, "{on} answered false: {key:?} was not stored");
            match c.output {
                Output::Json => println!("{}", json!({ "ok": true, "key": key, "endpoint": on })),
                Output::Table => println!("OK"),
            }
        }
        KvCommand::Del { key, prefix: true } => {
            // One revision for the whole range, as etcd's `del --prefix`.
            let deleted: i64 = cl
                .query_one("SELECT pgraft_kv_delete_prefix($1)", &[&key])
                .map_err(sql_error)
                .with_context(|| format!("pgraft_kv_delete_prefix on {on}"))?
                .get(0);
            match c.output {
                Output::Json => println!("{}", json!({ "deleted": deleted, "prefix": key, "endpoint": on })),
                Output::Table => println!("{deleted}"),
            }
        }
        KvCommand::Del { key, prefix: false } => {
            // pgraft_kv_delete succeeds whether or not the key existed; the count etcd
            // prints is taken just before.
            let existed: bool = cl
                .query_one("SELECT pgraft_kv_exists($1)", &[&key])
                .map_err(sql_error)
                .with_context(|| format!("pgraft_kv_exists on {on}"))?
                .get(0);
            cl.query_one("SELECT pgraft_kv_delete($1)", &[&key])
                .map_err(sql_error)
                .with_context(|| format!("pgraft_kv_delete on {on}"))?;
            let deleted = i64::from(existed);
            match c.output {
                Output::Json => println!("{}", json!({ "deleted": deleted, "key": key, "endpoint": on })),
                Output::Table => println!("{deleted}"),
            }
        }
    }
    Ok(())
}

fn range(cl: &mut Client, prefix: &str, serializable: bool) -> Result<Vec<Value>> {
    let rows = cl
        .query(
            "SELECT key, value, version, create_revision, mod_revision \
               FROM pgraft_kv_range($1, $2) ORDER BY key COLLATE \"C\"",
            &[&prefix, &serializable],
        )
        .map_err(sql_error)?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({
                "key": r.get::<_, String>(0),
                "value": r.get::<_, String>(1),
                "version": r.get::<_, i64>(2),
                "create_revision": r.get::<_, i64>(3),
                "mod_revision": r.get::<_, i64>(4),
            })
        })
        .collect())
}

fn print_kvs(out: Output, on: &str, kvs: &[Value], headers: &[&str], fields: &[&str]) {
    match out {
        Output::Json => println!("{}", json!({ "endpoint": on, "count": kvs.len(), "kvs": kvs })),
        Output::Table if kvs.is_empty() => {}
        Output::Table => {
            let mut t = Table::new(headers);
            for kv in kvs {
                t.row(fields.iter().map(|f| cell(&kv[*f])).collect());
            }
            t.print();
        }
    }
}
