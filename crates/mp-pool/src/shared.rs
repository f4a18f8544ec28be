//! The pool's state, its two threads, and what they do with workers and replies.
//!
//! - **Dispatch.** Each worker has an inbox of its own; the pool sends it a task when it
//!   has fewer than its depth in hand. The depth adapts to how long tasks take: one at a
//!   time when they take a millisecond or more (so a long task never holds a short one
//!   back while another worker idles), up to [`MAX_DEPTH`] when they take microseconds
//!   (so a worker never waits for the pool between them).
//! - **Replies** come on one queue shared by all workers. The *reply thread* takes them,
//!   delivers each chunk's results to its job, and refills the worker's inbox.
//! - **Deaths.** The *watcher thread* polls the workers' pidfds (and kills a worker whose
//!   task is past its timeout). When a worker has ended, it puts an `Ended` notice on the
//!   reply queue: every reply the worker put before it died is ahead of the notice, so when
//!   the reply thread reaches it, the tasks the worker still holds have no reply coming. The
//!   first (the one it was running) fails with `WorkerLost`; the others never started and go
//!   to other workers. A replacement is started.
//!
//! Lock order: the state, then a job's cell. Callbacks run with neither held.

use std::{
    collections::{HashMap, VecDeque},
    os::fd::OwnedFd,
    sync::{Arc, Condvar, Mutex, MutexGuard, atomic::AtomicUsize},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use mp_queue::Queue;
use mp_spawn::{Process, StartMethod, TargetId};

use crate::{
    Error, ExitStatus, Result,
    cell::{Arrival, Callback, Cell},
    place, sys,
    wire::{Head, Msg},
    worker::{self, Boot},
};

/// The most tasks a worker holds at once (for tasks of a few microseconds).
pub(crate) const MAX_DEPTH: usize = 32;
/// A worker holds about this much work ahead.
const AHEAD: Duration = Duration::from_micros(200);
/// Bytes of a worker's inbox ring (a chunk bigger than an eighth goes beside it).
const INBOX: usize = 256 << 10;
/// Bytes of the reply queue's ring.
const REPLIES: usize = 1 << 20;
/// How long the watcher waits for room for a worker's end notice before it looks whether
/// the pool has ended (and its reply thread with it).
const NOTICE_RETRY: Duration = Duration::from_millis(50);
/// How long the reply thread, just started with the first task, waits awake for that
/// task's reply before it sleeps like any consumer: about what a worker takes to wake and
/// answer a small task here.
const FIRST_REPLY_SPIN: Duration = Duration::from_micros(200);
/// How long a caller waiting for its own result takes the replies itself, while the pool's
/// threads have not started, before it starts them ([`Shared::take_replies`]): long enough
/// for a small task's round trip, short enough that a worker's death or a task's end
/// reaches the watcher and the reply thread soon after.
const TAKE_SLICE: Duration = Duration::from_millis(5);
/// The most replies handled under one hold of the state's lock.
const BATCH: usize = 256;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) init: Option<(TargetId, Vec<u8>)>,
    pub(crate) maxtasks: Option<usize>,
    pub(crate) method: Option<StartMethod>,
    pub(crate) task_timeout: Option<Duration>,
}

/// A task not yet sent, or sent and not answered.
pub(crate) struct Task {
    pub(crate) job: u64,
    pub(crate) chunk: u32,
    pub(crate) count: u32,
    pub(crate) msg: Msg,
}

struct Slot {
    generation: u64,
    process: Option<Process<()>>,
    pid: u32,
    /// A descriptor readable once the worker has ended, opened by the watcher on its first
    /// look (not by the thread that forks the workers, which has the first task to send).
    sentinel: Option<Arc<OwnedFd>>,
    inbox: Queue<Msg>,
    /// Sent, not answered, oldest first: the first is the one it runs.
    held: VecDeque<Task>,
    /// When the first held task began (about: when the one before it was answered).
    since: Instant,
    /// Smoothed time a task takes, in nanoseconds (0: none seen yet).
    service: u64,
    /// Tasks it may still be given (`maxtasksperchild`).
    left: Option<usize>,
    /// Sent `Stop`: takes no more tasks.
    stopped: bool,
    /// The watcher saw it end and posted the notice.
    ended: bool,
    /// Killed by the watcher for this task's timeout (its job and chunk).
    timed_out: Option<(u64, u32)>,
    /// Its initializer has run (or there is none): until then, its death is the
    /// initializer's failure.
    ready: bool,
}

impl Slot {
    fn depth(&self) -> usize {
        if self.service == 0 {
            return 1;
        }
        (AHEAD.as_nanos() as u64 / self.service + 1).min(MAX_DEPTH as u64) as usize
    }

    fn takes_more(&self) -> bool {
        self.process.is_some()
            && !self.stopped
            && !self.ended
            && self.left != Some(0)
            && self.held.len() < self.depth()
    }
}

#[derive(Clone)]
pub(crate) enum Phase {
    Running,
    /// `close`d: no new jobs; jobs under way go on.
    Closed,
    /// Terminated, interrupted or broken: every job fails with this.
    Ended(Error),
}

pub(crate) struct State {
    pub(crate) phase: Phase,
    slots: Vec<Slot>,
    pending: VecDeque<Task>,
    jobs: HashMap<u64, Arc<Cell>>,
    next_job: u64,
    next_generation: u64,
    /// `join` is done with the workers: the threads leave.
    shutdown: bool,
    /// `join` has told the workers to stop: none is replaced, and no task is sent any more.
    joining: bool,
}

impl State {
    /// The pool has ended, or `join` is done with it: its threads leave.
    fn over(&self) -> bool {
        matches!(self.phase, Phase::Ended(_)) || self.shutdown
    }

    /// No task queued, none sent and unanswered.
    fn drained(&self) -> bool {
        self.pending.is_empty() && self.slots.iter().all(|s| s.held.is_empty())
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Notified when the pool has no task in flight, or a worker was reaped.
    idle: Condvar,
    replies: Queue<Msg>,
    /// Wakes the watcher (an eventfd).
    wake: OwnedFd,
    config: Config,
    /// Threads waiting on this pool's results now (for SIGINT).
    pub(crate) waiting: AtomicUsize,
    /// The reply thread and the watcher, once started ([`Shared::ensure_threads`]).
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Passed once `ensure_threads` has started them (or found no need to).
    threads_started: std::sync::Once,
    /// Held by whoever takes from `replies`: the reply thread, for its whole life, or,
    /// before it starts, a caller waiting for its own result ([`Shared::take_replies`]).
    /// Replies must be handled one at a time in the order they were taken (a worker's
    /// `Ended` after its `Done`s decides which of its tasks was lost).
    taker: Mutex<()>,
    /// Set by the first caller to take the replies itself: only a pool's first blocking
    /// call does; from the next call on the threads run, so no worker goes unwatched for
    /// longer than that first call.
    taken_once: std::sync::atomic::AtomicBool,
    /// [`TAKE_SLICE`] in nanoseconds, unless a test set another
    /// ([`crate::__testing::set_take_slice`]).
    take_slice: std::sync::atomic::AtomicU64,
    /// Whether the watcher sleeps with no deadline (no task to time): for a test that must
    /// catch it there.
    pub(crate) watcher_untimed: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn start(config: Config) -> Result<Arc<Shared>> {
        let replies = Queue::builder().capacity(REPLIES).build()?;
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| Error::os("eventfd", e))?;
        sys::watch_sigint().map_err(|e| Error::os("installing the SIGINT handler", e))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                phase: Phase::Running,
                slots: Vec::with_capacity(config.processes),
                pending: VecDeque::new(),
                jobs: HashMap::new(),
                next_job: 0,
                next_generation: 0,
                shutdown: false,
                joining: false,
            }),
            idle: Condvar::new(),
            replies,
            wake,
            config,
            waiting: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            threads_started: std::sync::Once::new(),
            taker: Mutex::new(()),
            take_slice: std::sync::atomic::AtomicU64::new(TAKE_SLICE.as_nanos() as u64),
            taken_once: std::sync::atomic::AtomicBool::new(false),
            watcher_untimed: std::sync::atomic::AtomicBool::new(false),
        });
        {
            // Every inbox before the first worker starts: under fork, a page this process
            // writes while a child still shares it costs a copy, so the forks come back to
            // back, with as little written between them as can be.
            let inboxes = (0..shared.config.processes)
                .map(|_| Queue::builder().capacity(INBOX).build())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut state = shared.lock();
            state.slots.reserve(inboxes.len());
            for (slot, inbox) in inboxes.into_iter().enumerate() {
                let started = shared.spawn_with(&mut state, slot as u32, inbox);
                match started {
                    Ok(s) => state.slots.push(s),
                    Err(err) => {
                        drop(state);
                        shared.end(Error::Terminated);
                        shared.join_threads();
                        return Err(err);
                    }
                }
            }
        }
        // The reply thread and the watcher start later (`ensure_threads`): with the first
        // task sent by an `*_async` call or an `imap`, with the pool's second call, or once
        // its first, an `apply` or a `map`, stops taking the replies itself with work
        // still under way (`take_replies`). Their start-up, about 60 µs of this thread's
        // time and more of the other CPU's here, then overlaps the workers' work instead of
        // delaying the first result.
        {
            let mut pools = sys::POOLS.lock().unwrap_or_else(|e| e.into_inner());
            // Ended pools leave their entries behind: dropped here, as the list grows.
            pools.retain(|p| p.strong_count() > 0);
            pools.push(Arc::downgrade(&shared));
        }
        Ok(shared)
    }

    /// Starts the reply thread and the watcher, unless they run already (or the pool has
    /// ended: nothing would be left for them to do). Called, without the state's lock, after
    /// a task is sent that no caller waits for at once, by a caller that stops taking the
    /// replies itself with work under way ([`Shared::take_replies`]), and before any wait
    /// that needs them (`join`): a pool nobody gives work to has no use for them, and one
    /// that gets work starts them while its workers take it. A failure to start them ends
    /// the pool with that error.
    pub(crate) fn ensure_threads(self: &Arc<Self>) {
        self.threads_started.call_once(|| {
            {
                let state = self.lock();
                if state.over() {
                    return;
                }
            }
            let mut failed = None;
            let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
            for (name, body) in [
                ("mp-pool-replies", Shared::reply_thread as fn(Arc<Shared>)),
                ("mp-pool-watcher", Shared::watcher_thread),
            ] {
                let me = self.clone();
                match std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || body(me))
                {
                    Ok(t) => threads.push(t),
                    Err(err) => failed = Some(err),
                }
            }
            drop(threads);
            if let Some(err) = failed {
                // Without both threads no result would come back: every job fails with why.
                self.end(Error::os("starting the pool's threads", err));
            }
        });
    }

    /// Whether the pool has ended, or `join` is done with it: its threads leave.
    fn has_ended(&self) -> bool {
        self.lock().over()
    }

    /// Whether [`Shared::ensure_threads`] has run.
    pub(crate) fn threads_started(&self) -> bool {
        self.threads_started.is_completed()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Starts the worker for `slot`.
    fn spawn(&self, state: &mut State, slot: u32) -> Result<Slot> {
        self.spawn_with(state, slot, Queue::builder().capacity(INBOX).build()?)
    }

    /// Starts the worker for `slot` with `inbox`.
    fn spawn_with(&self, state: &mut State, slot: u32, inbox: Queue<Msg>) -> Result<Slot> {
        let generation = state.next_generation;
        state.next_generation += 1;
        // A worker this thread forks starts on another CPU (see `place`); not one with an
        // initializer, which would run on the CPUs it starts on.
        let plan = (self
            .config
            .method
            .unwrap_or_else(mp_spawn::get_start_method)
            == StartMethod::Fork
            && self.config.init.is_none())
        .then(|| place::plan(slot as usize))
        .flatten();
        let boot = Boot {
            slot,
            generation,
            inbox: inbox.clone(),
            replies: self.replies.clone(),
            init: self.config.init.clone(),
            placed: plan.clone(),
        };
        let mut builder = Process::new(worker::main, boot)
            .daemon(true)
            .name(format!("PoolWorker-{}", generation + 1));
        if let Some(method) = self.config.method {
            builder = builder.method(method);
        }
        let process = builder.start()?;
        if let Some(plan) = &plan {
            plan.start_beside(process.pid());
        }
        Ok(Slot {
            generation,
            pid: process.pid(),
            process: Some(process),
            sentinel: None,
            inbox,
            held: VecDeque::new(),
            since: Instant::now(),
            service: 0,
            left: self.config.maxtasks,
            stopped: false,
            ended: false,
            timed_out: None,
            ready: self.config.init.is_none(),
        })
    }

    /// Opens a job: its cell, on the books, with no chunk sent yet and more to come (its
    /// owner counts them in and seals it). Fails if the pool takes no new work.
    pub(crate) fn open_job(&self, state: &mut State, fail_fast: bool) -> Result<(u64, Arc<Cell>)> {
        match &state.phase {
            Phase::Running => {}
            Phase::Closed => return Err(Error::Closed),
            Phase::Ended(err) => return Err(err.clone()),
        }
        let job = state.next_job;
        state.next_job += 1;
        let cell = Cell::new(fail_fast);
        state.jobs.insert(job, cell.clone());
        Ok((job, cell))
    }

    /// Queues tasks of a job already open, and sends what the workers can take.
    pub(crate) fn submit(&self, state: &mut State, tasks: impl IntoIterator<Item = Task>) {
        if matches!(state.phase, Phase::Ended(_)) {
            return;
        }
        if state.joining {
            // `join` has stopped the workers: nothing would ever run these. Their jobs (an
            // `imap` whose input was taken lazily after `close` and `join`) fail instead.
            let mut callbacks = Vec::new();
            for task in tasks {
                if let Some(cell) = state.jobs.remove(&task.job) {
                    callbacks.extend(cell.fail(Error::Closed));
                }
            }
            run_callbacks_later(callbacks);
            return;
        }
        state.pending.extend(tasks);
        self.pump(state);
    }

    /// Says no more chunks of `job` will come; takes it off the books if it is done.
    pub(crate) fn seal(&self, job: u64, cell: &Cell) {
        let done = {
            let mut inner = cell.lock();
            inner.sealed = true;
            let done = inner.done();
            // Waiters wait for "done", which sealing can make true.
            cell.notify(&inner);
            done
        };
        if done {
            self.forget_job(job);
        }
    }

    /// Takes a job off the books (its owner lost interest); its queued tasks are dropped.
    pub(crate) fn forget_job(&self, job: u64) {
        let mut state = self.lock();
        state.jobs.remove(&job);
        state.pending.retain(|t| t.job != job);
        self.notify_if_idle(&state);
    }

    /// Sends queued tasks to workers with room, the least loaded first.
    fn pump(&self, state: &mut State) {
        // A worker told of its last task when its inbox had no room for the stop: told now.
        for slot in &mut state.slots {
            if slot.left == Some(0) && !slot.stopped && slot.process.is_some() && !slot.ended {
                slot.stopped = slot.inbox.try_put(Msg::bare(Head::Stop)).is_ok();
            }
        }
        while !state.pending.is_empty() {
            let Some(slot) = state
                .slots
                .iter_mut()
                .filter(|s| s.takes_more())
                .min_by_key(|s| s.held.len())
            else {
                return;
            };
            let task = state.pending.pop_front().expect("not empty");
            if !state.jobs.contains_key(&task.job) {
                continue;
            }
            match slot.inbox.try_put(task.msg.clone()) {
                Ok(()) => {
                    if slot.held.is_empty() {
                        slot.since = Instant::now();
                        if self.config.task_timeout.is_some() {
                            // The watcher may be asleep with no deadline (every worker was
                            // idle): it must start counting this task's time.
                            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
                        }
                    }
                    slot.held.push_back(task);
                    if let Some(left) = &mut slot.left {
                        *left -= 1;
                        if *left == 0 {
                            // Its last task: the worker leaves once it is done.
                            slot.stopped = slot.inbox.try_put(Msg::bare(Head::Stop)).is_ok();
                        }
                    }
                }
                Err(err) => {
                    state.pending.push_front(task);
                    if !matches!(err.error, mp_queue::Error::Full) {
                        // A task that cannot go through a queue at all fails alone.
                        let task = state.pending.pop_front().expect("just pushed");
                        let why = Error::from(mp_queue::Error::from(err));
                        let callbacks = self.deliver_error(state, &task, why);
                        run_callbacks_later(callbacks);
                        continue;
                    }
                    // This worker's inbox is full: stop for now (the least loaded is full,
                    // so the others are too or hold more).
                    return;
                }
            }
        }
    }

    fn deliver_error(&self, state: &mut State, task: &Task, error: Error) -> Vec<Callback> {
        self.deliver(
            state,
            Arrival {
                chunk: task.chunk,
                count: task.count,
                outcome: Err(error),
                failed: None,
                plain: None,
            },
            task.job,
        )
    }

    fn deliver(&self, state: &mut State, arrival: Arrival, job: u64) -> Vec<Callback> {
        let Some(cell) = state.jobs.get(&job) else {
            return Vec::new();
        };
        let (done, callbacks) = cell.arrive(arrival);
        if done {
            state.jobs.remove(&job);
            state.pending.retain(|t| t.job != job);
        }
        callbacks
    }

    fn notify_if_idle(&self, state: &State) {
        if state.drained() {
            self.idle.notify_all();
        }
    }

    /// The reply thread: delivers results, handles ended workers, refills inboxes.
    fn reply_thread(self: Arc<Self>) {
        // The only taker from now on: a caller taking replies itself lets go within its
        // slice (`TAKE_SLICE`), or after one batch (`take_ready_replies`).
        let _taker = self.taker.lock().unwrap_or_else(|e| e.into_inner());
        // That caller may have taken the `Wake` of a pool that ended meanwhile, or ended it
        // itself (a failed initializer): no notice would come to end a wait below.
        if self.has_ended() {
            return;
        }
        // This thread usually starts as the first task is sent (`ensure_threads`): its
        // reply is near. Waiting for it awake, a little longer than a `get` spins, spares
        // the first result a wake-up (tens of microseconds here).
        let mut first = Self::first_reply(&self.replies);
        loop {
            let next = first.take().unwrap_or_else(|| self.replies.get());
            // Callbacks run here, holding `taker`: one that ends the pool and joins its
            // threads skips this one (`join_threads`).
            if !self.settle(self.absorb(next)) {
                return;
            }
        }
    }

    /// Handles `next`, and the replies already behind it (up to [`BATCH`]), under one hold of
    /// the lock, then refills the inboxes. Only by the holder of `taker`. What is left to do
    /// (run the callbacks, end the pool) is for [`Shared::settle`], which a caller runs
    /// once it has let go of `taker`: a callback may end the pool and join its threads,
    /// and the reply thread may be waiting for `taker`.
    fn absorb(&self, mut next: mp_queue::Result<Msg>) -> Absorbed {
        let mut state = self.lock();
        let mut absorbed = Absorbed {
            go_on: true,
            callbacks: Vec::new(),
            failed: None,
            wake: false,
        };
        for taken in 1.. {
            if state.over() {
                break;
            }
            match next {
                Ok(msg) => absorbed.callbacks.extend(self.handle(&mut state, msg)),
                Err(err) => {
                    // Only memory scribbled over by another process gets here: which task
                    // the lost reply answered is unknown, so the pool stops rather than
                    // leave a job waiting for ever.
                    absorbed.go_on = false;
                    absorbed.failed = Some(Error::from(err));
                    return absorbed;
                }
            }
            if taken == BATCH {
                break;
            }
            next = self.replies.try_get();
            if matches!(next, Err(mp_queue::Error::Empty)) {
                break;
            }
        }
        if state.over() {
            // Ended before or by a reply of this batch (an initializer that failed, say):
            // a `join` waiting for the pool to drain must hear of it, and the watcher,
            // which may sleep with nothing left to watch, must be told to leave.
            self.idle.notify_all();
            absorbed.go_on = false;
            absorbed.wake = true;
            return absorbed;
        }
        self.pump(&mut state);
        self.notify_if_idle(&state);
        absorbed
    }

    /// Does what [`Shared::absorb`] left to do: runs the callbacks, ends the pool if a reply
    /// was unreadable, wakes the threads if it ended. Whether to go on taking.
    fn settle(&self, absorbed: Absorbed) -> bool {
        run_callbacks(absorbed.callbacks);
        if let Some(err) = absorbed.failed {
            self.end(err);
        } else if absorbed.wake {
            self.wake_threads();
        }
        absorbed.go_on
    }

    /// Whether a caller waiting for its own result may take the replies itself while the
    /// pool's threads have not started: not when a task's timeout or a worker's last task
    /// needs the watcher at once.
    pub(crate) fn caller_may_take(&self) -> bool {
        self.config.task_timeout.is_none() && self.config.maxtasks.is_none()
    }

    /// How long a caller takes the replies itself ([`TAKE_SLICE`], unless a test set
    /// another).
    fn take_slice(&self) -> Duration {
        Duration::from_nanos(self.take_slice.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// See [`crate::__testing::set_take_slice`].
    pub(crate) fn set_take_slice(&self, slice: Duration) {
        let nanos = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
        self.take_slice
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a caller that began deferring the threads at `since` has had its slice.
    pub(crate) fn slice_over(&self, since: Instant) -> bool {
        since.elapsed() >= self.take_slice()
    }

    /// Whether a blocking call about to send its job may leave the threads unstarted, to
    /// take its replies itself ([`Shared::take_replies`]): only the pool's first.
    pub(crate) fn may_defer_threads(&self) -> bool {
        self.caller_may_take()
            && !self.threads_started.is_completed()
            && !self.taken_once.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes one batch of the replies already there, if the pool's threads have not
    /// started and no other thread takes them: for a caller still sending a job it will
    /// wait for, so the workers' inboxes are refilled (and its collector sees what came
    /// back) meanwhile.
    pub(crate) fn take_ready_replies(&self) {
        if self.threads_started.is_completed() {
            return;
        }
        let absorbed = {
            let Ok(_taker) = self.taker.try_lock() else {
                return;
            };
            match self.replies.try_get() {
                Err(mp_queue::Error::Empty) => return,
                next => self.absorb(next),
            }
        };
        self.settle(absorbed);
    }

    /// Takes replies on this thread until `done()` or `until` (at most the slice,
    /// [`TAKE_SLICE`], from now), if the pool's threads have not started, no other thread
    /// takes them and this is the pool's first blocking call: its caller then gets its
    /// result straight from the worker, sparing it the reply thread's hop and the threads'
    /// start-up. Starts the threads afterwards if the pool still has work under way (and
    /// at once if it cannot take them); otherwise the pool's next call starts them.
    pub(crate) fn take_replies(self: &Arc<Self>, done: impl Fn() -> bool, until: Option<Instant>) {
        if self.threads_started.is_completed() {
            return;
        }
        if self.caller_may_take()
            && let Ok(taker) = self.taker.try_lock()
            && !self
                .taken_once
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let now = Instant::now();
            let slice = now.checked_add(self.take_slice()).unwrap_or(now);
            let until = until.map_or(slice, |u| u.min(slice));
            let mut settled = true;
            while !done() {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let absorbed = match self.replies.get_timeout(left) {
                    Err(mp_queue::Error::Empty) => break,
                    next => self.absorb(next),
                };
                if absorbed.is_quiet() {
                    continue;
                }
                // Something to run: not holding `taker` (see `absorb`).
                drop(taker);
                settled = self.settle(absorbed);
                break;
            }
            let idle = {
                let state = self.lock();
                state.jobs.is_empty() && state.drained()
            };
            if settled && idle && done() {
                return;
            }
        }
        self.ensure_threads();
    }

    /// Tries for the first reply for up to [`FIRST_REPLY_SPIN`], with growing pauses: what
    /// it took (a reply, or an error, handled as one from `get` is), or `None` if nothing
    /// came.
    fn first_reply(replies: &Queue<Msg>) -> Option<mp_queue::Result<Msg>> {
        let start = Instant::now();
        let mut pause = 16u32;
        loop {
            match replies.try_get() {
                Err(mp_queue::Error::Empty) => {}
                taken => return Some(taken),
            }
            if start.elapsed() >= FIRST_REPLY_SPIN {
                return None;
            }
            for _ in 0..pause {
                std::hint::spin_loop();
            }
            pause = (pause * 2).min(1024);
        }
    }

    fn handle(&self, state: &mut State, msg: Msg) -> Vec<Callback> {
        match msg.head {
            Head::Done {
                slot,
                generation,
                job,
                chunk,
                failed,
                plain,
            } => {
                let Some(s) = state.slots.get_mut(slot as usize) else {
                    return Vec::new();
                };
                if s.generation != generation {
                    return Vec::new();
                }
                let Some(at) = s.held.iter().position(|t| t.job == job && t.chunk == chunk) else {
                    return Vec::new();
                };
                let task = s.held.remove(at).expect("found");
                let now = Instant::now();
                let took = now.saturating_duration_since(s.since).as_nanos() as u64;
                s.service = match s.service {
                    0 => took.max(1),
                    old => (old * 3 + took) / 4,
                }
                .max(1);
                s.since = now;
                self.deliver(
                    state,
                    Arrival {
                        chunk,
                        count: task.count,
                        outcome: Ok(msg.payload),
                        failed,
                        plain,
                    },
                    job,
                )
            }
            Head::Ended { slot, generation } => self.ended(state, slot, generation),
            Head::Ready { slot, generation } => {
                if let Some(s) = state
                    .slots
                    .get_mut(slot as usize)
                    .filter(|s| s.generation == generation)
                {
                    s.ready = true;
                }
                Vec::new()
            }
            Head::InitFailed {
                slot,
                generation,
                message,
            } => {
                let pid = state
                    .slots
                    .get(slot as usize)
                    .filter(|s| s.generation == generation)
                    .map_or(0, |s| s.pid);
                let err = Error::Initializer { pid, message };
                let (processes, cells) = Self::take_all(state, err.clone());
                Self::kill_all(processes);
                cells
                    .into_iter()
                    .flat_map(|c| c.fail(err.clone()))
                    .collect()
            }
            // Stop, Task: not for us; Wake: only to look at the state.
            _ => Vec::new(),
        }
    }

    /// A worker has ended: fail the task it ran, send the others elsewhere, replace it.
    /// How many tasks are still in a dead worker's inbox (taken out, to count them), or
    /// `None` if it cannot be read to the end.
    fn unread_tasks(inbox: &Queue<Msg>) -> Option<usize> {
        let mut tasks = 0;
        loop {
            match inbox.try_get() {
                Ok(msg) => tasks += usize::from(matches!(msg.head, Head::Task { .. })),
                Err(mp_queue::Error::Empty) => return Some(tasks),
                Err(_) => return None,
            }
        }
    }

    fn ended(&self, state: &mut State, slot: u32, generation: u64) -> Vec<Callback> {
        let Some(s) = state.slots.get_mut(slot as usize) else {
            return Vec::new();
        };
        if s.generation != generation {
            return Vec::new();
        }
        let mut process = s.process.take();
        // Its pidfd said it ended, so it is reaped at once (the wait is only a bound).
        let status = process
            .as_mut()
            .and_then(|p| {
                p.exitcode().or_else(|| {
                    let _ = p.join_timeout(Duration::from_secs(1));
                    p.exitcode()
                })
            })
            .map_or(ExitStatus::Signal(libc::SIGKILL), ExitStatus::from_exitcode);
        drop(process);
        let pid = s.pid;
        if !s.ready && s.timed_out.is_none() {
            // Ended inside its initializer without a panic (an abort, a signal, an exit):
            // the initializer failed, and the pool stops rather than start it again and again.
            // (Not one the pool killed for a task's timeout: a slow initializer is not a
            // failing one.)
            let err = Error::Initializer {
                pid,
                message: format!("the initializer ended the worker ({status})"),
            };
            let (processes, cells) = Self::take_all(state, err.clone());
            Self::kill_all(processes);
            return cells
                .into_iter()
                .flat_map(|c| c.fail(err.clone()))
                .collect();
        }
        let timed_out = s.timed_out;
        let mut held = std::mem::take(&mut s.held);
        let mut callbacks = Vec::new();
        // Every reply it sent came before this notice, so what it holds is what it never
        // answered: the tasks still in its inbox never started, and go elsewhere; a task it
        // took and did not answer is the one it was running, which fails. (If it died
        // between tasks, none did: nothing fails.) An inbox that cannot be read (corrupted
        // by the death) leaves the oldest held as the one it was running.
        let unread = Self::unread_tasks(&s.inbox);
        let started = match unread {
            Some(unread) => held.len().saturating_sub(unread),
            None => held.len().min(1),
        };
        if let Some(task) = (started > 0).then(|| held.pop_front()).flatten() {
            // The task the kill was for, unless it finished just before the kill landed (then
            // the one after it was lost to another's timeout).
            let error = match (timed_out, self.config.task_timeout) {
                (Some(which), Some(after)) if which == (task.job, task.chunk) => {
                    Error::TaskTimeout { pid, after }
                }
                _ => Error::WorkerLost { pid, status },
            };
            callbacks = self.deliver_error(state, &task, error);
        }
        // Never started: first in line again, in their order.
        for task in held.into_iter().rev() {
            state.pending.push_front(task);
        }
        let wanted = match state.phase {
            Phase::Running => true,
            // Closed: still wanted while work is queued, or a job is open that may send
            // more (an `imap` taking its input lazily, a `map_async` still encoding).
            Phase::Closed => !state.pending.is_empty() || !state.jobs.is_empty(),
            Phase::Ended(_) => false,
        };
        if wanted && !state.joining {
            match self.spawn(state, slot) {
                Ok(fresh) => state.slots[slot as usize] = fresh,
                Err(err) => {
                    let (processes, cells) = Self::take_all(state, err.clone());
                    Self::kill_all(processes);
                    callbacks.extend(cells.into_iter().flat_map(|c| c.fail(err.clone())));
                }
            }
        }
        self.idle.notify_all();
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        callbacks
    }

    /// The workers to watch (slot, generation, sentinel): every one started and not seen
    /// ended, its sentinel opened on this first look (see [`Slot::sentinel`]).
    fn watched(state: &mut State) -> Result<Vec<(u32, u64, Arc<OwnedFd>)>> {
        let mut watched = Vec::new();
        for (i, s) in state.slots.iter_mut().enumerate() {
            let (Some(p), false) = (&s.process, s.ended) else {
                continue;
            };
            let fd = match &s.sentinel {
                Some(fd) => fd.clone(),
                None => {
                    let fd = p
                        .sentinel()?
                        .try_clone_to_owned()
                        .map_err(|e| Error::os("dup", e))?;
                    s.sentinel.insert(Arc::new(fd)).clone()
                }
            };
            watched.push((i as u32, s.generation, fd));
        }
        Ok(watched)
    }

    /// The watcher thread: posts `Ended` for workers that ended, kills timed-out ones.
    fn watcher_thread(self: Arc<Self>) {
        let mut buf = [0u8; 8];
        loop {
            let (watched, deadline) = {
                let mut state = self.lock();
                if state.over() {
                    return;
                }
                let timeout = self.config.task_timeout;
                let now = Instant::now();
                let mut deadline: Option<Instant> = None;
                for s in state
                    .slots
                    .iter_mut()
                    .filter(|s| s.process.is_some() && !s.ended)
                {
                    let (Some(after), false) = (timeout, s.held.is_empty()) else {
                        continue;
                    };
                    // A timeout past the clock's range never comes.
                    let Some(at) = s.since.checked_add(after) else {
                        continue;
                    };
                    if at <= now && s.timed_out.is_none() {
                        s.timed_out = s.held.front().map(|t| (t.job, t.chunk));
                        if let Some(p) = &s.process {
                            let _ = p.kill();
                        }
                    } else if s.timed_out.is_none() {
                        deadline = Some(deadline.map_or(at, |d| d.min(at)));
                    }
                }
                let watched = match Self::watched(&mut state) {
                    Ok(watched) => watched,
                    Err(err) => {
                        // A worker it cannot watch could die unseen, its task waiting for
                        // ever: the pool stops instead, every job failing with why.
                        drop(state);
                        self.end(err);
                        return;
                    }
                };
                (watched, deadline)
            };
            let mut fds: Vec<rustix::event::PollFd<'_>> = watched
                .iter()
                .map(|(_, _, fd)| rustix::event::PollFd::new(&**fd, rustix::event::PollFlags::IN))
                .collect();
            fds.push(rustix::event::PollFd::new(
                &self.wake,
                rustix::event::PollFlags::IN,
            ));
            let timeout = deadline.map(|at| {
                // Rounded up, so the poll never returns before the deadline.
                let left = at.saturating_duration_since(Instant::now()) + Duration::from_micros(1);
                rustix::time::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                }
            });
            self.watcher_untimed
                .store(timeout.is_none(), std::sync::atomic::Ordering::Relaxed);
            let _ = rustix::event::poll(&mut fds, timeout.as_ref());
            self.watcher_untimed
                .store(false, std::sync::atomic::Ordering::Relaxed);
            let ended: Vec<(u32, u64)> = fds
                .iter()
                .zip(&watched)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, &(slot, generation, _))| (slot, generation))
                .collect();
            let _ = rustix::io::read(&self.wake, &mut buf);
            if ended.is_empty() {
                continue;
            }
            {
                let mut state = self.lock();
                for &(slot, generation) in &ended {
                    if let Some(s) = state.slots.get_mut(slot as usize)
                        && s.generation == generation
                    {
                        s.ended = true;
                    }
                }
            }
            for (slot, generation) in ended {
                // Behind every reply the worker put before it ended. Not under the state
                // lock: the reply thread needs it to make room. A pool that ends meanwhile
                // has no reply thread left to make room: then the notice is dropped.
                let notice = Msg::bare(Head::Ended { slot, generation });
                while let Err(err) = self.replies.put_timeout(notice.clone(), NOTICE_RETRY) {
                    let state = self.lock();
                    if !matches!(err.error, mp_queue::Error::Full)
                        || matches!(state.phase, Phase::Ended(_))
                        || state.shutdown
                    {
                        break;
                    }
                }
            }
        }
    }

    /// Ends the pool: every worker killed and reaped, every job failed with `error`, the
    /// threads told to leave. Does nothing if the pool has ended already.
    pub(crate) fn end(&self, error: Error) {
        let (processes, cells) = {
            let mut state = self.lock();
            if matches!(state.phase, Phase::Ended(_)) {
                // Ended from inside (an initializer that failed): the watcher may sleep
                // with nothing left to watch, and must hear it to leave.
                drop(state);
                self.wake_threads();
                return;
            }
            Self::take_all(&mut state, error.clone())
        };
        Self::kill_all(processes);
        self.idle.notify_all();
        let callbacks: Vec<Callback> = cells
            .into_iter()
            .flat_map(|c| c.fail(error.clone()))
            .collect();
        self.wake_threads();
        run_callbacks(callbacks);
    }

    fn take_all(state: &mut State, error: Error) -> (Vec<Process<()>>, Vec<Arc<Cell>>) {
        state.phase = Phase::Ended(error);
        state.pending.clear();
        let processes = state
            .slots
            .iter_mut()
            .flat_map(|s| {
                s.held.clear();
                s.process.take()
            })
            .collect();
        (processes, state.jobs.drain().map(|(_, c)| c).collect())
    }

    /// Kills the processes and reaps them.
    fn kill_all(processes: Vec<Process<()>>) {
        for p in &processes {
            let _ = p.kill();
        }
        for mut p in processes {
            // Dead or dying: reaped now, so nothing of the pool outlives this call.
            let _ = p.join_timeout(Duration::from_secs(5));
        }
    }

    fn wake_threads(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        let _ = self
            .replies
            .put_timeout(Msg::bare(Head::Wake), Duration::from_secs(1));
    }

    /// Waits for the threads to leave (not from one of them).
    pub(crate) fn join_threads(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }

    /// `close`: no new jobs.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        if matches!(state.phase, Phase::Running) {
            state.phase = Phase::Closed;
        }
    }

    /// `join`: after `close`, waits for every task sent to finish, stops the workers and
    /// reaps them; after `terminate`, only reaps. Not for a running pool.
    pub(crate) fn join(self: &Arc<Self>) -> Result<()> {
        let state = self.lock();
        match state.phase {
            Phase::Running => return Err(Error::Running),
            Phase::Ended(_) => {
                drop(state);
                // Ended from inside (an initializer that failed) rather than by `end`: the
                // threads may not have been told.
                self.wake_threads();
                self.join_threads();
                return Ok(());
            }
            Phase::Closed => {}
        }
        drop(state);
        // The reply thread reaps the workers as their notices come.
        self.ensure_threads();
        let mut state = self.lock();
        let _waiting = sys::Waiting::new(&self.waiting);
        // Every task sent (and queued) answered.
        while matches!(state.phase, Phase::Closed) && !state.drained() {
            state = self.idle.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if let Phase::Ended(err) = &state.phase {
            let err = err.clone();
            drop(state);
            self.wake_threads();
            self.join_threads();
            return match err {
                Error::Interrupted => Err(err),
                _ => Ok(()),
            };
        }
        // Stop every worker; the reply thread reaps each as its notice comes.
        state.joining = true;
        for s in &mut state.slots {
            if s.process.is_some() && !s.stopped {
                s.stopped = s.inbox.put(Msg::bare(Head::Stop)).is_ok();
            }
        }
        while matches!(state.phase, Phase::Closed)
            && state.slots.iter().any(|s| s.process.is_some())
        {
            state = self.idle.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.shutdown = true;
        drop(state);
        self.wake_threads();
        self.join_threads();
        Ok(())
    }

    /// The pids of the workers now running.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let state = self.lock();
        state
            .slots
            .iter()
            .filter(|s| s.process.is_some())
            .map(|s| s.pid)
            .collect()
    }
}

/// What [`Shared::absorb`] leaves for [`Shared::settle`].
struct Absorbed {
    /// Whether the taker goes on taking (the pool has not ended).
    go_on: bool,
    callbacks: Vec<Callback>,
    /// A reply could not be read: the pool ends with this.
    failed: Option<Error>,
    /// The pool has ended: its threads are to be woken, to leave.
    wake: bool,
}

impl Absorbed {
    /// Nothing left for `settle` (and so the pool goes on: it stops only with `failed` or
    /// `wake`).
    fn is_quiet(&self) -> bool {
        self.callbacks.is_empty() && self.failed.is_none() && !self.wake
    }
}

/// Runs callbacks gathered under the state lock, from a caller that still holds it: on a
/// thread of their own, which holds no lock (rare enough to spawn for).
fn run_callbacks_later(callbacks: Vec<Callback>) {
    if !callbacks.is_empty() {
        std::thread::spawn(move || run_callbacks(callbacks));
    }
}

/// Runs callbacks on a thread of the pool's: one that panics is reported (by the panic
/// hook) and skipped, rather than end the thread that delivers every result.
fn run_callbacks(callbacks: Vec<Callback>) {
    for callback in callbacks {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_forked_worker() -> Arc<Shared> {
        Shared::start(Config {
            processes: 1,
            init: None,
            maxtasks: None,
            method: Some(StartMethod::Fork),
            task_timeout: None,
        })
        .unwrap()
    }

    /// Runs `f` on a thread of its own; fails (rather than hang) if it has not returned
    /// within 30 s.
    fn within_30s(f: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("still waiting after 30 s");
    }

    #[test]
    fn a_reply_thread_that_starts_after_a_caller_took_the_last_wake_still_leaves() {
        let shared = one_forked_worker();
        // A caller taking the replies: the reply thread, started now, waits for it.
        let taker = shared.taker.lock().unwrap();
        shared.ensure_threads();
        // The pool ends. Once the watcher has left (it may post a notice of the killed
        // worker first), the caller takes everything there, the one `Wake` meant to end a
        // wait among it: nothing is left for the reply thread to find.
        shared.end(Error::Terminated);
        let since = Instant::now();
        while !shared
            .threads
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.thread().name() == Some("mp-pool-watcher"))
            .all(JoinHandle::is_finished)
        {
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "the watcher stays"
            );
            std::thread::yield_now();
        }
        let mut woken = false;
        loop {
            match shared.replies.try_get() {
                Ok(msg) => woken |= matches!(msg.head, Head::Wake),
                Err(mp_queue::Error::Empty) => break,
                Err(err) => panic!("{err}"),
            }
        }
        assert!(woken, "no Wake");
        drop(taker);
        let pool = shared.clone();
        within_30s(move || pool.join_threads());
    }
}
