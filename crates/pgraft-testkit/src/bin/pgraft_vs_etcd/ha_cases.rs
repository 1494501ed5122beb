//! Failover next to Patroni (`--only ha`): a crash of the primary's whole node, the primary
//! cut off from the network, and a planned switchover, each under a writer that inserts a
//! row every 10 ms, on a 3-member pgraft HA cluster and on 3 Patroni nodes with etcd.
//!
//! ```text
//!  stable: one primary, both standbys streaming, the writer acknowledged
//!  t0 ── fault ──▶ first row acknowledged by another server (write gap)
//!      ── undo (start the killed node / heal / nothing) ──▶ the old primary streams from
//!         the new one (rejoin)
//!  then: rows acknowledged but missing on the new primary (lost); rows the old primary
//!        acknowledged after the new one's first (a double-primary window)
//! ```
//!
//! The same PostgreSQL installation, client, table and trial loop serve both systems; only
//! [`HaSystem`]'s few operations differ.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use pgraft_testkit::{kill_all_in, wait_until, LocalCluster};

use crate::ha_writer::{Ack, Writer};
use crate::patroni::PatroniCluster;

/// The three cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Crash,
    Partition,
    Switchover,
}

impl Case {
    pub const ALL: [Case; 3] = [Case::Crash, Case::Partition, Case::Switchover];

    pub fn title(&self) -> &'static str {
        match self {
            Case::Crash => "crash of the primary's node (kill -9)",
            Case::Partition => "the primary cut off from the network",
            Case::Switchover => "planned switchover under load",
        }
    }
}

/// One trial's figures, from the fault.
#[derive(Debug, Clone)]
pub struct HaTrial {
    /// Until the first row acknowledged by another server than the old primary.
    pub write: Duration,
    /// Until the old primary streamed from the new one again.
    pub rejoin: Option<Duration>,
    /// Rows acknowledged (by either writer) during the trial.
    pub acked: usize,
    /// Of those, rows missing on the new primary afterwards.
    pub lost: usize,
    /// Rows the old primary acknowledged after the new one's first, and over how long.
    pub double_acks: usize,
    pub double_window: Duration,
}

/// One configuration of one system over every trial of every case.
pub struct HaRun {
    pub system: &'static str,
    pub config: String,
    pub trials: Vec<(Case, HaTrial)>,
    pub errors: Vec<String>,
}

/// What the trial loop needs from a system.
pub trait HaSystem {
    /// The member count (members are 0-based here).
    fn members(&self) -> usize;
    fn pg_port(&self, i: usize) -> u16;
    /// The `application_name` member `i`'s standby streams as.
    fn app_name(&self, i: usize) -> String;
    /// kill -9 of every process of member `i`'s node.
    fn kill(&mut self, i: usize) -> Result<()>;
    /// Starts member `i` again after [`HaSystem::kill`].
    fn restart(&mut self, i: usize) -> Result<()>;
    /// Cuts member `i` off from the others (the application still reaches it).
    fn isolate(&mut self, i: usize) -> Result<()>;
    fn heal(&mut self) -> Result<()>;
    /// A planned switchover from `from` to `to`.
    fn switchover(&mut self, from: usize, to: usize) -> Result<()>;
}

/// Whether the server on `port` is a primary (`None`: it does not answer).
pub fn is_primary(port: u16) -> Option<bool> {
    let mut c = connect(port, Duration::from_secs(1)).ok()?;
    c.query_one("SELECT NOT pg_is_in_recovery()", &[]).ok().map(|r| r.get(0))
}

/// Whether every one of `names` streams from the server on `port`.
pub fn streaming(port: u16, names: &[String]) -> bool {
    let Ok(mut c) = connect(port, Duration::from_secs(1)) else { return false };
    let Ok(rows) = c.query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'", &[])
    else {
        return false;
    };
    let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    names.iter().all(|n| have.contains(n))
}

fn connect(port: u16, timeout: Duration) -> Result<postgres::Client> {
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user("postgres").dbname("postgres").connect_timeout(timeout);
    cfg.options("-c statement_timeout=5000");
    cfg.connect(postgres::NoTls).with_context(|| format!("connect to 127.0.0.1:{port}"))
}

fn multi_host(sys: &dyn HaSystem) -> String {
    let hosts = vec!["127.0.0.1"; sys.members()].join(",");
    let ports: Vec<String> = (0..sys.members()).map(|i| sys.pg_port(i).to_string()).collect();
    format!(
        "host={hosts} port={} user=postgres dbname=postgres target_session_attrs=read-write",
        ports.join(",")
    )
}

/// Waits until exactly one member's server is the primary and the others stream from it;
/// returns the primary.
fn stable(sys: &dyn HaSystem, within: Duration) -> Result<usize> {
    wait_until("one primary with every standby streaming", within, Duration::from_millis(100), || {
        let primaries: Vec<usize> =
            (0..sys.members()).filter(|i| is_primary(sys.pg_port(*i)) == Some(true)).collect();
        let [p] = primaries[..] else { return Ok(None) };
        let others: Vec<String> = (0..sys.members()).filter(|i| *i != p).map(|i| sys.app_name(i)).collect();
        Ok(streaming(sys.pg_port(p), &others).then_some(p))
    })
}

/// How long a fault may take to give a new primary, and a node to rejoin.
const NEW_PRIMARY_WITHIN: Duration = Duration::from_secs(120);
const REJOIN_WITHIN: Duration = Duration::from_secs(300);

/// One trial of `case`.
pub fn trial(sys: &mut dyn HaSystem, case: Case, ids: &Arc<AtomicI64>) -> Result<HaTrial> {
    let old = stable(sys, Duration::from_secs(300))?;
    let old_port = sys.pg_port(old);
    let to = (old + 1) % sys.members();
    let main = Writer::start(multi_host(sys), Arc::clone(ids))?;
    let pinned = Writer::start(
        format!("host=127.0.0.1 port={old_port} user=postgres dbname=postgres"),
        Arc::clone(ids),
    )?;
    let first_id = ids.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("the writer to get going", Duration::from_secs(30), Duration::from_millis(20), || {
        Ok((main.count() >= 20).then_some(()))
    })?;
    let t0 = Instant::now();
    match case {
        Case::Crash => sys.kill(old)?,
        Case::Partition => sys.isolate(old)?,
        Case::Switchover => sys.switchover(old, to)?,
    }
    let first_new =
        wait_until("a write on a new primary", NEW_PRIMARY_WITHIN, Duration::from_millis(5), || {
            Ok(main.acks().iter().find(|a| a.at > t0 && a.port != old_port).map(|a| (a.at, a.port)))
        })?;
    let new =
        (0..sys.members()).find(|i| sys.pg_port(*i) == first_new.1).context("the new primary's member")?;
    match case {
        Case::Crash => sys.restart(old)?,
        Case::Partition => sys.heal()?,
        Case::Switchover => {}
    }
    let name = sys.app_name(old);
    let rejoined = wait_until(
        "the old primary to stream from the new one",
        REJOIN_WITHIN,
        Duration::from_millis(50),
        || Ok(streaming(sys.pg_port(new), std::slice::from_ref(&name)).then(Instant::now)),
    )
    .ok();
    let mut acked: Vec<Ack> = main.finish();
    acked.extend(pinned.finish());
    acked.retain(|a| a.id >= first_id);
    let have = rows_on(sys.pg_port(new), first_id)?;
    let lost = acked.iter().filter(|a| have.binary_search(&a.id).is_err()).count();
    let late: Vec<&Ack> = acked.iter().filter(|a| a.port == old_port && a.at > first_new.0).collect();
    let double_window = late.iter().map(|a| a.at - first_new.0).max().unwrap_or_default();
    Ok(HaTrial {
        write: first_new.0 - t0,
        rejoin: rejoined.map(|t| t - t0),
        acked: acked.len(),
        lost,
        double_acks: late.len(),
        double_window,
    })
}

/// The ids at or above `from` on the server on `port`, sorted.
fn rows_on(port: u16, from: i64) -> Result<Vec<i64>> {
    let mut c = connect(port, Duration::from_secs(5))?;
    let rows =
        c.query("SELECT id FROM ha_bench WHERE id >= $1 ORDER BY id", &[&from]).context("read ha_bench")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Runs `trials` trials of every case on `sys`, recording what failed instead of stopping.
pub fn run_cases(sys: &mut dyn HaSystem, run: &mut HaRun, trials: usize, ids: &Arc<AtomicI64>) {
    for case in Case::ALL {
        for t in 0..trials {
            match trial(sys, case, ids) {
                Ok(tr) => {
                    eprintln!(
                        "ha: {} {}: {:?} trial {}: write after {} ms, rejoined after {}, {} of {} acknowledged rows lost, {} late acks",
                        run.system,
                        run.config,
                        case,
                        t + 1,
                        tr.write.as_millis(),
                        tr.rejoin.map_or("-".into(), |d| format!("{} ms", d.as_millis())),
                        tr.lost,
                        tr.acked,
                        tr.double_acks
                    );
                    run.trials.push((case, tr));
                }
                Err(e) => {
                    eprintln!("ha: {} {}: {case:?} trial {} failed: {e:#}", run.system, run.config, t + 1);
                    run.errors.push(format!("{case:?} trial {}: {e:#}", t + 1));
                    // Whatever the failure left behind is healed before the next trial.
                    let _ = sys.heal();
                }
            }
        }
    }
}

/// pgraft's HA cluster as an [`HaSystem`] (member i is node i + 1).
pub struct PgraftHa<'a> {
    pub cluster: &'a LocalCluster,
}

impl HaSystem for PgraftHa<'_> {
    fn members(&self) -> usize {
        self.cluster.nodes().len()
    }

    fn pg_port(&self, i: usize) -> u16 {
        self.cluster.nodes()[i].pg_port
    }

    fn app_name(&self, i: usize) -> String {
        pgraft_testkit::slot_name(i as u64 + 1)
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        kill_all_in(&self.cluster.nodes()[i].data_dir, Duration::from_secs(30))
    }

    fn restart(&mut self, i: usize) -> Result<()> {
        self.cluster.start(i as u64 + 1)
    }

    fn isolate(&mut self, i: usize) -> Result<()> {
        self.cluster.partition(i as u64 + 1)?;
        self.cluster.repl_partition(i as u64 + 1)
    }

    fn heal(&mut self) -> Result<()> {
        self.cluster.heal(None)
    }

    fn switchover(&mut self, from: usize, to: usize) -> Result<()> {
        let mut c = self.cluster.connect(from as u64 + 1)?;
        match c.query_one("SELECT pgraft_transfer_leadership($1)", &[&(to as i32 + 1)]) {
            Ok(_) => Ok(()),
            // The switchover fences the old primary, whose fast shutdown may end this
            // session before the function answers.
            Err(e)
                if e.is_closed() || e.as_db_error().is_some_and(|d| d.code().code().starts_with("57P")) =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow!(e).context("pgraft_transfer_leadership")),
        }
    }
}

impl HaSystem for PatroniCluster {
    fn members(&self) -> usize {
        3
    }

    fn pg_port(&self, i: usize) -> u16 {
        PatroniCluster::pg_port(self, i)
    }

    fn app_name(&self, i: usize) -> String {
        PatroniCluster::app_name(self, i)
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        PatroniCluster::kill(self, i)
    }

    fn restart(&mut self, i: usize) -> Result<()> {
        PatroniCluster::restart(self, i)
    }

    fn isolate(&mut self, i: usize) -> Result<()> {
        PatroniCluster::isolate(self, i);
        Ok(())
    }

    fn heal(&mut self) -> Result<()> {
        PatroniCluster::heal(self);
        Ok(())
    }

    fn switchover(&mut self, from: usize, to: usize) -> Result<()> {
        PatroniCluster::switchover(self, from, to)
    }
}

/// Creates the writers' table through the primary.
pub fn create_table(sys: &dyn HaSystem) -> Result<()> {
    let p = stable(sys, Duration::from_secs(120))?;
    let mut c = connect(sys.pg_port(p), Duration::from_secs(5))?;
    c.batch_execute(crate::ha_writer::TABLE_SQL).context("create ha_bench")?;
    Ok(())
}
