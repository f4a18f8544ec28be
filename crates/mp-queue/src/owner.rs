//! Who owns a frame mid-put or mid-get, told apart in a way pid reuse cannot fake.
//!
//! An owner is its pid, the inode of its pid namespace, and its start time (field 22 of
//! `/proc/PID/stat`, in clock ticks since boot). A process that has died may have its pid
//! taken by another: the start time tells them apart. A checker in another pid namespace
//! cannot read the pid at all, so it never concludes "dead": the frame then stays until a
//! process of the owner's namespace looks.

/// A process's identity, as stored in a frame header: `[pid | namespace << 32, start time]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner(pub(crate) [u64; 2]);

/// This process's identity, cached with the pid it was made for (a fork child has another).
/// Atomics, not a lock: a fork child must never wait for a lock another thread of its
/// parent held. Threads that race here compute and store the same words.
fn mine() -> Owner {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PID: AtomicU64 = AtomicU64::new(0);
    static WORDS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    let pid = mp_sync::current_pid(); // cached: no system call on the hot path
    if PID.load(Ordering::Acquire) == u64::from(pid) {
        return Owner([
            WORDS[0].load(Ordering::Relaxed),
            WORDS[1].load(Ordering::Relaxed),
        ]);
    }
    let owner = Owner([
        u64::from(pid) | u64::from(namespace().unwrap_or(0)) << 32,
        start_time(pid).unwrap_or(0),
    ]);
    PID.store(0, Ordering::Release);
    WORDS[0].store(owner.0[0], Ordering::Relaxed);
    WORDS[1].store(owner.0[1], Ordering::Relaxed);
    PID.store(u64::from(pid), Ordering::Release);
    owner
}

/// The low 32 bits of the inode of the caller's pid namespace.
fn namespace() -> Option<u32> {
    rustix::fs::stat("/proc/self/ns/pid")
        .ok()
        .map(|st| st.st_ino as u32)
}

/// Field 22 of `/proc/PID/stat` (after the command, which may hold spaces and parentheses),
/// or `None` if there is no such process (or it is a zombie: it has exited).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // Field 3 is the state; 22 the start time: the 1st and 20th after the command.
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl Owner {
    /// No process: a frame reserved under the producers' lock, owned by whoever holds it
    /// (never judged dead here: the lock's own take-over finds its holder's death).
    pub(crate) const LOCK_HOLDER: Owner = Owner([0, 0]);

    /// The calling process.
    pub(crate) fn me() -> Owner {
        mine()
    }

    fn pid(self) -> u32 {
        self.0[0] as u32
    }

    /// Whether this owner has surely exited. Unknown answers (another pid namespace, an
    /// unreadable `/proc`) are "alive": a frame is never taken from a live owner.
    pub(crate) fn is_dead(self) -> bool {
        if self == Owner::LOCK_HOLDER {
            return false;
        }
        let me = Owner::me();
        if self.0[0] >> 32 != me.0[0] >> 32 || me.0[1] == 0 {
            return false; // another namespace, or no /proc to ask
        }
        if self.pid() == me.pid() {
            return self.0[1] != me.0[1];
        }
        match start_time(self.pid()) {
            None => std::fs::metadata("/proc/self/stat").is_ok(),
            Some(started) => started != self.0[1],
        }
    }

    #[cfg(test)]
    pub(crate) fn dead_for_tests() -> Owner {
        // Above the largest pid_max (2^22): no process has it.
        Owner([(Owner::me().0[0] & !0xffff_ffff) | (1 << 23), 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i_am_alive_and_a_reaped_child_is_dead() {
        assert!(!Owner::me().is_dead());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = start_time(pid);
        child.wait().unwrap();
        let owner = Owner([
            Owner::me().0[0] & !0xffff_ffff | u64::from(pid),
            started.unwrap_or(1),
        ]);
        assert!(owner.is_dead());
        assert!(Owner::dead_for_tests().is_dead());
    }

    #[test]
    fn a_live_pid_with_another_start_time_is_dead() {
        let me = Owner::me();
        assert!(Owner([me.0[0], me.0[1] + 1]).is_dead(), "pid reused");
    }

    #[test]
    fn another_namespace_is_never_judged() {
        let me = Owner::me();
        assert!(!Owner([me.0[0] ^ (1 << 40), 1]).is_dead());
    }
}
