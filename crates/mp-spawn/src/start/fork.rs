//! `fork`: the child is a copy of the calling thread and runs the job straight from memory.

use std::os::fd::AsRawFd;

use mp_pipe::Connection;

use super::{Started, open_pidfd, socketpair};
use crate::{Error, Result, current, entry, process::Job, sys};

pub(crate) fn start<R: mp_codec::Encode + 'static>(
    job: Box<dyn Job<R>>,
    name: String,
    identity: Vec<u32>,
    daemon: bool,
) -> Result<Started> {
    let (ours, theirs) = socketpair()?;
    let parent = std::process::id();
    entry::install_panic_hook();
    // Everything the child needs is allocated here, before the fork.
    let me = current::prepare_child(name, identity, daemon, parent);
    let outcome = entry::outcome_buffer();
    // The child gets a copy of every lock as it is at this instant. Hold ours (and stdio's)
    // across the fork, so none of them is held by a thread that does not exist there.
    let forked = {
        let _stdout = std::io::stdout().lock();
        let _stderr = std::io::stderr().lock();
        let _server = super::forkserver::lock();
        let _me = current::lock();
        let _children = crate::registry::lock();
        sys::fork()
    };
    match forked.map_err(|e| Error::os("fork", e))? {
        None => {
            // The child. Only the job's own code runs from here, then `_exit`.
            drop(ours);
            if sys::die_with_parent(parent as i32).is_err() {
                entry::finish(entry::START_FAILED);
            }
            sys::skip_inherited_exit_handlers();
            current::install(me);
            let conn = Connection::from_unix_socket(theirs);
            let code = entry::run_target_into(outcome, &conn, move || job.run());
            drop(conn);
            entry::finish(code)
        }
        Some(pid) => {
            debug_assert!(theirs.as_raw_fd() >= 0);
            drop((theirs, me, outcome));
            let pidfd = match open_pidfd(pid as u32) {
                Ok(fd) => fd,
                Err(err) => {
                    sys::kill_and_reap(pid);
                    return Err(err);
                }
            };
            let pid = pid as u32;
            Ok(Started {
                pid,
                pidfd,
                own: true,
                status: None,
                conn: Connection::from_unix_socket(ours),
            })
        }
    }
}
