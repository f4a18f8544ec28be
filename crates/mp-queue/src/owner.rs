//! Who owns a frame mid-put or mid-get: an [`mp_sync::ProcessId`] in the frame's two owner
//! words, so pid reuse cannot fake a death and a checker in another pid namespace never
//! judges one (mp-sync's locks rest on the same proof).

use mp_sync::ProcessId;

/// A frame's owner, as stored in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner(pub(crate) [u64; 2]);

impl Owner {
    /// No process: a frame reserved under the producers' lock, owned by whoever holds it
    /// (never judged dead here: the lock's own take-over finds its holder's death).
    pub(crate) const LOCK_HOLDER: Owner = Owner([0, 0]);

    /// The calling process (cached: no system call on the hot path).
    pub(crate) fn me() -> Owner {
        Owner(ProcessId::current().to_words())
    }

    /// Whether this owner has surely exited. Unknown answers (another pid namespace, an
    /// unreadable `/proc`) are "alive": a frame is never taken from a live owner.
    pub(crate) fn is_dead(self) -> bool {
        // `LOCK_HOLDER` is `ProcessId::NONE`, which is never gone.
        ProcessId::from_words(self.0).is_gone()
    }

    #[cfg(test)]
    pub(crate) fn dead_for_tests() -> Owner {
        // Our namespaces, a pid above the largest pid_max (2^22): no process has it.
        let me = Owner::me().0;
        Owner([me[0], (1 << 23) << 32])
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
        child.wait().unwrap();
        let owner = Owner([Owner::me().0[0], u64::from(pid) << 32]);
        assert!(owner.is_dead());
        assert!(Owner::dead_for_tests().is_dead());
    }

    #[test]
    fn a_live_pid_with_another_start_time_is_dead() {
        let me = Owner::me();
        assert!(Owner([me.0[0], me.0[1] ^ 1]).is_dead(), "pid reused");
    }

    #[test]
    fn another_namespace_is_never_judged() {
        let me = Owner::me();
        assert!(!Owner([me.0[0] ^ 1, me.0[1] ^ 1]).is_dead());
        assert!(!Owner::LOCK_HOLDER.is_dead());
    }
}
