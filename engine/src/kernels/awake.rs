//! Keeping the processors from halting during a forward pass. Between two kernels of a pass a
//! pool thread may find no work and sleep; when nothing else runs on its processor, the
//! processor idles, and in a virtual machine an idle processor halts: the host deschedules it,
//! and waking a thread there for the next kernel costs the hypervisor's wake-up. Measured on this
//! project's 2-core VMs (`perf sched timehist`): 30–55 µs from the wake to the thread running on a
//! processor that sat idle, against ~0 on a busy one. A decode step of ds-v3-mini has hundreds of
//! such wakes: each parallel region's helper thread, and the actor runtime's hand-offs between
//! actors (a kernel's end wakes an actor, whose next kernel wakes a pool thread).
//!
//! While a [`KeepAwake`] guard lives (and for [`LINGER`] after the last one drops, so that
//! consecutive decode steps stay covered), this module holds a Linux PM QoS request of 0 µs
//! wake-up latency (`/dev/cpu_dma_latency`): the idle processors poll instead of halting, as the
//! kernel's `haltpoll` does with `guest_halt_poll_ns` set. The reference executor and the actor
//! runtime take a guard per forward pass. Measured (`troupe bench -p 0 -n 64 --compute bf16`,
//! 2 threads, alternated): tg64 of ds-v3-mini 64.7 → 77.9 tok/s (reference), 55.7 → 65.8
//! (actor runtime); a machine with `guest_halt_poll_ns = 200000` gave the same.
//!
//! The request is the whole machine's while held (every processor polls when idle, which costs
//! power, not time), it needs write access to `/dev/cpu_dma_latency` (root, or a udev rule), and
//! where it cannot be made nothing happens ([`status`] says why). Spinner threads under
//! `SCHED_IDLE` were tried instead (a user-space poll that needs no privilege): they made decode
//! slower (68 → 46 tok/s with `pause` loops, 68–70 → 64–66 with `sched_yield` loops), because a pool
//! thread spinning in `sched_yield` for work hands its processor to them. `TROUPE_KEEP_AWAKE=0`
//! (or the CLI's `--no-keep-awake`) turns it off. It changes when threads run, never what a kernel
//! computes: results are the same bits.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the request stays after the last guard dropped.
pub const LINGER: Duration = Duration::from_millis(20);

/// The PM QoS device: a request lives while the file is open.
const QOS_DEVICE: &str = "/dev/cpu_dma_latency";

/// Turned off by [`set_enabled`]`(false)` or `TROUPE_KEEP_AWAKE=0`.
static ENABLED: AtomicBool = AtomicBool::new(true);

static KEEPER: OnceLock<Arc<Keeper>> = OnceLock::new();

/// What a guard does on this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// No guard made yet (the request is tried on the first).
    Untried,
    /// Guards have held a 0 µs wake-up latency request (and do).
    Polling,
    /// Turned off (`TROUPE_KEEP_AWAKE=0`, `--no-keep-awake`).
    Off,
    /// The request cannot be made here: why (e.g. no write access to `/dev/cpu_dma_latency`).
    Unavailable(String),
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Untried => write!(f, "not tried yet"),
            Status::Polling => write!(f, "idle processors poll during passes ({QOS_DEVICE} = 0)"),
            Status::Off => write!(f, "off"),
            Status::Unavailable(why) => write!(f, "unavailable ({why})"),
        }
    }
}

/// While alive, the processors do not halt between kernels (see the module doc).
#[must_use = "the processors stay awake only while the guard lives"]
pub struct KeepAwake(Option<Arc<Keeper>>);

/// A guard for a forward pass (or any stretch of many short kernels). Cheap: an atomic add, and
/// a notify when it is the first.
pub fn keep_awake() -> KeepAwake {
    if !enabled() {
        return KeepAwake(None);
    }
    KEEPER
        .get_or_init(|| Keeper::start(PathBuf::from(QOS_DEVICE)))
        .guard()
}

/// What guards do on this process.
pub fn status() -> Status {
    if !enabled() {
        return Status::Off;
    }
    KEEPER.get().map_or(Status::Untried, |k| k.status())
}

/// Whether guards make the request (default yes, unless `TROUPE_KEEP_AWAKE=0`).
pub fn enabled() -> bool {
    static FROM_ENV: OnceLock<()> = OnceLock::new();
    FROM_ENV.get_or_init(|| {
        if std::env::var("TROUPE_KEEP_AWAKE").is_ok_and(|v| v.trim() == "0") {
            ENABLED.store(false, Ordering::Relaxed);
        }
    });
    ENABLED.load(Ordering::Relaxed)
}

/// Turns the request on or off for this process (guards made while off do nothing).
pub fn set_enabled(on: bool) {
    let _ = enabled();
    ENABLED.store(on, Ordering::Relaxed);
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        if let Some(k) = self.0.take() {
            let now = (k.epoch.elapsed().as_nanos() as u64).max(1);
            k.released_at.store(now, Ordering::Release);
            k.guards.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The thread holding the request while guards want it (the process has one, [`keep_awake`]'s;
/// tests make their own on another file).
struct Keeper {
    device: PathBuf,
    /// Guards alive.
    guards: AtomicUsize,
    /// When the last guard dropped (ns since `epoch`, at least 1; 0: none has dropped yet).
    released_at: AtomicU64,
    epoch: Instant,
    /// Whether the request is held now.
    held: AtomicBool,
    /// Whether a request was ever made.
    made: AtomicBool,
    /// Set when the device cannot be opened or written (the keeper has ended).
    unavailable: Mutex<Option<String>>,
    /// The keeper waits here for the next guard.
    wake: (Mutex<()>, Condvar),
}

impl Keeper {
    fn start(device: PathBuf) -> Arc<Keeper> {
        let k = Arc::new(Keeper {
            device,
            guards: AtomicUsize::new(0),
            released_at: AtomicU64::new(0),
            epoch: Instant::now(),
            held: AtomicBool::new(false),
            made: AtomicBool::new(false),
            unavailable: Mutex::new(None),
            wake: (Mutex::new(()), Condvar::new()),
        });
        let k2 = k.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("troupe-keep-awake".into())
            .spawn(move || k2.run())
        {
            k.set_unavailable(format!("thread: {e}"));
        }
        k
    }

    fn guard(self: &Arc<Self>) -> KeepAwake {
        if self.guards.fetch_add(1, Ordering::AcqRel) == 0 {
            let _lock = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.1.notify_all();
        }
        KeepAwake(Some(self.clone()))
    }

    fn status(&self) -> Status {
        match &*self.unavailable.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Status::Unavailable(why.clone()),
            None if self.made.load(Ordering::Acquire) => Status::Polling,
            None => Status::Untried,
        }
    }

    fn set_unavailable(&self, why: String) {
        *self.unavailable.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Whether a guard lives, or the last one dropped less than [`LINGER`] ago.
    fn wanted(&self) -> bool {
        if self.guards.load(Ordering::Acquire) > 0 {
            return true;
        }
        let released = self.released_at.load(Ordering::Acquire);
        let now = self.epoch.elapsed().as_nanos() as u64;
        released != 0 && now.saturating_sub(released) < LINGER.as_nanos() as u64
    }

    /// Opens the device and asks for 0 µs (the request lives until the file is closed).
    fn request(&self) -> std::io::Result<File> {
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.device)?;
        f.write_all(&0i32.to_ne_bytes())?;
        Ok(f)
    }

    /// The keeper's life: wait for a guard, hold the request while wanted, drop it, again.
    fn run(&self) {
        loop {
            {
                let lock = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
                // A guard made between the last check and the lock notified under the lock.
                if !self.wanted() {
                    let _unused = self
                        .wake
                        .1
                        .wait_timeout(lock, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner());
                    continue;
                }
            }
            let request = match self.request() {
                Ok(f) => f,
                Err(e) => {
                    self.set_unavailable(format!("{}: {e}", self.device.display()));
                    return;
                }
            };
            self.made.store(true, Ordering::Release);
            self.held.store(true, Ordering::Release);
            while self.wanted() {
                std::thread::sleep(LINGER / 4);
            }
            drop(request);
            self.held.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (up to 20 s: other tests may keep the processors busy) until `cond` holds.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(t0.elapsed() < Duration::from_secs(20), "never: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn the_request_is_held_while_a_guard_lives_and_dropped_after_the_linger() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("qos");
        std::fs::write(&device, b"unset").unwrap();
        let k = Keeper::start(device.clone());
        // No guard yet: a fresh keeper is not inside a linger (it was, for its first 20 ms).
        std::thread::sleep(LINGER * 2);
        assert!(
            !k.made.load(Ordering::Acquire),
            "requested before any guard"
        );
        assert_eq!(std::fs::read(&device).unwrap(), b"unset");
        let guard = k.guard();
        eventually("held under a guard", || k.held.load(Ordering::Acquire));
        // The request is a 4-byte 0 (µs), written over the file's start.
        assert_eq!(&std::fs::read(&device).unwrap()[..4], &[0u8; 4]);
        assert_eq!(k.status(), Status::Polling);
        let second = k.guard();
        drop(guard);
        std::thread::sleep(LINGER * 2);
        assert!(
            k.held.load(Ordering::Acquire),
            "dropped while a guard lives"
        );
        let dropped = Instant::now();
        drop(second);
        eventually("dropped after the last guard", || {
            !k.held.load(Ordering::Acquire)
        });
        assert!(dropped.elapsed() >= LINGER, "dropped before the linger");
        let _again = k.guard();
        eventually("held again", || k.held.load(Ordering::Acquire));
    }

    #[test]
    fn a_device_that_cannot_be_opened_makes_guards_do_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keeper::start(dir.path().join("missing"));
        let _guard = k.guard();
        eventually("unavailable", || k.status() != Status::Untried);
        let Status::Unavailable(why) = k.status() else {
            panic!("{:?}", k.status())
        };
        assert!(why.contains("missing"), "{why}");
        assert!(!k.held.load(Ordering::Acquire));
    }
}
