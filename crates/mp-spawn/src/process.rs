use std::{
    marker::PhantomData,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use mp_codec::{Decode, Frame, Message};
use rustix::process::{Signal, WaitId, WaitIdOptions, WaitIdStatus, pidfd_send_signal, waitid};

use crate::{
    Error, Result, StartMethod, current,
    entry::{self, EXITED, FAILED, PANICKED, RETURNED},
    get_start_method, registry,
    start::{self, Results, Started, channel},
};

/// What a child runs: a zero-sized target with its argument, or (fork only) a closure.
pub(crate) trait Job<R>: 'static {
    /// The bootstrap message that lets an exec'd child run this; `None` if it cannot.
    fn bootstrap(
        &self,
        name: &str,
        identity: &[u32],
        daemon: bool,
        method: StartMethod,
    ) -> Option<Result<Frame>>;
    /// Runs the job, in a forked child.
    fn run(self) -> R
    where
        Self: Sized;
    /// Forks a child that runs this job: [`start::fork::start`] made for this job's own
    /// type, so the child's call of `run` is direct and its code lies with the rest of the
    /// child's path (one page fewer for the child to fault in).
    /// `me` is this process's pid.
    fn fork(
        self: Box<Self>,
        name: String,
        identity: Vec<u32>,
        daemon: bool,
        me: u32,
    ) -> Result<Process<R>>;
}

struct FnJob<F, A> {
    target: F,
    args: A,
}

impl<F, A, R> Job<R> for FnJob<F, A>
where
    F: Fn(A) -> R + Copy + 'static,
    A: Message + 'static,
    R: Message + 'static,
{
    fn bootstrap(
        &self,
        name: &str,
        identity: &[u32],
        daemon: bool,
        method: StartMethod,
    ) -> Option<Result<Frame>> {
        Some(entry::bootstrap_frame(
            &self.target,
            &self.args,
            name,
            identity,
            daemon,
            method,
        ))
    }

    #[inline]
    fn run(self) -> R {
        (self.target)(self.args)
    }

    fn fork(
        self: Box<Self>,
        name: String,
        identity: Vec<u32>,
        daemon: bool,
        me: u32,
    ) -> Result<Process<R>> {
        start::fork::start(self, name, identity, daemon, me)
    }
}

struct ClosureJob<F>(F);

impl<R: mp_codec::Encode + 'static, F: FnOnce() -> R + 'static> Job<R> for ClosureJob<F> {
    fn bootstrap(&self, _: &str, _: &[u32], _: bool, _: StartMethod) -> Option<Result<Frame>> {
        None
    }

    #[inline]
    fn run(self) -> R {
        (self.0)()
    }

    fn fork(
        self: Box<Self>,
        name: String,
        identity: Vec<u32>,
        daemon: bool,
        me: u32,
    ) -> Result<Process<R>> {
        start::fork::start(self, name, identity, daemon, me)
    }
}

/// A process not started yet: set its name, daemon flag and start method, then
/// [`start`](Builder::start) it.
#[must_use = "a Builder does nothing until started"]
pub struct Builder<R> {
    job: Box<dyn Job<R>>,
    name: Option<String>,
    daemon: bool,
    method: Option<StartMethod>,
}

impl<R: Message + 'static> Builder<R> {
    /// The process's name (default `Process-N`, numbered per parent as in Python).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A daemonic process is killed when its parent exits; a non-daemonic one is joined.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// How to start it (default: [`get_start_method`]).
    pub fn method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Starts the process.
    ///
    /// # Errors
    /// [`Error::ForkOnly`] for a closure with another start method, [`Error::Codec`] if the
    /// arguments cannot be encoded, [`Error::RecursiveSpawn`], or [`Error::Os`].
    pub fn start(self) -> Result<Process<R>> {
        let method = self.method.unwrap_or_else(get_start_method);
        let (default_name, identity, me) = current::next_child();
        let name = self.name.unwrap_or(default_name);
        if method == StartMethod::Fork {
            // The name goes to the child and comes back: no copy to make and free. The
            // child's registry entry is made around the fork.
            self.job.fork(name, identity, self.daemon, me)
        } else {
            start_exec(&*self.job, method, name, identity, self.daemon)
        }
    }
}

/// Starts an exec'd child (spawn, forkserver) and registers it. Kept out of
/// [`Builder::start`], whose frame it would otherwise make several times larger: after a
/// fork, every page of stack the parent and the child write costs a copy, and a deeper
/// path to the fork straddles a page boundary more often.
#[inline(never)]
fn start_exec<R: Message + 'static>(
    job: &dyn Job<R>,
    method: StartMethod,
    name: String,
    identity: Vec<u32>,
    daemon: bool,
) -> Result<Process<R>> {
    let frame = job
        .bootstrap(&name, &identity, daemon, method)
        .ok_or(Error::ForkOnly)??;
    let mut started = if method == StartMethod::Spawn {
        start::spawn::start(frame)?
    } else {
        start::forkserver::start(frame)?
    };
    let pidfd = started.pidfd.take().map(Arc::new);
    let serial = registry::register(
        started.pid,
        &name,
        daemon,
        started.own,
        pidfd.clone(),
        current::pid(),
    );
    Ok(Process::made(
        started, name, identity, pidfd, serial, daemon, method,
    ))
}

/// A child process running a target: Python's `multiprocessing.Process`.
///
/// `join` returns the target's value, or says what happened instead: it panicked (with the
/// message), exited with a code, or was killed by a signal. `exitcode` follows Python: 0, 1
/// after a panic, N after `exit(N)`, −SIG when killed.
///
/// A forked child whose target returns `()` (or anything else that encodes to no bytes)
/// says so by exit status 0 alone, sending nothing; `exit(0)` is told apart from it. A
/// target that ends its process with status 0 past every exit handler (`libc::_exit(0)`,
/// `quick_exit(0)`, an `exec` of a program that exits 0) reads as having returned.
///
/// A forked child that calls `exit` runs none of its parent's exit handlers, but glibc's
/// `exit` runs the calling thread's thread-local destructors before any handler: called
/// from the thread the child started on, it drops the thread-locals with a `Drop` that this
/// thread copied from the parent's (with those the target made). A guard that ran first
/// would have to be registered in each child, at about twenty µs a fork here, and could
/// still not learn the exit status. A target that must not drop them returns or panics.
///
/// ```
/// use multiprocessing::process::{Error, Process};
///
/// fn half(n: u32) -> u32 {
///     assert!(n % 2 == 0, "{n} is odd");
///     n / 2
/// }
///
/// assert_eq!(Process::new(half, 10).start()?.join()?, 5);
/// let mut odd = Process::new(half, 7).name("halver").start()?;
/// match odd.join() {
///     Err(Error::Panicked { name, message }) => {
///         assert_eq!(name, "halver");
///         assert_eq!(message, "7 is odd");
///     }
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(odd.exitcode(), Some(1));
/// # Ok::<(), multiprocessing::process::Error>(())
/// ```
#[derive(Debug)]
pub struct Process<R> {
    name: String,
    /// Python's `_identity`. Kept, not freed when the child starts: for a fork, every page
    /// the parent writes while the child runs costs a copy (see `start::fork`).
    #[expect(dead_code, reason = "held to be freed with the Process")]
    identity: Vec<u32>,
    pid: u32,
    daemon: bool,
    method: StartMethod,
    /// A pidfd (a forkserver's child has one from the start; ours get one when first
    /// needed), or after the end a descriptor that is always readable.
    sentinel: OnceLock<Arc<OwnedFd>>,
    own: bool,
    status: Option<OwnedFd>,
    results: Option<Results>,
    outcome: Option<Frame>,
    exitcode: Option<i32>,
    joined: bool,
    /// The child's result socket held nothing at its end (see `take_outcome`).
    sent_nothing: bool,
    /// Its entry in the registry.
    serial: u64,
    _result: PhantomData<fn() -> R>,
}

impl<R: Message + 'static> Process<R> {
    /// A process that will run `target(args)`. The target is a function item (`square`) or a
    /// closure that captures nothing (`|x: u8| x + 1`): a type with no bytes, which names
    /// one function at compile time. A function *pointer* (`fn(A) -> R`) or a closure with
    /// captures of any size is refused at compile time; use [`Process::fork`] for a closure
    /// with captures. (A closure whose captures are all zero-sized and `Copy` has no bytes
    /// and passes: the child makes its own copy of those values, as `Copy` allows. Do not
    /// capture a zero-sized token that stands for "this was done in this process".)
    ///
    /// Why: an exec'd child (spawn, forkserver) learns what to run from bytes it receives,
    /// and whoever can start this program could write those bytes. So the child never calls
    /// an address taken from them: each target type used here adds an entry to a table the
    /// executable holds, and the bytes only choose among its entries (checked against the
    /// argument and result types). A function pointer chosen at run time has no entry.
    ///
    /// ```compile_fail,E0080
    /// fn square(x: u64) -> u64 { x * x }
    /// let chosen: fn(u64) -> u64 = square; // a pointer: 8 bytes, chosen at run time
    /// let _ = multiprocessing::process::Process::new(chosen, 3).start();
    /// ```
    #[expect(
        clippy::new_ret_no_self,
        reason = "Python's Process(target, args) is configured, then started: a builder"
    )]
    pub fn new<F, A>(target: F, args: A) -> Builder<R>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
    {
        const {
            assert!(
                size_of::<F>() == 0,
                "Process::new takes a fn item or a closure without captures; use \
                 Process::fork for closures with captures"
            )
        };
        Builder {
            job: Box::new(FnJob { target, args }),
            name: None,
            daemon: false,
            method: None,
        }
    }

    /// A process that runs a closure, which may capture anything: fork only, since the
    /// closure lives in this process's memory.
    ///
    /// In a multi-threaded parent only the calling thread is copied: a lock another thread
    /// held at that moment stays locked in the child forever (stdout's, the allocator's, or
    /// your own), so keep such children simple or start them before other threads.
    ///
    /// ```
    /// let words = vec!["a", "bb", "ccc"];
    /// let mut child = multiprocessing::process::Process::fork(move || words.iter().map(|w| w.len()).sum::<usize>()).start()?;
    /// assert_eq!(child.join()?, 6);
    /// # Ok::<(), multiprocessing::process::Error>(())
    /// ```
    pub fn fork<F: FnOnce() -> R + 'static>(body: F) -> Builder<R> {
        Builder {
            job: Box::new(ClosureJob(body)),
            name: None,
            daemon: false,
            method: Some(StartMethod::Fork),
        }
    }
}

impl<R> Process<R> {
    /// A `Process` for a child just started.
    pub(crate) fn made(
        started: Started,
        name: String,
        identity: Vec<u32>,
        sentinel: Option<Arc<OwnedFd>>,
        serial: u64,
        daemon: bool,
        method: StartMethod,
    ) -> Self {
        Process {
            name,
            identity,
            pid: started.pid,
            daemon,
            method,
            sentinel: sentinel.map_or_else(OnceLock::new, OnceLock::from),
            own: started.own,
            status: started.status,
            results: Some(started.results),
            outcome: None,
            exitcode: None,
            joined: false,
            sent_nothing: false,
            serial,
            _result: PhantomData,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is daemonic.
    pub fn daemon(&self) -> bool {
        self.daemon
    }

    /// How it was started.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// A descriptor that becomes readable when the process ends (a pidfd), for
    /// `connection::wait` alongside connections. Opened on first use.
    ///
    /// # Errors
    /// [`Error::Os`] if no descriptor can be opened (the process limit on descriptors).
    pub fn sentinel(&self) -> Result<BorrowedFd<'_>> {
        if let Some(fd) = self.sentinel.get() {
            return Ok(fd.as_fd());
        }
        let fd = if self.exitcode.is_some() {
            // Reaped: its pid may belong to another process now. An empty pipe whose
            // writer is closed reads as at its end forever: "ended".
            let (reader, _) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| Error::os("pipe2", e))?;
            reader
        } else {
            // Our own child, not reaped yet (only we reap it): its pid is still its own.
            start::open_pidfd(self.pid)?
        };
        Ok(self.sentinel.get_or_init(|| Arc::new(fd)).as_fd())
    }

    /// Whether the process is still running.
    pub fn is_alive(&self) -> bool {
        if self.exitcode.is_some() {
            return false;
        }
        if self.own {
            // Look without reaping: `is_alive` takes `&self` and keeps no exit status.
            return matches!(
                waitid(
                    self.wait_id(),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
                ),
                Ok(None)
            );
        }
        self.sentinel()
            .is_ok_and(|fd| !readable(fd, Some(Duration::ZERO)))
    }

    /// How `waitid` names our own child.
    fn wait_id(&self) -> WaitId<'static> {
        WaitId::Pid(
            rustix::process::Pid::from_raw(self.pid as i32).expect("a child's pid is positive"),
        )
    }

    /// The exit code once the process has ended (reaping it), `None` while it runs.
    pub fn exitcode(&mut self) -> Option<i32> {
        if self.exitcode.is_none() {
            let _ = self.wait_until(Some(Instant::now()));
        }
        self.exitcode
    }

    /// Sends `SIGTERM` (Python's `terminate`). Nothing happens if it has already ended.
    ///
    /// # Errors
    /// [`Error::Os`] from `pidfd_send_signal`.
    pub fn terminate(&self) -> Result<()> {
        self.signal(Signal::TERM)
    }

    /// Sends `SIGKILL` (Python's `kill`).
    ///
    /// # Errors
    /// [`Error::Os`] from `pidfd_send_signal`.
    pub fn kill(&self) -> Result<()> {
        self.signal(Signal::KILL)
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        if self.exitcode.is_some() {
            return Ok(());
        }
        let sent = if self.own {
            // Our own unreaped child: its pid is still its own.
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(self.pid as i32).expect("a child's pid is positive"),
                signal,
            )
        } else {
            pidfd_send_signal(self.sentinel()?, signal)
        };
        match sent {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(Error::os("kill", e)),
        }
    }

    /// Waits until the process ends or `deadline` passes; returns whether it has ended (and
    /// been reaped). A child never blocks on sending its result (see `entry::send_outcome`),
    /// so waiting for the exit alone is enough: one wake-up.
    fn wait_until(&mut self, deadline: Option<Instant>) -> Result<bool> {
        while self.exitcode.is_none() {
            if self.own {
                // Our own child needs no pidfd to wait without a timeout (sleep in `waitid`
                // itself) or to look.
                match deadline {
                    None => {
                        self.reap(WaitIdOptions::EXITED)?;
                        continue;
                    }
                    Some(d) if d <= Instant::now() => {
                        self.reap(WaitIdOptions::EXITED | WaitIdOptions::NOHANG)?;
                        if self.exitcode.is_none() {
                            return Ok(false);
                        }
                        continue;
                    }
                    Some(_) => {}
                }
            }
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let sentinel = self.sentinel()?;
            let ended = match &self.status {
                // A forkserver's child: its status pipe turns readable once the server has
                // reaped it (or died), which no reuse of its pid can fake.
                Some(status) => mp_pipe::wait(&[&sentinel, &status.as_fd()], timeout)
                    .is_ok_and(|ready| !ready.is_empty()),
                None => readable(sentinel, timeout),
            };
            if !ended {
                return Ok(false);
            }
            self.reap(WaitIdOptions::EXITED | WaitIdOptions::NOHANG)?;
        }
        self.take_outcome();
        Ok(true)
    }

    /// Receives the result, once the child has exited: whatever it sent is all there, so
    /// never block on a half frame.
    fn take_outcome(&mut self) {
        match self.results.take() {
            Some(Results::Conn(conn)) => {
                let _ = conn.set_nonblocking(true);
                if let Ok(frame) = conn.recv_frame() {
                    self.outcome = entry::unpack_outcome(frame).ok();
                }
            }
            Some(Results::Pooled {
                channel,
                bootstrapped,
            }) => {
                let mut frame = Frame::new();
                // A child of `()` sends nothing, most often: a peek at one byte says so
                // from a shallow frame (a full receive makes room for descriptors on the
                // stack, a page deeper: one more page for the parent to write each start).
                let received = if nothing_waiting(channel.ours.as_fd()) {
                    Err(mp_codec::Error::WouldBlock)
                } else {
                    mp_codec::wire::recv_frame(
                        &channel.ours,
                        mp_codec::wire::DEFAULT_MAX_LEN,
                        &mut frame,
                    )
                };
                match received {
                    Ok(()) => {
                        self.outcome = entry::unpack_outcome(frame).ok();
                        channel::give_back(channel);
                    }
                    // Nothing sent at all (the child was killed, or returned `()` by
                    // exit status alone): still clean, unless a bootstrap sent the other way
                    // may be left in it.
                    Err(mp_codec::Error::WouldBlock) => {
                        self.sent_nothing = true;
                        if !bootstrapped {
                            channel::give_back(channel)
                        }
                    }
                    // A frame cut short: the pair is out of step, so it is closed.
                    Err(_) => {}
                }
            }
            None => {}
        }
    }

    /// The process has ended: collect its exit status. A forkserver's child is reaped by the
    /// server; when the child reported how it ended, that gives its exit code without
    /// waiting for the server's report (one wake-up fewer), else the report is read.
    fn reap(&mut self, how: WaitIdOptions) -> Result<()> {
        let code = if self.status.is_some() {
            self.take_outcome();
            match self.outcome.as_ref().and_then(|f| f.bytes.first()) {
                Some(&RETURNED) => 0,
                Some(&PANICKED | &FAILED) => entry::START_FAILED,
                _ => {
                    let mut word = [0u8; 4];
                    let status = self.status.as_ref().expect("checked above");
                    match rustix::io::read(status, &mut word) {
                        Ok(4) => i32::from_le_bytes(word),
                        // The forkserver died before reporting: its children die with it.
                        _ => -libc::SIGKILL,
                    }
                }
            }
        } else {
            match waitid(self.wait_id(), how) {
                Ok(Some(status)) => exit_code(&status),
                Ok(None) | Err(rustix::io::Errno::INTR) => return Ok(()), // not yet
                Err(e) => return Err(Error::os("waitid", e)),
            }
        };
        self.exitcode = Some(code);
        registry::forget(self.serial);
        Ok(())
    }
}

impl<R: Decode> Process<R> {
    /// Waits for the process to end and returns the target's value.
    ///
    /// # Errors
    /// [`Error::Panicked`], [`Error::Exited`], [`Error::Killed`] or [`Error::StartFailed`]
    /// when there is no value; [`Error::AlreadyJoined`] after a value was taken.
    pub fn join(&mut self) -> Result<R> {
        self.wait_until(None)?;
        self.result()
    }

    /// As [`join`](Self::join), but gives up after `timeout`, returning `Ok(None)` and
    /// leaving the process running.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<R>> {
        let deadline = Instant::now().checked_add(timeout);
        if self.wait_until(deadline)? {
            self.result().map(Some)
        } else {
            Ok(None)
        }
    }

    fn result(&mut self) -> Result<R> {
        // The name goes into errors only: no copy to make and free on the way to a value.
        let name = || self.name.clone();
        let code = self.exitcode.expect("called after the process ended");
        match self.outcome.take() {
            Some(mut frame) => match frame.bytes.first().copied() {
                Some(RETURNED) => {
                    self.joined = true;
                    frame.bytes.remove(0);
                    Ok(R::decode(&mut frame)?)
                }
                Some(EXITED) => {
                    // Kept: a second join says the same.
                    self.outcome = Some(frame);
                    // Killed on its way out, after its guard had spoken.
                    Err(if code < 0 {
                        Error::Killed {
                            name: name(),
                            signal: -code,
                        }
                    } else {
                        Error::Exited { name: name(), code }
                    })
                }
                Some(tag @ (PANICKED | FAILED)) => {
                    let message = String::from_utf8_lossy(&frame.bytes[1..]).into_owned();
                    // Kept: a second join says the same.
                    self.outcome = Some(frame);
                    Err(if tag == PANICKED {
                        Error::Panicked {
                            name: name(),
                            message,
                        }
                    } else {
                        Error::StartFailed {
                            name: name(),
                            message,
                        }
                    })
                }
                _ => Err(Error::StartFailed {
                    name: name(),
                    message: "malformed result message".into(),
                }),
            },
            None if self.joined => Err(Error::AlreadyJoined(name())),
            // A forked child sends no value that encodes to nothing: exit status 0, with
            // nothing sent (not a frame cut short), says it returned (see
            // `entry::Outlet::status_says_returned`).
            None if code == 0 && self.method == StartMethod::Fork && self.sent_nothing => {
                match R::decode(&mut Frame::new()) {
                    Ok(value) => {
                        self.joined = true;
                        Ok(value)
                    }
                    Err(_) => Err(Error::Exited { name: name(), code }),
                }
            }
            None if code < 0 => Err(Error::Killed {
                name: name(),
                signal: -code,
            }),
            None => Err(Error::Exited { name: name(), code }),
        }
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if self.exitcode.is_some() {
            return;
        }
        if self.own {
            let _ = self.reap(WaitIdOptions::EXITED | WaitIdOptions::NOHANG);
            if self.exitcode.is_none() {
                registry::reap_later(self.serial);
            }
        } else if self
            .sentinel()
            .is_ok_and(|fd| readable(fd, Some(Duration::ZERO)))
        {
            registry::forget(self.serial); // the forkserver reaped it
        } else {
            registry::reap_later(self.serial);
        }
    }
}

/// Whether `fd` becomes readable within `timeout` (`None`: forever).
fn readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> bool {
    mp_pipe::wait(&[fd], timeout).is_ok_and(|ready| !ready.is_empty())
}

/// Whether a result socket certainly holds nothing: a non-blocking peek at one byte finds
/// none. Any other answer (a byte, an error) leaves it to a full receive.
fn nothing_waiting(socket: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        rustix::net::recv(
            socket,
            &mut byte[..],
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
        ),
        Err(rustix::io::Errno::AGAIN)
    )
}

/// Python's exit code for a `waitid` status: the code, or −signal.
pub(crate) fn exit_code(status: &WaitIdStatus) -> i32 {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => -signal,
        (None, None) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Header, bootstrap_frame};

    fn triple(x: u64) -> u64 {
        3 * x
    }

    /// A `Process` around a child started from a hand-made bootstrap frame.
    fn started_from(frame: Frame, method: StartMethod) -> Process<u64> {
        let mut started = match method {
            StartMethod::Spawn => start::spawn::start(frame),
            _ => start::forkserver::start(frame),
        }
        .unwrap();
        let pidfd = started.pidfd.take().map(Arc::new);
        Process::made(started, "corrupt".into(), vec![1], pidfd, 0, false, method)
    }

    fn header_and_rest(frame: &Frame) -> (Header, Vec<u8>) {
        let len = u32::from_le_bytes(frame.bytes[..4].try_into().unwrap()) as usize;
        let header = Frame {
            bytes: frame.bytes[4..4 + len].to_vec(),
            fds: Vec::new(),
        }
        .decode()
        .unwrap();
        (header, frame.bytes[4 + len..].to_vec())
    }

    fn reassemble(header: &Header, rest: &[u8]) -> Frame {
        let head = Frame::encode(header).unwrap().bytes;
        let mut bytes = (head.len() as u32).to_le_bytes().to_vec();
        bytes.extend(head);
        bytes.extend_from_slice(rest);
        Frame {
            bytes,
            fds: Vec::new(),
        }
    }

    fn assert_start_failed(mut p: Process<u64>, needle: &str) {
        match p.join_timeout(Duration::from_secs(30)) {
            Err(Error::StartFailed { message, .. }) => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.exitcode(), Some(entry::START_FAILED));
    }

    #[test]
    fn a_corrupted_bootstrap_is_a_clean_error_on_both_sides() {
        for method in [StartMethod::Spawn, StartMethod::Forkserver] {
            let good = bootstrap_frame(&triple, &5u64, "corrupt", &[9], false, method).unwrap();
            let (mut header, rest) = header_and_rest(&good);

            // a flipped selector: the checksum catches it before anything is looked up
            header.target ^= 0x40;
            assert_start_failed(
                started_from(reassemble(&header, &rest), method),
                "corrupted",
            );

            // a different executable
            header.target ^= 0x40;
            header.fingerprint = crate::entry::Fingerprint::other_for_tests();
            assert_start_failed(
                started_from(reassemble(&header, &rest), method),
                "different executable",
            );

            // bytes that are no bootstrap at all
            let garbage = Frame {
                bytes: vec![0xff; 64],
                fds: Vec::new(),
            };
            assert_start_failed(started_from(garbage, method), "corrupted");

            // arguments that do not decode as the target's
            let (header, _) = header_and_rest(&good);
            assert_start_failed(
                started_from(reassemble(&header, &[0xff; 3]), method),
                "arguments",
            );

            // and the untouched frame works
            let mut ok = started_from(good, method);
            assert_eq!(ok.join_timeout(Duration::from_secs(30)).unwrap(), Some(15));
        }
    }

    fn single_threaded(_: ()) -> bool {
        crate::sys::single_threaded()
    }

    #[test]
    fn a_process_that_has_had_a_second_thread_is_not_single_threaded() {
        // This test binary runs its tests on threads of their own.
        std::thread::spawn(|| ()).join().unwrap();
        assert!(!crate::sys::single_threaded());
        // A spawned child is a fresh process that starts no thread before its target runs.
        let mut p = Process::new(single_threaded, ())
            .method(StartMethod::Spawn)
            .start()
            .unwrap();
        assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), Some(true));
    }

    /// Writes the first bytes of a frame header to its result socket, then ends with
    /// status 0 and nothing else sent.
    fn sends_half_a_frame(_: ()) {
        let socket = crate::sys::forked_outlet().expect("a forked child");
        let _ = rustix::io::write(socket, &[0, 0]);
        crate::sys::exit_now(0)
    }

    #[test]
    fn a_fork_child_that_sent_half_a_frame_has_not_returned() {
        // Exit status 0 says "returned ()" only when nothing at all was sent.
        let mut p = Process::new(sends_half_a_frame, ())
            .method(StartMethod::Fork)
            .start()
            .unwrap();
        assert!(matches!(
            p.join_timeout(Duration::from_secs(30)),
            Err(Error::Exited { code: 0, .. })
        ));
    }
}
