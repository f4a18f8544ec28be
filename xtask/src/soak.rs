//! `cargo xtask soak [--quick | --minutes N] [--seed S] [--only WORKLOAD]`: the fault campaign (issue 18).
//!
//! Round after round, the workloads in turn (counters under a `Lock` or `RLock`, a
//! `Barrier`, waiters on a `Condition`, a `Queue`, a `JoinableQueue`, a `Pool`, pipes and
//! listeners, chains of children), each round with a seed of its own, run across processes
//! of ours (started by fork, spawn or forkserver, at random), while this process SIGKILLs
//! some of them at random moments: inside a lock or a wait, in the middle of a `put` or a
//! `get`, of a pool's task, of a handshake, or the middle process of a chain of three. Then
//! it checks what must still hold:
//!
//! - nothing hangs: every wait has a deadline ([`ROUND_DEADLINE`]), and a round that passes
//!   it counts as a hang, reported with its seed;
//! - every item acknowledged as sent is received exactly once, except what the documented
//!   rules allow to be lost (one item per killed consumer); no item is torn or garbled;
//!   each consumer takes each producer's items in the order they were put;
//! - counters kept under a lock match what the survivors did, give or take one increment
//!   per owner that died inside the lock (which the next owner is told of);
//! - no process is left: this process is a child subreaper, so orphans come back to it, and
//!   after each round it must have no child at all (no zombie, no orphan);
//! - no descriptor is left open here, no entry in `/dev/shm`, no socket file.
//!
//! A violation is printed with the round's seed: `--seed S` with the same `--minutes` (or
//! `--quick`) replays the same rounds. `--quick` runs for about 80 seconds (CI runs it).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use multiprocessing::{
    Array, Barrier, Condition, Event, JoinableQueue, Pool, Process, Queue, RLock, RawArray,
    StartMethod, Value,
    connection::{Client, Listener},
};

/// The longest a round may take before it counts as a hang.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);
/// How long the survivors of a round have to be reaped before one left counts as a leak.
const REAP_GRACE: Duration = Duration::from_secs(3);

pub struct Options {
    duration: Duration,
    seed: u64,
    /// Only this workload's rounds (`--only NAME`), to chase one workload's failure.
    only: Option<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut duration = Duration::from_secs(5 * 60);
        let mut seed = None;
        let mut only = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => duration = Duration::from_secs(80),
                "--minutes" => {
                    let minutes: f64 = args
                        .next()
                        .and_then(|m| m.parse().ok())
                        .filter(|m: &f64| *m > 0.0 && m.is_finite())
                        .ok_or("--minutes wants a number of minutes above 0")?;
                    duration = Duration::from_secs_f64(minutes * 60.0);
                }
                "--seed" => {
                    seed = Some(
                        args.next()
                            .and_then(|s| s.parse().ok())
                            .ok_or("--seed wants a whole number")?,
                    );
                }
                "--only" => {
                    let name = args.next().ok_or("--only wants a workload's name")?;
                    if !WORKLOADS.iter().any(|(n, _)| n == name) {
                        return Err(format!("soak: no workload named {name}"));
                    }
                    only = Some(name.clone());
                }
                other => return Err(format!("soak: unknown argument {other}")),
            }
        }
        let seed = seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        Ok(Options {
            duration,
            seed,
            only,
        })
    }
}

/// splitmix64: small, and the same sequence for the same seed everywhere.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn method(&mut self) -> StartMethod {
        method_of(self.below(3) as u8)
    }

    /// A pause of up to `max`, so kills land at random moments (not to synchronize).
    pub fn pause(&mut self, max: Duration) {
        let nanos = self.below(max.as_nanos() as u64 + 1);
        std::thread::sleep(Duration::from_nanos(nanos));
    }
}

/// Start method number `i` (modulo 3), for a child told which to use.
fn method_of(i: u8) -> StartMethod {
    [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ][usize::from(i % 3)]
}

/// What one round did.
#[derive(Default, Debug, Clone, Copy)]
pub struct Tally {
    pub kills: u64,
    pub ops: u64,
    pub lost: u64,
    pub allowed: u64,
}

type Workload = fn(&mut Rng) -> Result<Tally, String>;

const WORKLOADS: &[(&str, Workload)] = &[
    ("locks", locks),
    ("barrier", barrier),
    ("condition", condition),
    ("queue", queue),
    ("joinable", joinable),
    ("pool", pool),
    ("pipes", pipes),
    ("nested", nested),
];

#[derive(Default)]
struct Line {
    rounds: u64,
    tally: Tally,
    hangs: u64,
    leaks: u64,
    violations: u64,
}

pub fn run(options: Options) -> Result<(), String> {
    // Orphans of our rounds come back to us, where the leak check sees them.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| format!("prctl(PR_SET_CHILD_SUBREAPER): {e}"))?;
    println!(
        "soak: seed {}, {:.1} minutes",
        options.seed,
        options.duration.as_secs_f64() / 60.0
    );
    // What a process keeps once for good (the pool's Ctrl-C listener) is made before the
    // first snapshot; what it keeps for its next children is let go after each round.
    drop(Pool::new(1).map_err(|e| format!("a first pool: {e}"))?);
    mp_spawn::__release_caches();
    let started = Instant::now();
    let mut master = Rng::new(options.seed);
    let mut lines: BTreeMap<&str, Line> = WORKLOADS
        .iter()
        .map(|(name, _)| (*name, Line::default()))
        .collect();
    let mut failures = Vec::new();
    let mut round = 0u64;
    while started.elapsed() < options.duration {
        let round_seed = master.next();
        let (name, workload) = WORKLOADS[round as usize % WORKLOADS.len()];
        round += 1;
        if options.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let before = Snapshot::take();
        let began = Instant::now();
        let outcome = workload(&mut Rng::new(round_seed));
        let took = began.elapsed();
        mp_spawn::__release_caches();
        let line = lines.get_mut(name).expect("every workload has a line");
        line.rounds += 1;
        let mut problems = Vec::new();
        match outcome {
            Ok(t) => {
                line.tally.kills += t.kills;
                line.tally.ops += t.ops;
                line.tally.lost += t.lost;
                line.tally.allowed += t.allowed;
                if t.lost > t.allowed {
                    problems.push(format!("lost {} items, {} allowed", t.lost, t.allowed));
                    line.violations += 1;
                }
            }
            Err(why) if why.starts_with("hang") => {
                line.hangs += 1;
                problems.push(why);
            }
            Err(why) => {
                line.violations += 1;
                problems.push(why);
            }
        }
        if took > ROUND_DEADLINE + REAP_GRACE {
            line.hangs += 1;
            problems.push(format!("the round took {took:?}"));
        }
        let leaks = before.leaks();
        if !leaks.is_empty() {
            line.leaks += 1;
            problems.extend(leaks);
        }
        if !problems.is_empty() {
            let report = format!(
                "round {round} ({name}, seed {round_seed}): {}",
                problems.join("; ")
            );
            eprintln!("soak: {report}");
            failures.push(report);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<8} {:>7} {:>7} {:>10} {:>13} {:>6} {:>6} {:>10}",
        "workload", "rounds", "kills", "ops", "lost/allowed", "hangs", "leaks", "violations"
    );
    let mut total = Line::default();
    for (name, l) in &lines {
        let _ = writeln!(
            out,
            "{name:<8} {:>7} {:>7} {:>10} {:>13} {:>6} {:>6} {:>10}",
            l.rounds,
            l.tally.kills,
            l.tally.ops,
            format!("{}/{}", l.tally.lost, l.tally.allowed),
            l.hangs,
            l.leaks,
            l.violations
        );
        total.rounds += l.rounds;
        total.tally.kills += l.tally.kills;
        total.tally.ops += l.tally.ops;
        total.tally.lost += l.tally.lost;
        total.tally.allowed += l.tally.allowed;
        total.hangs += l.hangs;
        total.leaks += l.leaks;
        total.violations += l.violations;
    }
    let _ = writeln!(
        out,
        "{:<8} {:>7} {:>7} {:>10} {:>13} {:>6} {:>6} {:>10}",
        "total",
        total.rounds,
        total.tally.kills,
        total.tally.ops,
        format!("{}/{}", total.tally.lost, total.tally.allowed),
        total.hangs,
        total.leaks,
        total.violations
    );
    print!("{out}");
    if failures.is_empty() {
        println!(
            "soak: no violation in {:.1} minutes (seed {})",
            started.elapsed().as_secs_f64() / 60.0,
            options.seed
        );
        Ok(())
    } else {
        Err(format!(
            "{} round(s) failed; replay with --seed {} (same duration):\n{}",
            failures.len(),
            options.seed,
            failures.join("\n")
        ))
    }
}

/// What must be the same after a round as before it.
struct Snapshot {
    fds: Vec<String>,
    shm: Vec<String>,
}

impl Snapshot {
    fn take() -> Snapshot {
        Snapshot {
            fds: list("/proc/self/fd"),
            shm: list("/dev/shm"),
        }
    }

    /// What the round left behind: processes (once they had time to be reaped),
    /// descriptors, `/dev/shm` entries.
    fn leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        let deadline = Instant::now() + REAP_GRACE;
        let mut left = children();
        while !left.is_empty() && Instant::now() < deadline {
            reap_any();
            std::thread::sleep(Duration::from_millis(10));
            left = children();
        }
        if !left.is_empty() {
            leaks.push(format!("processes left: {left:?}"));
            for pid in left {
                kill(pid);
            }
            reap_any();
        }
        let fds = list("/proc/self/fd");
        if fds.len() > self.fds.len() {
            let new: Vec<_> = fds
                .iter()
                .filter(|f| !self.fds.contains(f))
                .map(|f| describe_fd(f))
                .collect();
            leaks.push(format!("descriptors left open: {new:?}"));
        }
        let shm: Vec<_> = list("/dev/shm")
            .into_iter()
            .filter(|e| !self.shm.contains(e))
            .collect();
        if !shm.is_empty() {
            leaks.push(format!("/dev/shm entries left: {shm:?}"));
        }
        leaks
    }
}

fn list(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn describe_fd(fd: &str) -> String {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{fd} -> {target}")
}

/// The processes a round left: every descendant of ours, orphans included (we are their
/// subreaper), except our forkserver and its idle standby children (it keeps two forked
/// ahead; more than that, or one with children of its own, is a leak).
fn children() -> Vec<u32> {
    let server = mp_spawn::__forkserver_pid();
    let mut left = Vec::new();
    let mut todo = children_of("self");
    while let Some(pid) = todo.pop() {
        if Some(pid) == server {
            let standbys = children_of(&pid.to_string());
            for (i, standby) in standbys.into_iter().enumerate() {
                let theirs = children_of(&standby.to_string());
                if i >= 2 || !theirs.is_empty() {
                    left.push(standby);
                    todo.extend(theirs);
                }
            }
            continue;
        }
        left.push(pid);
        todo.extend(children_of(&pid.to_string()));
    }
    left
}

/// The children of process `pid` (`"self"` for this one), from every one of its threads.
fn children_of(pid: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for task in list(&format!("/proc/{pid}/task")) {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{task}/children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

fn reap_any() {
    while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {}
}

fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Time left of a round begun at `began`, or a hang.
fn left(began: Instant, what: &str) -> Result<Duration, String> {
    ROUND_DEADLINE
        .checked_sub(began.elapsed())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("hang: {what} past the round's deadline"))
}

/// Starts `target(args)` as a daemon child, by a start method picked at random.
fn start<F, A, R>(rng: &mut Rng, target: F, args: A) -> Result<Process<R>, String>
where
    F: Fn(A) -> R + Copy + 'static,
    A: multiprocessing::Message + 'static,
    R: multiprocessing::Message + 'static,
{
    Process::new(target, args)
        .method(rng.method())
        .daemon(true)
        .start()
        .map_err(|e| format!("start: {e}"))
}

/// Joins `p` within the round's deadline; `Ok(None)` if it was killed or failed.
fn join<R: multiprocessing::Message + 'static>(
    p: &mut Process<R>,
    began: Instant,
    what: &str,
) -> Result<Option<R>, String> {
    match p.join_timeout(left(began, what)?) {
        Ok(Some(r)) => Ok(Some(r)),
        Ok(None) => {
            let _ = p.kill();
            Err(format!("hang: {what} (pid {}) did not end", p.pid()))
        }
        Err(_) => Ok(None),
    }
}

// ---- locks: counters under a lock, owners killed inside it ---------------------------------

/// Slots of the shared counters: the total, then one per worker, then the number of times a
/// worker took the lock from an owner that died holding it.
fn count_under_lock((counts, me, rounds, inside): (Array<u64>, u32, u64, u32)) -> u64 {
    let workers = counts.len() - 2;
    for _ in 0..rounds {
        let (mut guard, died) = match counts.lock() {
            Ok(g) => (g, false),
            Err(died) => (died.into_guard(), true),
        };
        if died {
            guard[workers + 1] += 1;
        }
        guard[0] += 1;
        // Time inside the lock, between the two writes, for a kill to land in.
        let until = Instant::now() + Duration::from_micros(u64::from(inside));
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        guard[1 + me as usize] += 1;
    }
    rounds
}

/// Re-entrant holds of an `RLock` guarding a `Value`, with the same rule.
fn count_under_rlock(
    (lock, total, died_seen, rounds): (RLock, Value<u64>, Value<u64>, u64),
) -> u64 {
    let mut mine = 0;
    for _ in 0..rounds {
        let outer = lock.lock();
        if outer.is_err() {
            died_seen.set(died_seen.get() + 1);
        }
        let inner = lock.lock(); // re-entrant
        total.set(total.get() + 1);
        mine += 1;
        drop(inner);
        drop(outer);
    }
    mine
}

/// Meets the other parties `rounds` times; a broken barrier (a party killed) ends it with
/// the number of meetings it made.
fn meet((barrier, rounds): (Barrier, u32)) -> u32 {
    for done in 0..rounds {
        if barrier.wait_timeout(Duration::from_secs(10)).is_err() {
            return done;
        }
    }
    rounds
}

/// Parties meeting at a `Barrier`, one of them killed: the others must get an error (a
/// broken barrier), never wait for ever.
fn barrier(rng: &mut Rng) -> Result<Tally, String> {
    let began = Instant::now();
    let parties = 2 + rng.below(3) as u32;
    let rounds = 50 + rng.below(200) as u32;
    let b = Barrier::new(parties).map_err(|e| e.to_string())?;
    let mut procs = Vec::new();
    for _ in 0..parties {
        procs.push(start(rng, meet, (b.clone(), rounds))?);
    }
    let killed = rng.chance(70).then(|| {
        rng.pause(Duration::from_millis(20));
        let v = rng.below(procs.len() as u64) as usize;
        let _ = procs[v].kill();
        v
    });
    let mut met = Vec::new();
    for (i, p) in procs.iter_mut().enumerate() {
        match join(p, began, "a party")? {
            Some(n) => met.push(n),
            None if killed == Some(i) => {}
            None => return Err("a party failed".into()),
        }
    }
    // Without a kill every party met every time, and the parties always agree but for one.
    if killed.is_none() && met.iter().any(|&n| n != rounds) {
        return Err(format!("parties met {met:?} times of {rounds}"));
    }
    if met
        .iter()
        .max()
        .zip(met.iter().min())
        .is_some_and(|(a, b)| a - b > 1)
    {
        return Err(format!("parties met {met:?} times: more than one apart"));
    }
    Ok(Tally {
        kills: u64::from(killed.is_some()),
        ops: met.iter().map(|&n| u64::from(n)).sum(),
        ..Tally::default()
    })
}

fn locks(rng: &mut Rng) -> Result<Tally, String> {
    let began = Instant::now();
    let workers = 2 + rng.below(3) as u32;
    let rounds = 200 + rng.below(800);
    let inside = rng.below(50) as u32;
    let mut tally = Tally::default();
    if rng.chance(70) {
        let counts = Array::<u64>::new(workers as usize + 2).map_err(|e| e.to_string())?;
        let mut procs = Vec::new();
        for me in 0..workers {
            let p = start(rng, count_under_lock, (counts.clone(), me, rounds, inside))?;
            procs.push(p);
        }
        let mut killed = vec![false; procs.len()];
        for _ in 0..rng.below(3) {
            rng.pause(Duration::from_millis(20));
            let victim = rng.below(procs.len() as u64) as usize;
            if !killed[victim] {
                let _ = procs[victim].kill();
                killed[victim] = true;
                tally.kills += 1;
            }
        }
        let mut survived = Vec::new();
        for (i, p) in procs.iter_mut().enumerate() {
            match join(p, began, "a lock worker")? {
                Some(done) => survived.push((i, done)),
                None if killed[i] => {}
                None => return Err(format!("a lock worker failed: {:?}", p.exitcode())),
            }
        }
        // Take the lock once more: a worker killed inside it at the end is noticed here.
        let (guard, died) = match counts.lock() {
            Ok(g) => (g, false),
            Err(d) => (d.into_guard(), true),
        };
        let total = guard[0];
        let per: u64 = guard[1..=workers as usize].iter().sum();
        let deaths_inside = guard[workers as usize + 1] + u64::from(died);
        for (i, done) in survived {
            if guard[1 + i] != done {
                return Err(format!(
                    "worker {i} did {done} increments, its counter says {}",
                    guard[1 + i]
                ));
            }
        }
        if total < per || total - per > deaths_inside {
            return Err(format!(
                "the total {total} under the lock is not the workers' {per} \
                 (+ at most {deaths_inside} owners that died inside)"
            ));
        }
        tally.ops = total;
    } else {
        let lock = RLock::new().map_err(|e| e.to_string())?;
        let total = Value::new(0u64).map_err(|e| e.to_string())?;
        let died = Value::new(0u64).map_err(|e| e.to_string())?;
        let mut procs = Vec::new();
        for _ in 0..workers {
            let args = (lock.clone(), total.clone(), died.clone(), rounds);
            procs.push(start(rng, count_under_rlock, args)?);
        }
        let mut killed = vec![false; procs.len()];
        if rng.chance(60) {
            rng.pause(Duration::from_millis(10));
            let victim = rng.below(procs.len() as u64) as usize;
            let _ = procs[victim].kill();
            killed[victim] = true;
            tally.kills += 1;
        }
        let mut done = 0;
        for (i, p) in procs.iter_mut().enumerate() {
            match join(p, began, "an rlock worker")? {
                Some(n) => done += n,
                None if killed[i] => {}
                None => return Err("an rlock worker failed".into()),
            }
        }
        // A killed worker's increments are not known: the total is at least the survivors',
        // and exactly theirs when nobody was killed.
        let total = total.get();
        if total < done || (tally.kills == 0 && total != done) {
            return Err(format!("rlock total {total}, survivors did {done}"));
        }
        tally.ops = total;
    }
    Ok(tally)
}

/// Slots of a condition round's state (a `RawArray`, read and written under the
/// condition's lock): tokens handed out and not taken, whether the hand-out is over, how
/// many times a waiter found the lock's last owner dead, then the tokens each waiter took.
const TOKENS: usize = 0;
const CLOSED: usize = 1;
const DIED: usize = 2;
const TAKEN: usize = 3;

/// Takes tokens one at a time, waiting on the condition while there are none, until the
/// hand-out is over and none is left; how many it took.
fn take_tokens((cond, state, me): (Condition, RawArray<u64>, u32)) -> u64 {
    let get = |i| state.get(i).unwrap_or(0);
    let died = || {
        let _ = state.set(DIED, get(DIED) + 1);
    };
    let mut mine = 0;
    loop {
        let guard = cond.lock().unwrap_or_else(|d| {
            died();
            d.into_guard()
        });
        loop {
            if get(TOKENS) > 0 {
                let _ = state.set(TOKENS, get(TOKENS) - 1);
                let _ = state.set(TAKEN + me as usize, get(TAKEN + me as usize) + 1);
                mine += 1;
                break;
            }
            if get(CLOSED) != 0 {
                return mine;
            }
            match cond.wait_timeout(Duration::from_secs(10)) {
                Ok(_) => {}
                Err(multiprocessing::synchronize::Error::OwnerDied) => died(),
                Err(_) => return u64::MAX, // a failure, told apart from a count
            }
        }
        drop(guard);
    }
}

/// Waiters on a `Condition` taking tokens that this process hands out one at a time with
/// `notify(1)`, one waiter killed at a random moment (asleep in `wait`, or inside the lock
/// between its two writes). Nobody may hang (a wake-up is never spent on the dead, and the
/// end is told with `notify_all`), and every token is accounted for: left, or taken by a
/// waiter, give or take one per owner that died inside the lock.
fn condition(rng: &mut Rng) -> Result<Tally, String> {
    let began = Instant::now();
    let waiters = 2 + rng.below(3) as u32;
    let tokens = 100 + rng.below(400);
    let cond = Condition::new().map_err(|e| e.to_string())?;
    let state = RawArray::<u64>::new(TAKEN + waiters as usize).map_err(|e| e.to_string())?;
    let get = |i| state.get(i).unwrap_or(0);
    let mut procs = Vec::new();
    for me in 0..waiters {
        procs.push(start(rng, take_tokens, (cond.clone(), state.clone(), me))?);
    }
    let victim = rng
        .chance(70)
        .then(|| (rng.below(u64::from(waiters)) as usize, rng.below(tokens)));
    let mut died_here = 0;
    let mut lock = || {
        cond.lock().unwrap_or_else(|d| {
            died_here += 1;
            d.into_guard()
        })
    };
    for t in 0..tokens {
        if let Some((v, at)) = victim
            && at == t
        {
            let _ = procs[v].kill();
        }
        {
            let _held = lock();
            let _ = state.set(TOKENS, get(TOKENS) + 1);
            cond.notify(1).map_err(|e| format!("notify: {e}"))?;
        }
        if rng.chance(5) {
            rng.pause(Duration::from_millis(2)); // long enough for the waiters to sleep
        }
        left(began, "handing out tokens")?;
    }
    {
        let _held = lock();
        let _ = state.set(CLOSED, 1);
        cond.notify_all().map_err(|e| format!("notify_all: {e}"))?;
    }
    let mut took = 0;
    for (i, p) in procs.iter_mut().enumerate() {
        match join(p, began, "a waiter")? {
            Some(u64::MAX) => return Err("a waiter's wait failed".into()),
            Some(n) if n != get(TAKEN + i) => {
                return Err(format!(
                    "waiter {i} took {n} tokens, its slot says {}",
                    get(TAKEN + i)
                ));
            }
            Some(n) => took += n,
            None if victim.is_some_and(|(v, _)| v == i) => took += get(TAKEN + i),
            None => return Err("a waiter failed".into()),
        }
    }
    // Once more, so that a waiter killed inside the lock at the very end is noticed.
    drop(lock());
    let accounted = get(TOKENS) + took;
    let deaths_inside = get(DIED) + died_here;
    if accounted.abs_diff(tokens) > deaths_inside {
        return Err(format!(
            "{tokens} tokens handed out, {accounted} left or taken \
             ({deaths_inside} owners died inside the lock)"
        ));
    }
    Ok(Tally {
        kills: u64::from(victim.is_some()),
        ops: tokens,
        ..Tally::default()
    })
}

// ---- queue: producers and consumers killed mid-put and mid-get ---------------------------

/// An item: its producer, its number, and bytes derived from both (a torn or garbled item
/// does not match them).
type Item = (u32, u32, Vec<u8>);

fn payload(producer: u32, seq: u32, len: usize) -> Vec<u8> {
    // Seeded by both numbers, mixed (a xorshift seed must not be 0).
    let mut x = Rng::new(u64::from(producer) << 32 | u64::from(seq)).next() | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn item_len(producer: u32, seq: u32) -> usize {
    let h = (producer.wrapping_mul(2_654_435_761) ^ seq.wrapping_mul(40_503)) as usize;
    match h % 64 {
        0 => 200_000 + h % 100_000, // through the side channel
        1..=4 => 2_000 + h % 30_000,
        _ => h % 300,
    }
}

/// A queue, and the `JoinableQueue` it belongs to when the round uses one.
type Queues = (Queue<Item>, Option<JoinableQueue<Item>>);

/// Puts `count` items, recording in `acked[me]` how many puts returned `Ok`.
fn produce(((queue, joinable), acked, me, count): (Queues, Array<u64>, u32, u32)) -> u32 {
    for seq in 0..count {
        let item = (me, seq, payload(me, seq, item_len(me, seq)));
        let put = match &joinable {
            Some(j) => j.put(item).is_ok(),
            None => queue.put(item).is_ok(),
        };
        if !put {
            return seq;
        }
        let _ = acked.set(me as usize, u64::from(seq) + 1);
    }
    count
}

/// Takes items until `done` is set and the queue is empty, marking each in `seen`
/// (`report`: duplicates, torn items, items out of their producer's order).
fn consume(
    ((queue, joinable), seen, report, done, per): (Queues, Array<u8>, Array<u64>, Event, u32),
) -> u64 {
    let mut got = 0;
    let mut order = InOrder::default();
    loop {
        match queue.get_timeout(Duration::from_millis(20)) {
            Ok(item) => {
                got += 1;
                order.check(&report, &item);
                mark(&seen, &report, per, item);
                finished(&joinable, &report);
            }
            Err(_) if done.is_set() => return got,
            Err(_) => {}
        }
    }
}

/// Marks a task taken from a `JoinableQueue` done; a `task_done` refused (more than were
/// put) is reported.
fn finished(joinable: &Option<JoinableQueue<Item>>, report: &Array<u64>) {
    if let Some(j) = joinable
        && j.task_done().is_err()
    {
        let mut r = report.lock().unwrap_or_else(|d| d.into_guard());
        r[2] += 1;
    }
}

/// The last item one consumer took from each producer: a consumer takes each producer's
/// items in the order they were put (FIFO per producer, as in Python).
#[derive(Default)]
struct InOrder(std::collections::HashMap<u32, u32>);

impl InOrder {
    /// Reports `item` (in `report[3]`) if it comes before or with one already taken from
    /// its producer.
    fn check(&mut self, report: &Array<u64>, (producer, seq, _): &Item) {
        if self
            .0
            .insert(*producer, *seq)
            .is_some_and(|last| last >= *seq)
        {
            let mut r = report.lock().unwrap_or_else(|d| d.into_guard());
            r[3] += 1;
        }
    }
}

fn mark(seen: &Array<u8>, report: &Array<u64>, per: u32, (producer, seq, bytes): Item) {
    if seq >= per || bytes != payload(producer, seq, item_len(producer, seq)) {
        let mut r = report.lock().unwrap_or_else(|d| d.into_guard());
        r[1] += 1;
        return;
    }
    let at = (producer * per + seq) as usize;
    let mut s = seen.lock().unwrap_or_else(|d| d.into_guard());
    if s[at] != 0 {
        drop(s);
        let mut r = report.lock().unwrap_or_else(|d| d.into_guard());
        r[0] += 1;
    } else {
        s[at] = 1;
    }
}

fn queue(rng: &mut Rng) -> Result<Tally, String> {
    stream(rng, false)
}

fn joinable(rng: &mut Rng) -> Result<Tally, String> {
    stream(rng, true)
}

/// Producers and consumers on a `Queue`, or on a `JoinableQueue` whose consumers mark each
/// task done, killed at random moments.
fn stream(rng: &mut Rng, joinable: bool) -> Result<Tally, String> {
    let began = Instant::now();
    let producers = 1 + rng.below(3) as u32;
    let consumers = 1 + rng.below(3) as u32;
    let per = 300 + rng.below(1200) as u32;
    let capacity = [4096, 64 << 10, 1 << 20][rng.below(3) as usize];
    let joinable = joinable
        .then(|| Queue::<Item>::builder().capacity(capacity).build_joinable())
        .transpose()
        .map_err(|e| e.to_string())?;
    let q: Queue<Item> = match &joinable {
        Some(j) => j.queue().clone(),
        None => Queue::builder()
            .capacity(capacity)
            .build()
            .map_err(|e| e.to_string())?,
    };
    let queues = (q.clone(), joinable.clone());
    let acked = Array::<u64>::new(producers as usize).map_err(|e| e.to_string())?;
    let seen = Array::<u8>::new((producers * per) as usize).map_err(|e| e.to_string())?;
    // Items received twice, items torn or garbled, task_done calls refused, items out of
    // their producer's order at one consumer.
    let report = Array::<u64>::new(4).map_err(|e| e.to_string())?;
    let done = Event::new().map_err(|e| e.to_string())?;
    let mut prods = Vec::new();
    for me in 0..producers {
        prods.push(start(
            rng,
            produce,
            (queues.clone(), acked.clone(), me, per),
        )?);
    }
    let mut cons = Vec::new();
    for _ in 0..consumers {
        let args = (
            queues.clone(),
            seen.clone(),
            report.clone(),
            done.clone(),
            per,
        );
        cons.push(start(rng, consume, args)?);
    }
    let mut tally = Tally::default();
    let mut killed_p = vec![false; prods.len()];
    let mut killed_c = vec![false; cons.len()];
    for _ in 0..rng.below(4) {
        rng.pause(Duration::from_millis(30));
        if rng.chance(50) {
            let v = rng.below(prods.len() as u64) as usize;
            if !killed_p[v] {
                let _ = prods[v].kill();
                killed_p[v] = true;
                tally.kills += 1;
            }
        } else {
            let v = rng.below(cons.len() as u64) as usize;
            if !killed_c[v] {
                let _ = cons[v].kill();
                killed_c[v] = true;
                tally.kills += 1;
                tally.allowed += 1;
            }
        }
    }
    // This process consumes too while the producers run: with every consumer killed, a
    // full queue would otherwise hold the producers for ever.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (joined, mut order) = std::thread::scope(|s| {
        let getter = s.spawn(|| {
            let mut order = InOrder::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(item) = q.get_timeout(Duration::from_millis(20)) {
                    order.check(&report, &item);
                    mark(&seen, &report, per, item);
                    finished(&joinable, &report);
                }
            }
            order
        });
        let mut joined = Ok(());
        for (i, p) in prods.iter_mut().enumerate() {
            match join(p, began, "a producer") {
                Ok(None) if !killed_p[i] => joined = Err("a producer failed".to_string()),
                Err(e) => joined = Err(e),
                _ => {}
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (joined, getter.join().unwrap_or_default())
    });
    joined?;
    done.set();
    for (i, c) in cons.iter_mut().enumerate() {
        if join(c, began, "a consumer")?.is_none() && !killed_c[i] {
            return Err("a consumer failed".into());
        }
    }
    // What no consumer took (all of them may have been killed) is drained here.
    while let Ok(item) = q.try_get() {
        order.check(&report, &item);
        mark(&seen, &report, per, item);
        finished(&joinable, &report);
        left(began, "draining the queue")?;
    }
    if let Some(j) = &joinable {
        // Every task taken is done. Without a kill, `join` returns at once and one more
        // `task_done` is refused; a producer killed inside a `put`, or a consumer between
        // its `get` and its `task_done`, may leave a task unfinished for good (the
        // documented rule), and then `join_timeout` must still return in its time.
        let wait = if tally.kills == 0 {
            left(began, "joining the queue")?
        } else {
            Duration::from_millis(50)
        };
        let t = Instant::now();
        let joined = j.join_timeout(wait);
        if t.elapsed() > wait + Duration::from_secs(1) {
            return Err(format!(
                "hang: join_timeout({wait:?}) took {:?}",
                t.elapsed()
            ));
        }
        // Each killed process had at most one put or one task in hand.
        let unfinished = j.unfinished();
        if unfinished > tally.kills {
            return Err(format!(
                "{unfinished} tasks unfinished with every one taken marked done \
                 ({} processes killed)",
                tally.kills
            ));
        }
        if tally.kills == 0 && (joined.is_err() || j.task_done().is_ok()) {
            return Err(format!(
                "with every task done and nobody killed, join gave {joined:?}, or one more \
                 task_done was taken"
            ));
        }
    }
    let report = report.to_vec();
    if report.iter().any(|&n| n > 0) {
        return Err(format!(
            "{} items received twice, {} torn or garbled, {} task_done calls refused, {} out \
             of their producer's order",
            report[0], report[1], report[2], report[3]
        ));
    }
    let seen = seen.to_vec();
    let acked = acked.to_vec();
    for p in 0..producers {
        let base = (p * per) as usize;
        let missing = (0..acked[p as usize] as usize)
            .filter(|&s| seen[base + s] == 0)
            .count() as u64;
        tally.lost += missing;
        tally.ops += acked[p as usize];
    }
    Ok(tally)
}

// ---- pool: workers killed mid-task ----------------------------------------------------------

fn soak_task(x: u64) -> u64 {
    // Mostly a few microseconds of work, one task in 20 about 200 µs: kills land inside
    // tasks as well as between them.
    let spins = if x.is_multiple_of(20) {
        100_000
    } else {
        x % 500
    };
    let mut y = x | 1;
    for _ in 0..spins {
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
    }
    std::hint::black_box(y);
    x.wrapping_mul(x)
}

/// A process that runs a pool of its own, to be killed with its workers running: it tells
/// the soak its workers' pids, then maps for ever.
fn pool_owner((tell, method): (multiprocessing::Connection, u8)) -> u32 {
    let method = method_of(method);
    let Ok(pool) = Pool::builder().processes(2).method(method).build() else {
        return 1;
    };
    let _ = tell.send(&pool.pids());
    loop {
        if pool.map(soak_task, 0..10_000u64).is_err() {
            return 2;
        }
    }
}

/// The parent of a pool killed while its workers work: they must not outlive it.
fn pool_parent_killed(rng: &mut Rng) -> Result<Tally, String> {
    let began = Instant::now();
    let (ours, theirs) = multiprocessing::pipe(true).map_err(|e| e.to_string())?;
    let method = rng.below(3) as u8;
    let mut owner = start(rng, pool_owner, (theirs, method))?;
    if !ours
        .poll(Some(left(began, "the pool's start")?))
        .unwrap_or(false)
    {
        let _ = owner.kill();
        return Err("hang: a pool in a child did not start".into());
    }
    let workers: Vec<u32> = ours.recv().map_err(|e| format!("the workers' pids: {e}"))?;
    rng.pause(Duration::from_millis(20));
    owner.kill().map_err(|e| e.to_string())?;
    let _ = join(&mut owner, began, "the pool's parent")?;
    // The workers are checked by the round's leak check (they were our descendants).
    Ok(Tally {
        kills: 1,
        ops: workers.len() as u64,
        ..Tally::default()
    })
}

fn pool(rng: &mut Rng) -> Result<Tally, String> {
    if rng.chance(20) {
        return pool_parent_killed(rng);
    }
    let began = Instant::now();
    let p = std::sync::Arc::new(
        Pool::builder()
            .processes(2)
            .method(rng.method())
            .build()
            .map_err(|e| e.to_string())?,
    );
    let n = 200 + rng.below(2000);
    let chunk = 1 + rng.below(20) as usize;
    let kills = rng.below(3);
    let mut tally = Tally {
        ops: n,
        ..Tally::default()
    };
    let check = |x: u64, r: Result<u64, multiprocessing::pool::Error>, lost: &mut u64| match r {
        Ok(v) if v == x.wrapping_mul(x) => Ok(()),
        Ok(v) => Err(format!("task {x} gave {v}")),
        Err(multiprocessing::pool::Error::WorkerLost { .. }) => {
            *lost += 1;
            Ok(())
        }
        Err(e) => Err(format!("task {x} failed: {e}")),
    };
    let kill_some = |rng: &mut Rng, tally: &mut Tally| {
        for _ in 0..kills {
            rng.pause(Duration::from_millis(5));
            let pids = p.pids();
            if let Some(&pid) = pids.get(rng.below(pids.len() as u64) as usize) {
                kill(pid);
                tally.kills += 1;
            }
        }
    };
    match rng.below(4) {
        0 => {
            let it = p
                .imap_unordered_chunked(soak_task, 0..n, chunk)
                .map_err(|e| e.to_string())?;
            // Kills from another thread while this one takes results.
            let results = std::thread::scope(|s| {
                let mut r2 = rng.clone();
                let killer = s.spawn(move || {
                    let mut t = Tally::default();
                    kill_some(&mut r2, &mut t);
                    t.kills
                });
                let mut got = Vec::new();
                for r in it {
                    got.push(r);
                    if began.elapsed() > ROUND_DEADLINE {
                        break;
                    }
                }
                (got, killer.join().unwrap_or(0))
            });
            tally.kills += results.1;
            left(began, "imap_unordered")?;
            if results.0.len() as u64 != n {
                return Err(format!(
                    "imap_unordered gave {} of {n} results",
                    results.0.len()
                ));
            }
            let mut lost = 0;
            let mut values: Vec<u64> = Vec::new();
            for r in results.0 {
                match r {
                    Ok(v) => values.push(v),
                    Err(multiprocessing::pool::Error::WorkerLost { .. }) => lost += 1,
                    Err(e) => return Err(format!("a task failed: {e}")),
                }
            }
            let expected: std::collections::HashSet<u64> = (0..n).map(|x| x * x).collect();
            let distinct: std::collections::HashSet<u64> = values.iter().copied().collect();
            if distinct.len() != values.len() || !distinct.is_subset(&expected) {
                return Err("imap_unordered gave a result twice, or a wrong one".into());
            }
            tally.lost = lost;
            tally.allowed = tally.kills * chunk as u64;
        }
        3 => {
            // Blocking `apply`s on a fresh pool: the first takes its replies itself (the
            // next starts the pool's threads), and the kills land there too.
            let m = n.min(300);
            tally.ops = m;
            let (tx, rx) = std::sync::mpsc::channel();
            let applier = p.clone();
            let applying = std::thread::spawn(move || {
                for x in 0..m {
                    if tx.send((x, applier.apply(soak_task, x))).is_err() {
                        return;
                    }
                }
            });
            kill_some(rng, &mut tally);
            let mut lost = 0;
            let answered = (0..m).try_for_each(|_| {
                let (x, r) = rx
                    .recv_timeout(left(began, "apply")?)
                    .map_err(|_| "hang: an apply not answered".to_string())?;
                check(x, r, &mut lost)
            });
            if let Err(err) = answered {
                // The applying thread may still wait on the pool: ended here, so it lets go
                // of its handle and nothing of the pool outlives the round. A pool that
                // cannot even be terminated is left behind, the hang already reported.
                p.terminate();
                let since = Instant::now();
                while !applying.is_finished() && since.elapsed() < Duration::from_secs(10) {
                    std::thread::yield_now();
                }
                if applying.is_finished() {
                    let _ = applying.join();
                }
                return Err(err);
            }
            // Done with its last `send`: its handle on the pool goes now, not after the
            // round's check for processes left behind.
            applying
                .join()
                .map_err(|_| "the applying thread panicked".to_string())?;
            tally.lost = lost;
            tally.allowed = tally.kills;
        }
        1 => {
            let asyncs: Vec<_> = (0..n.min(300))
                .map(|x| p.apply_async(soak_task, x).map(|a| (x, a)))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            tally.ops = asyncs.len() as u64;
            kill_some(rng, &mut tally);
            let mut lost = 0;
            for (x, a) in asyncs {
                match a.get_timeout(left(began, "apply_async")?) {
                    Err(multiprocessing::pool::Error::Timeout) => {
                        return Err(format!("hang: apply_async({x}) not answered"));
                    }
                    r => check(x, r, &mut lost)?,
                }
            }
            tally.lost = lost;
            tally.allowed = tally.kills;
        }
        _ => {
            let m = p
                .map_async_chunked(soak_task, 0..n, chunk)
                .map_err(|e| e.to_string())?;
            kill_some(rng, &mut tally);
            match m.get_timeout(left(began, "map")?) {
                Ok(values) => {
                    if values.len() as u64 != n || values.iter().zip(0..n).any(|(v, x)| *v != x * x)
                    {
                        return Err("map gave wrong results".into());
                    }
                }
                Err(multiprocessing::pool::Error::WorkerLost { .. }) if tally.kills > 0 => {
                    tally.lost = 1;
                }
                Err(multiprocessing::pool::Error::Timeout) => {
                    return Err("hang: map not answered".into());
                }
                Err(e) => return Err(format!("map failed: {e}")),
            }
            tally.allowed = tally.kills.min(1);
        }
    }
    // The pool still works after its losses.
    let after = p
        .map_async(soak_task, 0..50u64)
        .map_err(|e| e.to_string())?
        .get_timeout(left(began, "a map after the kills")?)
        .map_err(|e| format!("the pool after the kills: {e}"))?;
    if after.len() != 50 {
        return Err("the pool after the kills gave too few results".into());
    }
    drop(p);
    Ok(tally)
}

// ---- pipes: a client killed mid-handshake or mid-send ----------------------------------------

fn client_sends((address, count): (String, u32)) -> u32 {
    match Client::connect(address.as_str(), Some(AUTHKEY)) {
        Ok(conn) => send_all(&conn, count),
        Err(_) => 0,
    }
}

const AUTHKEY: &[u8] = b"soak";

/// Sends `count` messages on a connection of a `pipe()`.
fn pipe_sends((conn, count): (multiprocessing::Connection, u32)) -> u32 {
    send_all(&conn, count)
}

/// Sends messages `0..count`; how many went.
fn send_all(conn: &multiprocessing::Connection, count: u32) -> u32 {
    (0..count)
        .find(|&seq| {
            conn.send(&(seq, payload(7, seq, item_len(7, seq))))
                .is_err()
        })
        .unwrap_or(count)
}

/// Receives in order until end of file or an error; an error for a torn or out-of-order
/// message, or for a wait past the round's deadline.
fn receive_all(conn: &multiprocessing::Connection, began: Instant) -> Result<u32, String> {
    let mut next = 0u32;
    loop {
        match conn.poll(Some(left(began, "recv")?)) {
            Ok(true) => {}
            Ok(false) => return Err("hang: recv".into()),
            Err(_) => return Ok(next),
        }
        match conn.recv::<(u32, Vec<u8>)>() {
            Ok((seq, bytes)) => {
                if seq != next || bytes != payload(7, seq, item_len(7, seq)) {
                    return Err(format!(
                        "message {seq} torn or out of order (wanted {next})"
                    ));
                }
                next += 1;
            }
            Err(_) => return Ok(next),
        }
    }
}

fn pipes(rng: &mut Rng) -> Result<Tally, String> {
    if rng.chance(50) {
        return anonymous_pipe(rng);
    }
    listener_and_client(rng)
}

/// A `pipe()` whose far end goes to a child that sends, and is killed at a random moment.
fn anonymous_pipe(rng: &mut Rng) -> Result<Tally, String> {
    let began = Instant::now();
    let (ours, theirs) = multiprocessing::pipe(true).map_err(|e| e.to_string())?;
    let count = 50 + rng.below(500) as u32;
    let mut child = start(rng, pipe_sends, (theirs, count))?;
    let killed = rng.chance(60);
    let pid = child.pid();
    let mut killer_rng = rng.clone();
    let received = std::thread::scope(|s| {
        if killed {
            s.spawn(move || {
                killer_rng.pause(Duration::from_millis(10));
                kill(pid);
            });
        }
        receive_all(&ours, began)
    })?;
    let sent = join(&mut child, began, "the sender")?;
    match sent {
        Some(sent) if sent != received => Err(format!("the child sent {sent}, {received} arrived")),
        None if !killed => Err("the sender failed".into()),
        _ => Ok(Tally {
            kills: u64::from(killed),
            ops: u64::from(received),
            ..Tally::default()
        }),
    }
}

/// A `Listener` with an authkey and a `Client` in a child, killed at a random moment (in the
/// handshake, or while sending).
fn listener_and_client(rng: &mut Rng) -> Result<Tally, String> {
    let began = Instant::now();
    let dir = std::env::temp_dir().join(format!("mp-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("listener");
    let _ = std::fs::remove_file(&path);
    let address = path.display().to_string();
    let mut tally = Tally::default();
    {
        let mut listener =
            Listener::bind(address.as_str(), Some(AUTHKEY)).map_err(|e| e.to_string())?;
        let count = 50 + rng.below(500) as u32;
        let mut child = start(rng, client_sends, (address.clone(), count))?;
        let killed = rng.chance(60);
        let killer_rng = rng.clone();
        let received = std::thread::scope(|s| -> Result<u32, String> {
            let pid = child.pid();
            if killed {
                let mut r = killer_rng;
                s.spawn(move || {
                    r.pause(Duration::from_millis(15));
                    kill(pid);
                });
            }
            // Accept only once the client is there (it may die before it connects).
            let mut fds = [rustix::event::PollFd::new(
                &listener,
                rustix::event::PollFlags::IN,
            )];
            let wait = left(began, "accept")?.min(Duration::from_secs(5));
            let ts = rustix::time::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            if rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
                return Ok(0);
            }
            let Ok(conn) = listener.accept() else {
                return Ok(0); // the client died mid-handshake: an error, not a hang
            };
            receive_all(&conn, began)
        })?;
        let sent = join(&mut child, began, "the client")?;
        if killed {
            tally.kills = 1;
        }
        match sent {
            Some(sent) if sent != received => {
                return Err(format!("the client sent {sent}, {received} arrived"));
            }
            None if !killed => return Err("the client failed".into()),
            _ => {}
        }
        tally.ops = u64::from(received);
    }
    if path.exists() {
        return Err(format!("socket file left: {}", path.display()));
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(tally)
}

// ---- nested: chains of three processes, one of them killed -----------------------------------

/// Level `depth` of a chain: starts the next (by its own start method), then every level
/// meets at `ready`, then waits for its child.
fn chain_level((ready, methods, depth): (Barrier, Vec<u8>, u32)) -> u32 {
    let next = methods.get(depth as usize).copied();
    let child = next.map(|m| {
        let method = method_of(m);
        Process::new(chain_level, (ready.clone(), methods.clone(), depth + 1))
            .method(method)
            .daemon(true)
            .start()
    });
    let _ = ready.wait_timeout(Duration::from_secs(20));
    if let Some(Ok(mut child)) = child {
        let _ = child.join_timeout(Duration::from_secs(25));
    }
    depth
}

fn nested(rng: &mut Rng) -> Result<Tally, String> {
    let began = Instant::now();
    let methods: Vec<u8> = (0..3).map(|_| rng.below(3) as u8).collect();
    let ready = Barrier::new(4).map_err(|e| e.to_string())?;
    let first = method_of(methods[0]);
    let mut top = Process::new(chain_level, (ready.clone(), methods, 1))
        .method(first)
        .daemon(true)
        .start()
        .map_err(|e| format!("start: {e}"))?;
    ready
        .wait_timeout(left(began, "the chain's start")?)
        .map_err(|e| format!("hang or broken chain: {e}"))?;
    // Levels: 1 is our child; 2 and 3 are its descendants, found through /proc.
    let mut chain = vec![top.pid()];
    for _ in 0..2 {
        let last = *chain.last().expect("not empty");
        let kids = std::fs::read_to_string(format!("/proc/{last}/task/{last}/children"))
            .unwrap_or_default();
        match kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
            Some(pid) => chain.push(pid),
            None => break,
        }
    }
    let victim = chain[rng.below(chain.len() as u64) as usize];
    kill(victim);
    // Everything below the victim dies with its parent; everything above it ends.
    let _ = join(&mut top, began, "the top of a chain")?;
    Ok(Tally {
        kills: 1,
        ops: chain.len() as u64,
        ..Tally::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read() {
        let o = Options::parse(&["--quick".into(), "--seed".into(), "9".into()]).unwrap();
        assert_eq!((o.duration, o.seed), (Duration::from_secs(80), 9));
        let o = Options::parse(&["--minutes".into(), "0.5".into()]).unwrap();
        assert_eq!(o.duration, Duration::from_secs(30));
        assert!(Options::parse(&["--minutes".into(), "-1".into()]).is_err());
        assert!(Options::parse(&["--loud".into()]).is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_rounds() {
        let (mut a, mut b) = (Rng::new(5), Rng::new(5));
        let xs: Vec<u64> = (0..8).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert!((0..1000).all(|_| a.below(7) < 7));
    }

    #[test]
    fn a_garbled_item_is_told_from_a_good_one() {
        let good = payload(1, 2, item_len(1, 2));
        assert_eq!(good, payload(1, 2, item_len(1, 2)));
        assert_ne!(payload(1, 3, good.len()), good);
    }
}
