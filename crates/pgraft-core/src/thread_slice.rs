//! Short scheduler slices for the threads a write passes through, so a busy machine does
//! not make each hand-off wait for a core.
//!
//! A put crosses about ten threads: the backend, the worker's session thread, the Raft
//! thread, the network threads, a follower's network, Raft and log threads, and back. Each
//! of them sleeps until woken and then works for microseconds. When a machine has more
//! runnable threads than cores (64 backends on 2 cores in the benchmark), Linux's EEVDF
//! scheduler lets the thread on the core finish its slice (1.4-3 ms by default) before a
//! woken one runs, and every hop of a write can pay that wait: the tail of the write's
//! latency is the sum.
//!
//! Since Linux 6.12 a thread of the normal policy may ask for a shorter slice
//! (`sched_setattr`'s `sched_runtime`, 0.1-100 ms), which no privilege is needed for. A
//! shorter slice gives an earlier virtual deadline, so a woken thread runs at once instead
//! of after the current slice. It does not raise the thread's share of the CPU (its weight,
//! the nice value, is unchanged): a thread that works long is cut into short slices, and
//! waits for its share like any other. On older kernels the field is ignored, and nothing
//! changes.

/// The slice asked for: the kernel's smallest.
const SLICE_NS: u64 = 100_000;

/// Asks the scheduler for short slices for the calling thread (see the module's
/// documentation). Returns whether the kernel took the request; it keeps the thread's nice
/// value and leaves a thread of another policy (real-time, idle) alone.
pub fn ask_for_short_slices() -> bool {
    imp::ask(SLICE_NS)
}

#[cfg(target_os = "linux")]
mod imp {
    /// `struct sched_attr` as of Linux 4.13 (`SCHED_ATTR_SIZE_VER1`).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }

    pub fn ask(slice_ns: u64) -> bool {
        // SAFETY: plain system calls on the calling thread (id 0); `attr` outlives the call
        // and its size field says how much the kernel may read.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
                return false;
            }
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            if nice == -1 && *libc::__errno_location() != 0 {
                return false;
            }
            let attr = SchedAttr {
                size: std::mem::size_of::<SchedAttr>() as u32,
                policy: policy as u32,
                flags: 0,
                nice,
                priority: 0,
                runtime: slice_ns,
                deadline: 0,
                period: 0,
                util_min: 0,
                util_max: 0,
            };
            libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) == 0
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn ask(_slice_ns: u64) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_keeps_its_nice_value_and_gets_the_slice_where_the_kernel_has_them() {
        std::thread::spawn(|| {
            // SAFETY: raises this test thread's own nice value, which needs no privilege.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 3) };
            let took = super::ask_for_short_slices();
            // SAFETY: reads this thread's nice value.
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, 3, "nice kept");
            assert!(took, "sched_setattr refused a normal thread's request");
            // Kernels with per-thread slices (6.12 and later) show them.
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
            let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
            if (major, minor) < (6, 12) {
                return;
            }
            // SAFETY: this thread's id.
            let tid = unsafe { libc::gettid() };
            if let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")) {
                if let Some(line) = s.lines().find(|l| l.starts_with("se.slice")) {
                    assert!(line.ends_with(&super::SLICE_NS.to_string()), "{line}");
                }
            }
        })
        .join()
        .expect("the test thread");
    }
}
