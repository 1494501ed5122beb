//! The machine a run happened on: processor, memory, the disk under the benchmark's
//! directory and how long an fsync takes there.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

/// What the report says about the machine.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// Device, filesystem and whether it rotates, for the benchmark's directory.
    pub disk: String,
    /// 4 KiB write + fdatasync, median and p99, microseconds.
    pub fsync_p50_us: u64,
    pub fsync_p99_us: u64,
}

impl Machine {
    pub fn describe(dir: &Path) -> Result<Self> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("read /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let meminfo = fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let (p50, p99) = fsync_probe(dir)?;
        Ok(Self {
            cpu_model,
            cpus,
            memory_gib: mem_kb / 1024.0 / 1024.0,
            kernel,
            disk: disk_of(dir),
            fsync_p50_us: p50,
            fsync_p99_us: p99,
        })
    }
}

/// The mount that holds `dir` (longest matching mount point) and its block device's kind.
fn disk_of(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1]))
                .then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .max_by_key(|(_, mp, _)| mp.len());
    let Some((dev, mp, fstype)) = best else { return "unknown".into() };
    let name = dev.trim_start_matches("/dev/");
    let base: String = name.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
    let rotational = ["queue/rotational"]
        .iter()
        .find_map(|f| {
            fs::read_to_string(format!("/sys/block/{name}/{f}"))
                .or_else(|_| fs::read_to_string(format!("/sys/block/{base}/{f}")))
                .ok()
        })
        .map(|v| if v.trim() == "1" { "rotational as the kernel reports it" } else { "non-rotational" })
        .unwrap_or("kind unknown");
    let size = fs::read_to_string(format!("/sys/block/{name}/size"))
        .or_else(|_| fs::read_to_string(format!("/sys/block/{base}/size")))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|sectors| format!(", {:.0} GiB", sectors as f64 * 512.0 / (1u64 << 30) as f64))
        .unwrap_or_default();
    format!("{dev} ({fstype} on {mp}, {rotational}{size})")
}

/// 200 times: write 4 KiB in place and fdatasync, in `dir`.
fn fsync_probe(dir: &Path) -> Result<(u64, u64)> {
    let path = dir.join("fsync-probe");
    let mut f = fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let block = [7u8; 4096];
    f.write_all(&block).context("write the probe file")?;
    f.sync_all().context("fsync the probe file")?;
    let mut lat = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all_at(&block, 0).context("write the probe block")?;
        f.sync_data().context("fdatasync the probe file")?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    drop(f);
    let _ = fs::remove_file(&path);
    lat.sort_unstable();
    Ok((lat[lat.len() / 2], lat[lat.len() * 99 / 100]))
}
