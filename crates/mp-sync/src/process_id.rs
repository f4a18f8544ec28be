//! `ProcessId`: a process as other processes can name it in shared memory and later ask
//! whether it is gone, with the same proof the locks use for their owners.

use crate::sys;

/// A process as stored in shared memory by code that must later tell whether it died: its
/// pid, the pid and time namespaces that give the pid and start time their meaning, and its
/// start time. Pid reuse cannot fake it (the start time differs), and a checker in other
/// namespaces never judges it (see [`ProcessId::is_gone`]). Two words, so it fits beside
/// other data; [`ProcessId::NONE`] (all zero) names no process and is never gone.
///
/// ```
/// let me = multiprocessing::synchronize::ProcessId::current();
/// assert!(!me.is_gone());
/// assert_eq!(multiprocessing::synchronize::ProcessId::from_words(me.to_words()), me);
/// assert!(!multiprocessing::synchronize::ProcessId::NONE.is_gone());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    /// The namespaces' identity (`sys::Me::ns`); 0 when unknown.
    ns: u64,
    /// The pid in the high half, the low 32 bits of the start time plus one in the low half
    /// (0: not recorded).
    pid_start: u64,
}

/// The bits of the start time a `ProcessId` keeps (clock ticks: over a year of uptime at
/// 100 Hz before they wrap, and a wrap only makes the proof fall back to the pidfd's).
const START: u64 = 0xffff_ffff;

impl ProcessId {
    /// No process: never gone.
    pub const NONE: ProcessId = ProcessId {
        ns: 0,
        pid_start: 0,
    };

    /// The calling process (no system call after the first in each process).
    #[inline]
    pub fn current() -> ProcessId {
        let me = sys::me();
        ProcessId {
            ns: me.ns,
            pid_start: u64::from(me.pid) << 32 | (me.start & START),
        }
    }

    /// The second of [`ProcessId::to_words`] for the calling process (pid and start time),
    /// cheaper than [`ProcessId::current`]: two loads after the first call in a process. A
    /// fork child gets its own, never its parent's.
    ///
    /// ```
    /// use multiprocessing::synchronize::ProcessId;
    /// assert_eq!(ProcessId::current_pid_word(), ProcessId::current().to_words()[1]);
    /// ```
    #[inline]
    pub fn current_pid_word() -> u64 {
        sys::pid_start()
    }

    /// The two words to store.
    #[inline]
    pub fn to_words(self) -> [u64; 2] {
        [self.ns, self.pid_start]
    }

    /// A process from two stored words (any words: what another process wrote is checked
    /// when asked about, never trusted).
    pub fn from_words(words: [u64; 2]) -> ProcessId {
        ProcessId {
            ns: words[0],
            pid_start: words[1],
        }
    }

    /// Whether this process has surely exited (a zombie counts). Only a checker in the same
    /// pid and time namespaces, whose `/proc` is its own, ever says yes; every answer that
    /// cannot be proved is "not gone", so nothing is ever taken from a live process.
    pub fn is_gone(self) -> bool {
        let me = sys::me();
        if self.ns == 0 || self.ns != me.ns {
            return false;
        }
        sys::is_gone((self.pid_start >> 32) as u32, self.pid_start & START, START)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_child_is_gone_and_a_live_process_is_not() {
        assert!(!ProcessId::current().is_gone());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let me = ProcessId::current();
        let child = ProcessId::from_words([me.ns, u64::from(pid) << 32]);
        assert!(child.is_gone());
    }

    #[test]
    fn our_pid_with_another_start_time_is_gone() {
        let me = ProcessId::current().to_words();
        let earlier = ProcessId::from_words([me[0], me[1] ^ 1]);
        assert!(earlier.is_gone(), "an earlier holder of our pid");
    }

    #[test]
    fn another_namespace_or_none_is_never_judged() {
        let me = ProcessId::current().to_words();
        assert!(!ProcessId::from_words([me[0] ^ 1, 1 << 62]).is_gone());
        assert!(!ProcessId::NONE.is_gone());
    }
}
