//! The MPI thread. Every MPI call of this crate is made on it: it initializes MPI (at the
//! level `MPI_THREAD_FUNNELED`), and, on rank 0, sends chunks to the workers and hands their
//! replies to whoever waits for them; on a worker, it serves tasks until rank 0 says stop.
//! So the pool's handle and its results can be used from any thread of rank 0.
//!
//! Waiting costs no CPU for long: MPI's own blocking calls spin (Open MPI's progress engine
//! polls), which on a machine with as many ranks as cores would take a core from a worker.
//! Both sides look for messages without blocking, spin for a moment (a busy pool answers
//! within microseconds), then sleep in growing steps up to a millisecond; rank 0 sleeps on
//! its command channel, so new work wakes it at once.

use std::{
    collections::{HashMap, VecDeque},
    process::Command as Exe,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use mp_pool::Error;
use mpi::{
    Threading,
    point_to_point::{Destination, MatchedReceiveVec, Source},
    topology::{Communicator, Rank},
    traits::*,
};

use crate::wire;

const TAG_TASK: i32 = 1;
const TAG_REPLY: i32 = 2;
const TAG_STOP: i32 = 3;

/// How long a waiting side spins before it sleeps…
const SPIN: Duration = Duration::from_micros(50);
/// …and the longest it then sleeps between looks.
const MAX_NAP: Duration = Duration::from_millis(1);
/// Chunks a worker is sent ahead while its chunks take less than [`LONG`] each (so it never
/// waits for rank 0), and only one when they take longer (so none waits behind another
/// while a worker idles).
const AHEAD: usize = 128;
const LONG: Duration = Duration::from_millis(1);
/// The largest task sent ahead, to a worker that has chunks in flight. It goes by a buffered
/// send, which completes at once (MPI copies it into the buffer attached for them), so rank
/// 0 never blocks on a worker that is itself blocked sending it a large reply: a blocking
/// send goes only to a worker with nothing in flight, which is waiting for a task.
const AHEAD_TASK: usize = 4 << 10;

/// Where the replies of a job's chunks go: called on the MPI thread, once per chunk.
pub(crate) trait Sink: Send + Sync {
    /// Chunk `index`'s reply (see [`wire::results`]), or why it has none.
    fn deliver(&self, index: usize, reply: Result<Vec<u8>, Error>);
}

/// A chunk of a job, for the MPI thread to send. One dropped before its reply was delivered
/// (sent after the pool ended, say) fails with [`Error::Terminated`]: no result waits for
/// ever.
pub(crate) struct Chunk {
    pub(crate) index: usize,
    pub(crate) task: Vec<u8>,
    sink: Option<Arc<dyn Sink>>,
}

impl Chunk {
    pub(crate) fn new(index: usize, task: Vec<u8>, sink: Arc<dyn Sink>) -> Chunk {
        Chunk {
            index,
            task,
            sink: Some(sink),
        }
    }

    /// Hands the chunk's reply (or failure) to its sink.
    fn deliver(mut self, reply: Result<Vec<u8>, Error>) {
        if let Some(sink) = self.sink.take() {
            sink.deliver(self.index, reply);
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.deliver(self.index, Err(Error::Terminated));
        }
    }
}

/// What rank 0's threads ask of the MPI thread.
pub(crate) enum Command {
    Chunk(Chunk),
    /// No more work: finish every chunk sent, stop the workers, end MPI; then say so.
    Close(mpsc::Sender<()>),
    /// Fail every chunk not yet answered, stop the workers (after the chunk each runs), end
    /// MPI; then say so.
    Terminate(mpsc::Sender<()>),
}

/// How the pool starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// Under `mpirun -n N`: ranks 1..N are the workers.
    World,
    /// Alone: `n` workers started with `MPI_Comm_spawn`.
    Spawn(usize),
}

/// What the MPI thread found this process to be.
pub(crate) enum Role {
    /// Rank 0, with this many workers; send it commands.
    Boss(usize),
    /// A worker, which served until rank 0 said stop: the process should end.
    Worker,
}

/// Starts the MPI thread; tells what this process is (after serving, for a worker).
pub(crate) fn start(
    how: Start,
) -> Result<(Role, mpsc::Sender<Command>, std::thread::JoinHandle<()>), Error> {
    let (commands, inbox) = mpsc::channel();
    let (told, role) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("mp-mpi".into())
        .spawn(move || run(how, &told, inbox))
        .map_err(|e| Error::Os("starting the MPI thread", Arc::new(e)))?;
    match role.recv() {
        Ok(Ok(role)) => Ok((role, commands, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(mpi_error("the MPI thread ended before MPI was initialized"))
        }
    }
}

pub(crate) fn mpi_error(why: impl Into<String>) -> Error {
    Error::Os("MPI", Arc::new(std::io::Error::other(why.into())))
}

fn run(how: Start, told: &mpsc::Sender<Result<Role, Error>>, inbox: mpsc::Receiver<Command>) {
    let Some((mut universe, _)) = mpi::initialize_with_threading(Threading::Funneled) else {
        let _ = told.send(Err(mpi_error(
            "MPI is initialized already: one pool per process",
        )));
        return;
    };
    let world = universe.world();
    if let Some(parent) = world.parent() {
        // Started by a pool's `MPI_Comm_spawn`: serve it, whatever this call asked.
        serve(&parent);
        let _ = told.send(Ok(Role::Worker));
        return;
    }
    match how {
        Start::World if world.rank() != 0 => {
            serve(&world);
            let _ = told.send(Ok(Role::Worker));
        }
        Start::World if world.size() < 2 => {
            let _ = told.send(Err(Error::InvalidArgument(
                "MpiPool::world needs workers: run under `mpirun -n N` with N of 2 or more, or use MpiPool::spawn",
            )));
        }
        Start::World => lead(
            &mut universe,
            &world,
            (1..world.size()).collect(),
            told,
            &inbox,
        ),
        Start::Spawn(_) if world.size() != 1 => {
            let _ = told.send(Err(Error::InvalidArgument(
                "MpiPool::spawn starts its own workers: run the program alone, or use MpiPool::world under mpirun",
            )));
        }
        Start::Spawn(n) => match spawn_workers(&world, n) {
            Ok(children) => {
                let workers = (0..children.remote_size()).collect();
                lead(&mut universe, &children, workers, told, &inbox);
            }
            Err(e) => {
                let _ = told.send(Err(e));
            }
        },
    }
    // `universe` drops here: MPI_Finalize, on the thread that initialized it.
}

/// Starts `n` workers of this executable (with its arguments) by `MPI_Comm_spawn`.
fn spawn_workers(
    world: &mpi::topology::SimpleCommunicator,
    n: usize,
) -> Result<mpi::topology::InterCommunicator, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Os("current_exe", Arc::new(e)))?;
    let mut command = Exe::new(exe);
    command.args(std::env::args_os().skip(1));
    world
        .process_at_rank(0)
        .spawn(&command, n as Rank)
        .map_err(|e| mpi_error(format!("MPI_Comm_spawn failed: {e:?}")))
}

/// Rank 0 of a pool of the `workers` ranks of `comm`: attaches the buffer for tasks sent
/// ahead, says so, and dispatches until the pool ends.
fn lead<C: Communicator>(
    universe: &mut mpi::environment::Universe,
    comm: &C,
    workers: Vec<Rank>,
    told: &mpsc::Sender<Result<Role, Error>>,
    inbox: &mpsc::Receiver<Command>,
) {
    universe.set_buffer_size(bsend_bytes(workers.len()));
    let _ = told.send(Ok(Role::Boss(workers.len())));
    dispatch(comm, workers, inbox);
}

/// The most memory the buffer for tasks sent ahead may take, whatever the workers' number.
const BSEND_BUDGET: usize = 64 << 20;

/// How many chunks each of `workers` workers is sent ahead at most: [`AHEAD`], or fewer for
/// so many workers that their buffer would pass [`BSEND_BUDGET`].
fn ahead_for(workers: usize) -> usize {
    (BSEND_BUDGET / (workers.max(1) * (AHEAD_TASK + 1024))).clamp(1, AHEAD)
}

/// The buffer for tasks sent ahead: every chunk in flight may sit in it, with MPI's own
/// bookkeeping (`MPI_BSEND_OVERHEAD`, some hundred bytes) beside each.
fn bsend_bytes(workers: usize) -> usize {
    workers * ahead_for(workers) * (AHEAD_TASK + 1024)
}

/// Waits for `look` to find something: spins, then naps in growing steps.
fn patiently<T>(mut look: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut nap = Duration::from_micros(20);
    loop {
        if let Some(found) = look() {
            return found;
        }
        if start.elapsed() < SPIN {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(nap);
            nap = (nap * 2).min(MAX_NAP);
        }
    }
}

/// A worker: runs the tasks rank 0 of `comm` (the world, or the parent of a spawned
/// worker) sends, and replies to each, until it says stop.
fn serve<C: Communicator>(comm: &C) {
    let boss = comm.process_at_rank(0);
    let mut targets = HashMap::new();
    loop {
        let (message, status) = patiently(|| boss.immediate_matched_probe());
        let (task, _) = (message, status).matched_receive_vec::<u8>();
        match status.tag() {
            TAG_TASK => {
                let reply = wire::run(&task, &mut targets);
                boss.send_with_tag(&reply[..], TAG_REPLY);
            }
            TAG_STOP => return,
            _ => {} // not ours: dropped
        }
    }
}

/// A worker as rank 0 sees it: its rank in `comm` and its chunks in flight, oldest first
/// (a worker answers in order, and MPI keeps a pair's messages in order).
struct Worker {
    rank: Rank,
    in_flight: VecDeque<(Chunk, Instant)>,
    /// Replies owed for chunks failed already (by a terminate): received and dropped, so
    /// that the worker is never left blocked sending one.
    owed: usize,
    /// How many chunks it is sent ahead (see [`AHEAD`]).
    ahead: usize,
}

/// How the dispatch loop ends: whom to tell once the workers are stopped.
enum End {
    Close(mpsc::Sender<()>),
    Terminate(mpsc::Sender<()>),
}

/// Rank 0: sends chunks to workers as they have room, hands replies to their sinks, until
/// told to close (every chunk answered) or terminate (every chunk failed at once); then
/// takes the replies still owed, and stops the workers.
fn dispatch<C: Communicator>(comm: &C, ranks: Vec<Rank>, inbox: &mpsc::Receiver<Command>) {
    let mut workers: Vec<Worker> = ranks
        .into_iter()
        .map(|rank| Worker {
            rank,
            in_flight: VecDeque::new(),
            owed: 0,
            ahead: 2,
        })
        .collect();
    let most_ahead = ahead_for(workers.len());
    let mut pending: VecDeque<Chunk> = VecDeque::new();
    let mut end: Option<End> = None;
    let mut idle_since: Option<Instant> = None;
    let mut nap = Duration::from_micros(20);
    let take =
        |command: Command, pending: &mut VecDeque<Chunk>, end: &mut Option<End>| match command {
            Command::Chunk(chunk) => pending.push_back(chunk),
            Command::Close(reply) => *end = Some(End::Close(reply)),
            Command::Terminate(reply) => *end = Some(End::Terminate(reply)),
        };
    loop {
        let mut progress = false;
        while end.is_none() {
            match inbox.try_recv() {
                Ok(command) => take(command, &mut pending, &mut end),
                Err(mpsc::TryRecvError::Empty) => break,
                // Every handle dropped without a word: as a terminate.
                Err(mpsc::TryRecvError::Disconnected) => {
                    end = Some(End::Terminate(mpsc::channel().0));
                }
            }
        }
        if matches!(end, Some(End::Terminate(_))) {
            fail_all(&mut workers, &mut pending, &Error::Terminated);
        }
        // Send while workers have room: the one with the fewest in flight first. A worker
        // with nothing in flight waits for a task, and takes it with a blocking send; one
        // with chunks in flight gets small tasks only, buffered (see [`AHEAD_TASK`]).
        while let Some(next) = pending.front() {
            let small = next.task.len() <= AHEAD_TASK;
            // A worker of long chunks holds one more while at least a chunk per worker is
            // left, so it never waits for rank 0 between two; near the end, one at a time,
            // so none waits behind another while a worker idles.
            let bulk = pending.len() >= workers.len();
            let Some(worker) = workers
                .iter_mut()
                .filter(|w| {
                    let ahead = if bulk { w.ahead.max(2) } else { w.ahead };
                    w.in_flight.is_empty() || (small && w.in_flight.len() < ahead)
                })
                .min_by_key(|w| w.in_flight.len())
            else {
                break;
            };
            let chunk = pending.pop_front().expect("not empty");
            let to = comm.process_at_rank(worker.rank);
            if worker.in_flight.is_empty() {
                to.send_with_tag(&chunk.task[..], TAG_TASK);
            } else {
                to.buffered_send_with_tag(&chunk.task[..], TAG_TASK);
            }
            worker.in_flight.push_back((chunk, Instant::now()));
            progress = true;
        }
        // Replies.
        while let Some(probed) = comm
            .any_process()
            .immediate_matched_probe_with_tag(TAG_REPLY)
        {
            let source = probed.1.source_rank();
            let (reply, _) = probed.matched_receive_vec::<u8>();
            progress = true;
            let Some(worker) = workers.iter_mut().find(|w| w.rank == source) else {
                continue; // from no worker of ours: dropped
            };
            if worker.owed > 0 {
                worker.owed -= 1;
                continue;
            }
            let Some((chunk, sent)) = worker.in_flight.pop_front() else {
                continue; // a reply to nothing: dropped
            };
            // A worker whose chunks take long gets one at a time.
            worker.ahead = if sent.elapsed() > LONG { 1 } else { most_ahead };
            chunk.deliver(Ok(reply));
        }
        let settled = pending.is_empty()
            && workers
                .iter()
                .all(|w| w.in_flight.is_empty() && w.owed == 0);
        if settled && end.is_some() {
            break;
        }
        if progress {
            idle_since = None;
            nap = Duration::from_micros(20);
            continue;
        }
        // Nothing moved: with nothing out, wait for a command (new work wakes this at
        // once); with replies awaited, spin a moment, then nap on the command channel.
        let out = !settled;
        let waited = idle_since.get_or_insert_with(Instant::now).elapsed();
        if !out && end.is_none() {
            match inbox.recv() {
                Ok(command) => take(command, &mut pending, &mut end),
                Err(_) => end = Some(End::Terminate(mpsc::channel().0)),
            }
        } else if waited < SPIN {
            std::hint::spin_loop();
        } else if end.is_some() {
            std::thread::sleep(nap);
            nap = (nap * 2).min(MAX_NAP);
        } else {
            match inbox.recv_timeout(nap) {
                Ok(command) => take(command, &mut pending, &mut end),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    end = Some(End::Terminate(mpsc::channel().0));
                }
            }
            nap = (nap * 2).min(MAX_NAP);
        }
    }
    // Work that came after the end fails now (as every chunk still in the channel will when
    // the channel goes: see `Chunk`'s drop).
    while let Ok(command) = inbox.try_recv() {
        match command {
            Command::Chunk(chunk) => chunk.deliver(Err(Error::Terminated)),
            Command::Close(reply) | Command::Terminate(reply) => {
                let _ = reply.send(());
            }
        }
    }
    // (Every reply is in: each worker waits for a task, and takes this at once.)
    for worker in &workers {
        comm.process_at_rank(worker.rank)
            .send_with_tag(&[0u8][..], TAG_STOP);
    }
    match end {
        Some(End::Close(reply) | End::Terminate(reply)) => {
            let _ = reply.send(());
        }
        None => {}
    }
}

/// Fails every chunk not answered yet with `err`; the replies of those sent are still owed.
fn fail_all(workers: &mut [Worker], pending: &mut VecDeque<Chunk>, err: &Error) {
    for worker in workers.iter_mut() {
        worker.owed += worker.in_flight.len();
        for (chunk, _) in worker.in_flight.drain(..) {
            chunk.deliver(Err(err.clone()));
        }
    }
    for chunk in pending.drain(..) {
        chunk.deliver(Err(err.clone()));
    }
}
