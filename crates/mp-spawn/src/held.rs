//! The mutexes a fork holds (see `start::fork`), side by side in one aligned block.
//!
//! A forked child unlocks each of them as the fork returns, and its first write to a page it
//! shares with its parent costs it a copy of that page: kept together they cost one copy,
//! where four statics placed by the linker may straddle two pages or more.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicI32, AtomicU32},
};

use crate::{
    current::Me,
    registry::Registry,
    start::{channel::Pool, forkserver::Server},
};

/// The process's own state that a fork must not find locked.
#[repr(C, align(1024))]
pub(crate) struct Held {
    pub(crate) me: Mutex<Option<Me>>,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) server: Mutex<Option<Server>>,
    pub(crate) pool: Mutex<Pool>,
    /// See `registry`: read without a lock by every child as it exits.
    pub(crate) parent_of_any: AtomicU32,
    /// The pid of this process if our fork started it (see `current::forked_by_us`).
    pub(crate) forked_pid: AtomicU32,
    /// In a forked child, its result socket (see `sys::exit_guard`); -1 elsewhere.
    pub(crate) forked_outlet: AtomicI32,
    /// Whether this child's outcome has been (or is being) sent: one frame at most, though
    /// a thread may call `exit` as the target returns (see `entry::claim_outcome`).
    pub(crate) outcome_claimed: AtomicBool,
}

// Within one 1 KiB-aligned block, so within one page.
const _: () = assert!(size_of::<Held>() == 1024);

pub(crate) static HELD: Held = Held {
    me: Mutex::new(None),
    registry: Mutex::new(Registry::new()),
    server: Mutex::new(None),
    pool: Mutex::new(Pool::new()),
    parent_of_any: AtomicU32::new(0),
    forked_pid: AtomicU32::new(0),
    forked_outlet: AtomicI32::new(-1),
    outcome_claimed: AtomicBool::new(false),
};
