use std::{
    os::fd::AsFd,
    time::{Duration, Instant},
};

use rustix::{
    event::{PollFd, PollFlags, Timespec, poll},
    io::Errno,
};

use crate::{Error, Result};

/// Waits until some of `objects` are ready to read — a message, a pending connection, end of
/// file, a process exit — and returns their indices in input order; `[]` on timeout (Python's
/// `multiprocessing.connection.wait`). `None` waits forever.
///
/// Works over anything [`AsFd`]: connections, listeners, raw descriptors, process sentinels.
/// Mix kinds with `&dyn AsFd`.
///
/// ```
/// use std::{os::fd::AsFd, time::Duration};
///
/// let (a, b) = multiprocessing::connection::pipe(true)?;
/// let (c, d) = multiprocessing::connection::pipe(true)?;
/// assert!(multiprocessing::connection::wait(&[&b, &d], Some(Duration::ZERO))?.is_empty());
/// c.send_bytes(b"")?; // even an empty message counts
/// drop(a); // and so does end of file
/// let ready = multiprocessing::connection::wait(&[&b as &dyn AsFd, &d], None)?;
/// assert_eq!(ready, [0, 1]);
/// # Ok::<(), multiprocessing::connection::Error>(())
/// ```
///
/// # Errors
/// [`Error::Os`] if `poll` fails (e.g. a closed descriptor number).
pub fn wait<T: AsFd>(objects: &[T], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let deadline = timeout.map(|t| Instant::now().checked_add(t));
    let mut fds: Vec<PollFd<'_>> = objects
        .iter()
        .map(|o| PollFd::new(o, PollFlags::IN))
        .collect();
    loop {
        let left = match deadline {
            None => None,
            // A deadline past what `Instant` can hold is as good as forever.
            Some(None) => None,
            Some(Some(at)) => Some(at.saturating_duration_since(Instant::now())),
        };
        let spec = left.map(|d| {
            Timespec::try_from(d).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        match poll(&mut fds, spec.as_ref()) {
            Ok(0) => return Ok(Vec::new()),
            Ok(_) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Error::os("poll", e)),
        }
    }
    let bad = PollFlags::NVAL;
    if fds.iter().any(|f| f.revents().contains(bad)) {
        return Err(Error::os("poll", Errno::BADF));
    }
    Ok(fds
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.revents().is_empty())
        .map(|(i, _)| i)
        .collect())
}
