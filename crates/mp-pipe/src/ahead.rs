//! Which connections hold bytes of a next message read ahead: a poll on their descriptor
//! would not see them, so [`wait`](crate::wait) asks here first.

use std::{
    os::fd::RawFd,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

/// How many descriptors are listed: zero (the common case) costs `wait` one load.
static COUNT: AtomicUsize = AtomicUsize::new(0);
static LISTED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Lists `fd` (`true`) or takes it off the list (`false`).
pub(crate) fn mark(fd: RawFd, buffered: bool) {
    let mut listed = LISTED.lock().unwrap_or_else(PoisonError::into_inner);
    if buffered {
        listed.push(fd);
    } else if let Some(i) = listed.iter().position(|&f| f == fd) {
        listed.swap_remove(i);
    }
    COUNT.store(listed.len(), Ordering::Release);
}

/// For each descriptor, whether it is listed; `None` when nothing is.
pub(crate) fn listed(fds: impl Iterator<Item = RawFd>) -> Option<Vec<bool>> {
    if COUNT.load(Ordering::Acquire) == 0 {
        return None;
    }
    let listed = LISTED.lock().unwrap_or_else(PoisonError::into_inner);
    let marks: Vec<bool> = fds.map(|fd| listed.contains(&fd)).collect();
    marks.contains(&true).then_some(marks)
}
