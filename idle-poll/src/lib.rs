//! Idle polling: keep this machine's CPUs from going idle for a short time
//! after the node did something, so the next wake-up is cheap.
//!
//! On a VM, a CPU with nothing to run halts, and waking a thread on a
//! halted CPU (a message arrived, a disk write completed) costs tens of
//! microseconds: the hypervisor has to schedule the virtual CPU again. A
//! replicated write passes about eight such wake-ups (docs/benchmarks.md,
//! "Where the time goes"). With a window of N µs, the node runs one
//! polling thread per CPU (at most [`MAX_POLLERS`]) at the lowest priority
//! there is (`SCHED_IDLE`): after the node's last write-path raft input
//! taken inline (light load) they spin for up to N µs, so a CPU that would
//! otherwise halt stays awake; any real thread that becomes runnable
//! preempts them at once. Then they sleep until the next input (an idle
//! node wakes them once a second). Three guards keep the price down: the
//! spin adapts to the gaps between inputs (`next_spin_us`), the pollers
//! stay asleep while the node is [`busy`], and their CPU time may not
//! exceed the rest of the process's ([`BUDGET_RATIO`]). A CPU quota (a
//! Kubernetes limit) counts the spinning all the same.
//!
//! `--idle-poll-us auto` (the default) runs a window of
//! [`AUTO_WINDOW_US`] unless the node's cgroup has a CPU quota or the
//! process may use only one CPU; then it is off. Seastar's reactor polls
//! idle CPUs by default too (`--idle-poll-time-us`), and so does the KVM
//! guest kernel's `haltpoll` when its `guest_halt_poll_ns` is not 0. A
//! number sets the window (0: off); a node whose cgroup has a CPU quota
//! logs a warning when an explicit window turns polling on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Longest accepted window (µs): one second of spinning per input is
/// already far past any useful setting.
pub const MAX_WINDOW_US: u64 = 1_000_000;

/// The window `auto` chooses where polling is allowed (µs). At one client
/// the gaps between a node's write-path inputs are 0.3–0.5 ms on the
/// reference machine; 200 µs (Seastar's default) measured no better than
/// off there, 500 µs most of the gain, 1 ms all of it (docs/benchmarks.md).
pub const AUTO_WINDOW_US: u64 = 1_000;

/// Most polling threads a process runs: one wake-up chain of a write has a
/// few threads in it, and a large machine should not spin all its CPUs.
pub const MAX_POLLERS: usize = 4;

/// What `--idle-poll-us` asks for: `auto`, or a window in µs (0: off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdlePoll {
    Auto,
    Window(u64),
}

impl std::str::FromStr for IdlePoll {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(IdlePoll::Auto);
        }
        let us = s.parse::<u64>().map_err(|_| {
            format!("idle_poll_us: {s:?} is neither `auto` nor a whole number of µs")
        })?;
        check_window_us(us)?;
        Ok(IdlePoll::Window(us))
    }
}

impl std::fmt::Display for IdlePoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdlePoll::Auto => f.write_str("auto"),
            IdlePoll::Window(us) => write!(f, "{us}"),
        }
    }
}

/// The window `auto` runs with in a cgroup with CPU quota `quota` on
/// `cpus` usable CPUs, and why.
pub fn auto_window(quota: Option<f64>, cpus: usize) -> (u64, String) {
    if let Some(q) = quota {
        return (
            0,
            format!("off: the cgroup has a CPU quota ({q:.2} CPUs), which would count the pollers' spinning"),
        );
    }
    if cpus < 2 {
        return (0, "off: this process may use only one CPU".into());
    }
    (
        AUTO_WINDOW_US,
        format!("on: {cpus} CPUs and no CPU quota; --idle-poll-us 0 turns it off"),
    )
}

/// Applies a setting: resolves `auto` on this machine, then sets the
/// window. Returns the window now in force (µs).
pub fn apply(setting: IdlePoll) -> Result<u64, String> {
    let us = match setting {
        IdlePoll::Window(us) => us,
        IdlePoll::Auto => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let (us, why) = auto_window(cpu_quota(), cpus);
            tracing::info!(idle_poll_us = us, "idle polling auto: {why}");
            us
        }
    };
    // Under the setting's lock, so that concurrent calls leave the
    // setting and the window from the same call.
    let mut current = poller().setting.lock();
    set_window_us(us)?;
    *current = setting;
    Ok(us)
}

/// The setting last applied (a window of 0 until one is).
pub fn setting() -> IdlePoll {
    POLLER
        .get()
        .map_or(IdlePoll::Window(0), |p| *p.setting.lock())
}

/// A poller looks at the window again after spinning this long (µs).
const SPIN_US: u64 = 20;

struct Poller {
    start: Instant,
    /// Last input, µs since `start`.
    last_us: AtomicU64,
    /// How long the pollers spin after an input now (µs, at most the
    /// window): adapts to the gaps between inputs (see [`next_spin_us`]).
    spin_us: AtomicU64,
    /// Last sign of load (`busy`), µs since `start`; `NEVER`: none yet.
    busy_us: AtomicU64,
    /// Spin this long after an input (µs); 0: off.
    window_us: AtomicU64,
    /// Some poller is asleep waiting for an input.
    sleeping: AtomicBool,
    threads: Mutex<Vec<Thread>>,
    /// What was asked for (`window_us` is what it resolved to).
    setting: Mutex<IdlePoll>,
    /// CPU time spent spinning, all pollers together (ns).
    spun_ns: AtomicU64,
    /// The pollers' other CPU time: waking, checking, going back to sleep
    /// (ns). Not spinning, but the budget counts it.
    overhead_ns: AtomicU64,
    /// Over budget: pollers do not spin (see [`BUDGET_RATIO`]).
    throttled: AtomicBool,
    /// Next budget check, µs since `start`.
    next_check_us: AtomicU64,
    budget: Mutex<Budget>,
}

/// Pollers may spin at most this much CPU time per unit of CPU time the
/// rest of the process used: idle polling at most doubles what a node
/// costs. At one client on the reference machine the pollers used ~0.8 of
/// the nodes' own CPU time, so the budget leaves that case alone; at a
/// trickle of writes (100/s) they would otherwise spin twice what the
/// nodes work, and on a machine with many CPUs far more.
pub const BUDGET_RATIO: f64 = 1.0;
/// How often the budget is settled (µs).
const BUDGET_PERIOD_US: u64 = 50_000;
/// Most credit the budget keeps (ns): a burst after a quiet spell may
/// spin this much before it has to be earned.
const MAX_CREDIT_NS: i64 = 50_000_000;

struct Budget {
    /// The process's CPU time outside the pollers at the last check (ns).
    work_ns: u64,
    /// The pollers' CPU time (`spun_ns` + `overhead_ns`) at the last check.
    pollers_ns: u64,
    /// Spin time still allowed (ns); below 0, the pollers are throttled.
    credit_ns: i64,
}

static POLLER: OnceLock<Poller> = OnceLock::new();

fn poller() -> &'static Poller {
    POLLER.get_or_init(|| Poller {
        start: Instant::now(),
        last_us: AtomicU64::new(0),
        spin_us: AtomicU64::new(0),
        busy_us: AtomicU64::new(NEVER),
        window_us: AtomicU64::new(0),
        sleeping: AtomicBool::new(false),
        threads: Mutex::new(Vec::new()),
        setting: Mutex::new(IdlePoll::Window(0)),
        spun_ns: AtomicU64::new(0),
        overhead_ns: AtomicU64::new(0),
        throttled: AtomicBool::new(false),
        next_check_us: AtomicU64::new(0),
        budget: Mutex::new(Budget {
            work_ns: process_cpu_ns().unwrap_or(0),
            pollers_ns: 0,
            credit_ns: MAX_CREDIT_NS,
        }),
    })
}

impl Poller {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Settles the budget once per period: what the process worked since
    /// the last check earns credit, what the pollers spun spends it.
    fn check_budget(&self) {
        let now = self.now_us();
        let next = self.next_check_us.load(Ordering::Relaxed);
        if now < next
            || self
                .next_check_us
                .compare_exchange(
                    next,
                    now + BUDGET_PERIOD_US,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let Some(total) = process_cpu_ns() else {
            return;
        };
        let pollers =
            self.spun_ns.load(Ordering::Relaxed) + self.overhead_ns.load(Ordering::Relaxed);
        let mut b = self.budget.lock();
        let work = total.saturating_sub(pollers);
        // Signed: the process clock lags the pollers' own clocks by up to
        // a tick, so `work` can step back a little; that must cost credit
        // back, not be dropped as 0 (which would earn credit each period).
        let earned = (work as i64 - b.work_ns as i64) as f64 * BUDGET_RATIO;
        let spent = pollers.saturating_sub(b.pollers_ns);
        b.work_ns = work;
        b.pollers_ns = pollers;
        b.credit_ns = (b.credit_ns + earned as i64 - spent as i64).min(MAX_CREDIT_NS);
        self.throttled.store(b.credit_ns < 0, Ordering::Relaxed);
    }
}

/// CPU time this process used so far (ns), all threads.
fn process_cpu_ns() -> Option<u64> {
    cpu_clock_ns(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time the calling thread used so far (ns).
fn thread_cpu_ns() -> Option<u64> {
    cpu_clock_ns(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_clock_ns(clock: nix::time::ClockId) -> Option<u64> {
    let t = nix::time::clock_gettime(clock).ok()?;
    Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
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
        .map_or(0.0, |p| p.spun_ns.load(Ordering::Relaxed) as f64 / 1e9)
}

/// Whether the pollers are over their CPU budget now ([`BUDGET_RATIO`]).
pub fn throttled() -> bool {
    POLLER
        .get()
        .is_some_and(|p| p.throttled.load(Ordering::Relaxed))
}

/// How many polling threads run (0 until a window was first set).
pub fn threads() -> usize {
    POLLER.get().map_or(0, |p| p.threads.lock().len())
}

/// Sets the window; starts the polling threads, one per CPU this process
/// may use (at most [`MAX_POLLERS`]), the first time it is not 0.
fn set_window_us(us: u64) -> Result<(), String> {
    check_window_us(us)?;
    let p = poller();
    p.window_us.store(us, Ordering::SeqCst);
    // A new setting starts with a fresh budget and spins the whole window.
    p.budget.lock().credit_ns = MAX_CREDIT_NS;
    p.spin_us.store(us, Ordering::Relaxed);
    p.throttled.store(false, Ordering::Relaxed);
    if us == 0 {
        return Ok(());
    }
    let mut threads = p.threads.lock();
    if threads.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..n.min(MAX_POLLERS) {
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
            "idle polling is on in a cgroup with a CPU quota: the quota counts the pollers' spinning, so the node will be throttled sooner; use --idle-poll-us 0 or auto (off under a quota) with a CPU limit"
        );
    }
    touch();
    Ok(())
}

/// The CPU quota of this process's cgroup, in CPUs (`None`: no quota, or
/// none found). cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`.
pub fn cpu_quota() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cpu_quota_in(std::path::Path::new("/sys/fs/cgroup"), &own)
}

/// The smallest CPU quota on the way from this process's cgroup (as
/// `/proc/self/cgroup` names it) up to the hierarchy's root under `root`.
/// Ancestors count because a quota there limits everything below it. A
/// container without a cgroup namespace sees the host's path for its
/// cgroup while its own cgroup is mounted as the root, so a path that does
/// not exist is skipped and the root still read.
fn cpu_quota_in(root: &std::path::Path, own: &str) -> Option<f64> {
    let mut found: Option<f64> = None;
    let mut keep = |q: Option<f64>| {
        if let Some(q) = q {
            found = Some(found.map_or(q, |f: f64| f.min(q)));
        }
    };
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = std::path::Path::new(path.trim_start_matches('/'));
        let mut dirs: Vec<&std::path::Path> = path.ancestors().collect();
        dirs.dedup();
        if controllers.is_empty() {
            // v2: the unified hierarchy.
            for d in &dirs {
                let f = root.join(d).join("cpu.max");
                keep(
                    std::fs::read_to_string(f)
                        .ok()
                        .and_then(|t| parse_cpu_max(&t)),
                );
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            let mount = [controllers, "cpu", "cpu,cpuacct"]
                .into_iter()
                .map(|m| root.join(m))
                .find(|m| m.is_dir());
            let Some(mount) = mount else {
                continue;
            };
            for d in &dirs {
                let dir = mount.join(d);
                let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
                if let (Some(q), Some(p)) = (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")) {
                    keep(parse_cfs(&q, &p));
                }
            }
        }
    }
    found
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

/// Marks an input: pollers spin for the window from now, unless the node
/// was [`busy`] within the window.
#[inline]
pub fn touch() {
    let Some(p) = POLLER.get() else {
        return;
    };
    let window = p.window_us.load(Ordering::Relaxed);
    if window == 0 {
        return;
    }
    let now = p.now_us();
    if p.loaded(now, window) {
        return;
    }
    // Writes to the shared stamps are rare: at most one per 20 µs. (Two
    // threads may race here; either's result is fine.)
    let gap = now.saturating_sub(p.last_us.load(Ordering::Relaxed));
    if gap >= 20 {
        // The spin first: a poller that sees the new stamp must see it.
        let spin = p.spin_us.load(Ordering::Relaxed);
        let next = next_spin_us(spin, gap, window);
        if next != spin {
            p.spin_us.store(next, Ordering::SeqCst);
        }
        p.last_us.store(now, Ordering::SeqCst);
    }
    // Throttled pollers look again when the period ends; waking them
    // before would only put them back to sleep.
    if p.throttled.load(Ordering::Relaxed) && now < p.next_check_us.load(Ordering::Relaxed) {
        return;
    }
    if p.sleeping.load(Ordering::SeqCst) && p.sleeping.swap(false, Ordering::SeqCst) {
        for t in p.threads.lock().iter() {
            t.unpark();
        }
    }
}

/// `busy_us` before the first sign of load.
const NEVER: u64 = u64::MAX;

impl Poller {
    /// Whether the node showed load within `window` µs of `now`.
    fn loaded(&self, now: u64, window: u64) -> bool {
        let b = self.busy_us.load(Ordering::Relaxed);
        b != NEVER && now.saturating_sub(b) < window
    }
}

/// The shortest spin worth growing to (µs).
const MIN_SPIN_US: u64 = 50;

/// How long to spin after inputs, given the current spin and the gap (µs)
/// between the last two inputs, as the guest kernel's `haltpoll` adapts its
/// poll: a gap the spin bridged changes nothing; a gap a longer spin (up to
/// the window) would have bridged doubles it; a gap longer than the window
/// halves it, since spinning through it was wasted. A client that waits
/// for each answer sends its next write within a few hundred µs, so the
/// spin grows to the window and stays; writes that arrive far apart (open
/// loop, a trickle) shrink it to about the gaps inside one write, which is
/// all that spinning can bridge there.
fn next_spin_us(spin: u64, gap: u64, window: u64) -> u64 {
    if window <= MIN_SPIN_US {
        // Too short to adapt: always the whole window.
        return window;
    }
    if gap <= spin {
        spin.min(window)
    } else if gap <= window {
        (spin * 2).max(MIN_SPIN_US).min(window)
    } else if spin / 2 < MIN_SPIN_US {
        0
    } else {
        spin / 2
    }
}

/// Marks load: a write-path input found the node with more than one write
/// in flight. Its CPUs are then not about to idle, and spinning would only
/// get in the way of the threads doing the work (measured: 64 clients lost
/// ~13% of their throughput to pollers that spun in the short gaps), so
/// pollers stay asleep until a window has passed without load.
#[inline]
pub fn busy() {
    let Some(p) = POLLER.get() else {
        return;
    };
    if p.window_us.load(Ordering::Relaxed) == 0 {
        return;
    }
    let now = p.now_us();
    // As in `touch`: at most one store per 20 µs.
    let b = p.busy_us.load(Ordering::Relaxed);
    if b == NEVER || now.saturating_sub(b) >= 20 {
        p.busy_us.store(now, Ordering::Relaxed);
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
    // All of a poller's CPU time is the budget's "spent": the spin chunks
    // (also the spin metric) and the rest.
    let mut cpu = thread_cpu_ns();
    let mut account = |counter: &AtomicU64| {
        if let Some(now) = thread_cpu_ns() {
            if let Some(before) = cpu {
                counter.fetch_add(now.saturating_sub(before), Ordering::Relaxed);
            }
            cpu = Some(now);
        }
    };
    loop {
        p.check_budget();
        let window = p.window_us.load(Ordering::SeqCst);
        let active = |p: &Poller| {
            let now = p.now_us();
            window > 0
                && !p.throttled.load(Ordering::Relaxed)
                && now.saturating_sub(p.last_us.load(Ordering::SeqCst))
                    < p.spin_us.load(Ordering::SeqCst).min(window)
                && !p.loaded(now, window)
        };
        if active(p) {
            // A pause per turn (kinder to a sibling hyperthread); against
            // a plain loop it measured the same here, so the hypervisor's
            // pause-loop exiting does not take the CPU away.
            let until = Instant::now() + Duration::from_micros(SPIN_US);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            account(&p.spun_ns);
            continue;
        }
        p.sleeping.store(true, Ordering::SeqCst);
        if active(p) {
            continue;
        }
        // Over budget with an input waiting: look at the budget again once
        // this period is over (an input also wakes the pollers).
        let waiting = p.now_us().saturating_sub(p.last_us.load(Ordering::SeqCst))
            < p.spin_us.load(Ordering::Relaxed).min(window);
        let nap = if p.throttled.load(Ordering::Relaxed) && waiting {
            Duration::from_micros(BUDGET_PERIOD_US)
        } else {
            Duration::from_secs(1)
        };
        std::thread::park_timeout(nap);
        account(&p.overhead_ns);
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

    #[test]
    fn finds_quotas_on_the_cgroup_its_ancestors_or_a_container_root() {
        let root = tempfile::tempdir().unwrap();
        let put = |rel: &str, file: &str, text: &str| {
            let d = root.path().join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), text).unwrap();
        };
        // v2: no quota on the process's own cgroup, 1.5 CPUs on its parent,
        // none at the root.
        put("", "cpu.max", "max 100000\n");
        put("kubepods/pod1", "cpu.max", "150000 100000\n");
        put("kubepods/pod1/c1", "cpu.max", "max 100000\n");
        assert_eq!(
            cpu_quota_in(root.path(), "0::/kubepods/pod1/c1\n"),
            Some(1.5)
        );
        assert_eq!(cpu_quota_in(root.path(), "0::/\n"), None);
        // v1, a container without a cgroup namespace: the host's path does
        // not exist inside, its own cgroup is the mount's root.
        let v1 = tempfile::tempdir().unwrap();
        let d = v1.path().join("cpu,cpuacct");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cpu.cfs_quota_us"), "50000\n").unwrap();
        std::fs::write(d.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let own = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n";
        assert_eq!(cpu_quota_in(v1.path(), own), Some(0.5));
        // The smaller of two quotas on the way up wins.
        let n = d.join("docker/abc");
        std::fs::create_dir_all(&n).unwrap();
        std::fs::write(n.join("cpu.cfs_quota_us"), "25000\n").unwrap();
        std::fs::write(n.join("cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(cpu_quota_in(v1.path(), own), Some(0.25));
        // No quota anywhere.
        std::fs::write(d.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(n.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        assert_eq!(cpu_quota_in(v1.path(), own), None);
        assert_eq!(cpu_quota_in(v1.path(), "garbage\n"), None);
    }

    #[test]
    fn parses_auto_and_windows_and_says_what_was_wrong() {
        assert_eq!("auto".parse::<IdlePoll>(), Ok(IdlePoll::Auto));
        assert_eq!(" AUTO ".parse::<IdlePoll>(), Ok(IdlePoll::Auto));
        assert_eq!("0".parse::<IdlePoll>(), Ok(IdlePoll::Window(0)));
        assert_eq!("1000".parse::<IdlePoll>(), Ok(IdlePoll::Window(1000)));
        let err = "soon".parse::<IdlePoll>().unwrap_err();
        assert!(err.contains("neither `auto` nor a whole number"), "{err}");
        let err = "-5".parse::<IdlePoll>().unwrap_err();
        assert!(err.contains("neither `auto`"), "{err}");
        let err = "1000001".parse::<IdlePoll>().unwrap_err();
        assert!(err.contains("at most 1000000"), "{err}");
        for s in [IdlePoll::Auto, IdlePoll::Window(0), IdlePoll::Window(750)] {
            assert_eq!(s.to_string().parse::<IdlePoll>(), Ok(s));
        }
    }

    #[test]
    fn the_spin_grows_to_bridge_short_gaps_and_shrinks_after_long_ones() {
        let w = 1000;
        // Bridged: unchanged.
        assert_eq!(next_spin_us(400, 300, w), 400);
        // Too short for a gap the window covers: doubles, from at least 50.
        assert_eq!(next_spin_us(200, 300, w), 400);
        assert_eq!(next_spin_us(0, 300, w), MIN_SPIN_US);
        assert_eq!(next_spin_us(800, 900, w), w);
        // Longer than the window: halves, and stops below 50.
        assert_eq!(next_spin_us(w, 10_000, w), 500);
        assert_eq!(next_spin_us(90, 10_000, w), 0);
        // Windows up to 50 µs do not adapt (and must not panic).
        assert_eq!(next_spin_us(0, 25, 30), 30);
        assert_eq!(next_spin_us(30, 10_000, 30), 30);
        assert_eq!(next_spin_us(0, 25, 10), 10);
        assert_eq!(next_spin_us(0, 40, 51), 50);
        assert_eq!(next_spin_us(50, 51, 51), 51);
        // A closed-loop client (gaps ~0.3-0.5 ms) grows it to cover them
        // and keeps it; a trickle (inside-write gaps ~0.15 ms, 10 ms
        // between writes) keeps it within twice the inside-write gaps.
        let mut spin = 0;
        for gap in [300, 450, 350, 500, 300, 480, 420, 310].repeat(4) {
            spin = next_spin_us(spin, gap, w);
        }
        assert!(spin >= 500, "{spin}");
        let mut most = 0;
        let mut spin = w;
        for (i, gap) in [10_000, 150, 120].repeat(20).into_iter().enumerate() {
            spin = next_spin_us(spin, gap, w);
            if i >= 30 {
                most = most.max(spin);
            }
        }
        assert!(most <= 300, "spin reached {most} µs on a trickle");
    }

    #[test]
    fn auto_polls_only_with_two_cpus_and_no_quota() {
        assert_eq!(auto_window(None, 2).0, AUTO_WINDOW_US);
        assert_eq!(auto_window(None, 64).0, AUTO_WINDOW_US);
        let (us, why) = auto_window(None, 1);
        assert_eq!(us, 0);
        assert!(why.contains("one CPU"), "{why}");
        // Any quota, even a generous one, turns it off: the quota would
        // count the spinning and throttle the node's real work.
        let (us, why) = auto_window(Some(8.0), 16);
        assert_eq!(us, 0);
        assert!(why.contains("CPU quota (8.00 CPUs)"), "{why}");
        assert_eq!(auto_window(Some(0.5), 2).0, 0);
    }

    fn p_loaded_now() -> bool {
        let p = poller();
        p.loaded(p.now_us(), p.window_us.load(Ordering::Relaxed))
    }

    // One test: the poller is process-wide, so its steps must not interleave.
    #[test]
    fn pollers_spin_after_input_and_stop_when_it_ends() {
        let err = apply(IdlePoll::Window(MAX_WINDOW_US + 1)).unwrap_err();
        assert!(err.contains("at most 1000000"), "{err}");
        assert_eq!(window_us(), 0, "a refused window must not be set");
        assert_eq!(setting(), IdlePoll::Window(0));

        assert_eq!(apply(IdlePoll::Window(50_000)), Ok(50_000));
        assert_eq!(window_us(), 50_000);
        assert_eq!(setting(), IdlePoll::Window(50_000));
        assert!((1..=MAX_POLLERS).contains(&threads()), "{}", threads());
        assert!(threads() >= 1);
        // Asleep: no spin accounted for 300 ms. (A poller starved in the
        // middle of a chunk may still account that one chunk later.)
        let asleep = || {
            wait_until("pollers to go to sleep", Duration::from_secs(10), || {
                let a = spun_seconds();
                std::thread::sleep(Duration::from_millis(300));
                spun_seconds() == a
            })
        };
        // Setting the window counts as an input (nothing showed load yet);
        // once it has passed without another, the pollers sleep.
        assert!(!p_loaded_now());
        asleep();

        // The budget: inputs keep coming for a second while this process
        // does next to no work. Without a budget the pollers would spin
        // about a second each; with it, they spin no more than the rest of
        // the process worked, plus the credit and one period's overshoot
        // per poller. (Other tests running in this process earn credit
        // too, which is why the bound is stated against the work.)
        let (cpu0, spun0) = (process_cpu_ns().unwrap(), spun_seconds());
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            touch();
            std::thread::sleep(Duration::from_millis(2));
        }
        let spun = spun_seconds() - spun0;
        let work = (process_cpu_ns().unwrap() - cpu0) as f64 / 1e9 - spun;
        let allowance = work * BUDGET_RATIO
            + MAX_CREDIT_NS as f64 / 1e9
            + threads() as f64 * BUDGET_PERIOD_US as f64 / 1e6
            + 0.05;
        assert!(
            spun <= allowance,
            "pollers spun {spun:.3} s while the process worked {work:.3} s (allowed {allowance:.3} s)"
        );
        asleep();

        // Work earns credit back, and then one input wakes them and they
        // spin.
        let t0 = thread_cpu_ns().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while thread_cpu_ns().unwrap() - t0 < 300_000_000 && Instant::now() < deadline {
            std::hint::black_box((0..1000u64).sum::<u64>());
        }
        let before = spun_seconds();
        wait_until(
            "an input to wake the pollers",
            Duration::from_secs(10),
            || {
                touch();
                spun_seconds() > before + 0.001
            },
        );
        asleep();
        // Off: inputs no longer wake them.
        apply(IdlePoll::Window(0)).unwrap();
        let a = spun_seconds();
        for _ in 0..20 {
            touch();
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = spun_seconds();
        assert!(
            after - a < 0.001,
            "pollers spun {:.4} s while idle polling was off",
            after - a
        );
    }
}
