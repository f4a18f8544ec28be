//! Python's `multiprocessing.Queue`, `SimpleQueue` and `JoinableQueue`: multi-producer,
//! multi-consumer FIFOs between processes, on a ring of frames in shared memory.
//!
//! ```
//! let q = mp_queue::Queue::<(u32, String)>::new()?;
//! q.put((1, "one".to_string()))?;
//! assert_eq!(q.get()?, (1, "one".to_string()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - **No feeder thread.** A `put` copies the item into shared memory before it returns,
//!   so a process may exit right after it, and nothing is left to flush or join.
//! - **No locked instruction when one thread puts and one takes.** Each side's lock is
//!   biased to the thread that keeps taking it alone, which then enters and leaves with
//!   plain loads and stores; any other thread or process takes the side back with
//!   `membarrier(2)` (a fork child never uses its parent's bias). Only the first thread of a
//!   process to use a handle can hold a side biased through it.
//! - **No system call when busy.** Producers and consumers meet in shared memory; a waiter
//!   spins briefly before it sleeps on a futex, and is woken only when the queue turns
//!   non-empty (or non-full) while it sleeps.
//! - **Killed processes cost one item at most.** A process killed mid-`put` leaves no torn
//!   item (its item was never put); one killed mid-`get` loses the item it was taking. The
//!   others carry on: see [`Queue`] for the rule.
//! - **Items of any size, descriptors too.** An item larger than an eighth of the ring (or
//!   the limit set by [`Builder::in_ring_limit`]), or
//!   one that owns file descriptors (a `Connection`, another queue), travels beside the
//!   ring: its bytes in a memfd of its own, sent with its descriptors over a unix socket every
//!   handle holds, in the order of the frames. The memfd outlives its producer.
//! - **Hostile bytes are errors.** An item that fails to decode, or memory another process
//!   scribbled over, fails that `get` with an error and leaves the queue usable.
//! - **Handles are messages.** A fork inherits a queue; a pipe (or a `Process` argument)
//!   carries it to any process as a descriptor.
#![deny(missing_docs)]

mod bias;
mod error;
mod joinable;
mod owner;
mod queue;
mod ring;
mod sys;

pub use crate::{
    error::{Error, PutError, Result},
    joinable::{JoinableQueue, SimpleQueue},
    queue::{Builder, DEFAULT_CAPACITY, Queue, hung_up},
};
