//! Idle polling: keep this machine's CPUs from going idle for a short time
//! after the node did something, so the next wake-up is cheap.
//!
//! On a VM, a CPU with nothing to run halts, and waking a thread on a
//! halted CPU (a message arrived, a disk write completed) costs tens of
//! microseconds: the hypervisor has to schedule the virtual CPU again. A
//! replicated write passes about eight such wake-ups (docs/benchmarks.md,
//! "Where the time goes"). With `--idle-poll-us N`, the node runs one
//! polling thread per CPU at the lowest priority there is (`SCHED_IDLE`):
//! for N µs after the node's last raft input it spins, so a CPU that would
//! otherwise halt stays awake; any real thread that becomes runnable
//! preempts it at once. After N µs without input the pollers sleep until
//! the next input. The price is CPU time: a node that is busy now and then
//! burns its idle CPUs for N µs after each burst, and a CPU quota (a
//! Kubernetes limit) counts that time. Seastar's reactor
//! (`--idle-poll-time-us`) makes the same trade. Off (0) by default; a node
//! whose cgroup has a CPU quota logs a warning when it is turned on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Longest accepted window (µs): one second of spinning per input is
/// already far past any useful setting.
pub const MAX_WINDOW_US: u64 = 1_000_000;

/// A poller looks at the window again after spinning this long (µs).
const SPIN_US: u64 = 20;

struct Poller {
    start: Instant,
    /// Last input, µs since `start`.
    last_us: AtomicU64,
    /// Spin this long after an input (µs); 0: off.
    window_us: AtomicU64,
    /// Some poller is asleep waiting for an input.
    sleeping: AtomicBool,
    threads: Mutex<Vec<Thread>>,
    /// Time spent spinning, all pollers together (µs).
    spun_us: AtomicU64,
}

static POLLER: OnceLock<Poller> = OnceLock::new();

fn poller() -> &'static Poller {
    POLLER.get_or_init(|| Poller {
        start: Instant::now(),
        last_us: AtomicU64::new(0),
        window_us: AtomicU64::new(0),
        sleeping: AtomicBool::new(false),
        threads: Mutex::new(Vec::new()),
        spun_us: AtomicU64::new(0),
    })
}

impl Poller {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// The current window (µs; 0: off).
pub fn window_us() -> u64 {
    POLLER
        .get()
        .map_or(0, |p| p.window_us.load(Ordering::Relaxed))
}

/// Checks a window before it is set.
pub fn check_window_us(us: u64) -> Result<(), String> {
    if us > MAX_WINDOW_US {
        return Err(format!(
            "idle_poll_us must be at most {MAX_WINDOW_US} (one second), got {us}"
        ));
    }
    Ok(())
}

/// CPU time the pollers spent spinning so far, in seconds.
pub fn spun_seconds() -> f64 {
    POLLER
        .get()
        .map_or(0.0, |p| p.spun_us.load(Ordering::Relaxed) as f64 / 1e6)
}

/// How many polling threads run (0 until a window was first set).
pub fn threads() -> usize {
    POLLER.get().map_or(0, |p| p.threads.lock().len())
}

/// Sets the window; starts the polling threads, one per CPU this process
/// may use, the first time it is not 0.
pub fn set_window_us(us: u64) -> Result<(), String> {
    check_window_us(us)?;
    let p = poller();
    p.window_us.store(us, Ordering::SeqCst);
    if us == 0 {
        return Ok(());
    }
    let mut threads = p.threads.lock();
    if threads.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..n {
            let t = std::thread::Builder::new()
                .name(format!("idle-poll-{i}"))
                .spawn(run)
                .map_err(|e| format!("starting an idle-poll thread: {e}"))?;
            threads.push(t.thread().clone());
        }
    }
    drop(threads);
    if let Some(cpus) = cpu_quota() {
        tracing::warn!(
            idle_poll_us = us,
            cpu_quota = cpus,
            "idle polling is on in a cgroup with a CPU quota: the quota counts the pollers' spinning, so the node will be throttled sooner; keep --idle-poll-us 0 under a CPU limit"
        );
    }
    touch();
    Ok(())
}

/// The CPU quota of this process's cgroup, in CPUs (`None`: no quota, or
/// none found). cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`.
pub fn cpu_quota() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            // v2: the unified hierarchy.
            let f = std::path::Path::new("/sys/fs/cgroup")
                .join(path)
                .join("cpu.max");
            if let Some(q) = std::fs::read_to_string(f)
                .ok()
                .and_then(|t| parse_cpu_max(&t))
            {
                return Some(q);
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in [controllers, "cpu", "cpu,cpuacct"] {
                let dir = std::path::Path::new("/sys/fs/cgroup")
                    .join(mount)
                    .join(path);
                let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
                if let (Some(q), Some(p)) = (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")) {
                    if let Some(q) = parse_cfs(&q, &p) {
                        return Some(q);
                    }
                    break;
                }
            }
        }
    }
    None
}

/// cgroup v2 `cpu.max`: "QUOTA PERIOD" or "max PERIOD".
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// cgroup v1 `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`.
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Marks an input: pollers spin for the window from now.
#[inline]
pub fn touch() {
    let Some(p) = POLLER.get() else {
        return;
    };
    if p.window_us.load(Ordering::Relaxed) == 0 {
        return;
    }
    let now = p.now_us();
    // Writes to the shared stamp are rare: at most one per 20 µs.
    if now.saturating_sub(p.last_us.load(Ordering::Relaxed)) >= 20 {
        p.last_us.store(now, Ordering::SeqCst);
    }
    if p.sleeping.load(Ordering::SeqCst) && p.sleeping.swap(false, Ordering::SeqCst) {
        for t in p.threads.lock().iter() {
            t.unpark();
        }
    }
}

fn set_sched_idle() {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        policy,
    ) {
        tracing::warn!(
            error = ?e,
            "idle polling: cannot lower the poller's priority; it may slow other threads"
        );
    }
}

fn run() {
    set_sched_idle();
    let p = poller();
    loop {
        let window = p.window_us.load(Ordering::SeqCst);
        let active = |p: &Poller| {
            window > 0 && p.now_us().saturating_sub(p.last_us.load(Ordering::SeqCst)) < window
        };
        if active(p) {
            // A pause per turn (kinder to a sibling hyperthread); against
            // a plain loop it measured the same here, so the hypervisor's
            // pause-loop exiting does not take the CPU away.
            let until = Instant::now() + Duration::from_micros(SPIN_US);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            p.spun_us.fetch_add(SPIN_US, Ordering::Relaxed);
            continue;
        }
        p.sleeping.store(true, Ordering::SeqCst);
        if active(p) {
            continue;
        }
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
        let until = Instant::now() + deadline;
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn reads_cpu_quotas_of_both_cgroup_versions() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("200000 100000"), Some(2.0));
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("150000\n", "100000\n"), Some(1.5));
        assert_eq!(parse_cfs("junk", "100000"), None);
    }

    // One test: the poller is process-wide, so its steps must not interleave.
    #[test]
    fn pollers_spin_after_input_and_stop_when_it_ends() {
        let err = set_window_us(MAX_WINDOW_US + 1).unwrap_err();
        assert!(err.contains("at most 1000000"), "{err}");
        assert_eq!(window_us(), 0, "a refused window must not be set");

        set_window_us(50_000).unwrap();
        assert_eq!(window_us(), 50_000);
        assert!(threads() >= 1);
        let asleep = || {
            wait_until("pollers to go to sleep", Duration::from_secs(10), || {
                let a = spun_seconds();
                std::thread::sleep(Duration::from_millis(150));
                spun_seconds() == a
            })
        };
        // Setting the window counts as an input; once it has passed
        // without another, the pollers sleep.
        asleep();
        // One input wakes them, and they spin.
        let before = spun_seconds();
        touch();
        wait_until(
            "an input to wake the pollers",
            Duration::from_secs(10),
            || spun_seconds() > before,
        );
        asleep();
        // Off: inputs no longer wake them.
        set_window_us(0).unwrap();
        let a = spun_seconds();
        for _ in 0..20 {
            touch();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(spun_seconds(), a, "pollers spun while idle polling was off");
    }
}
