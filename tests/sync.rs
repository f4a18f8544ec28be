//! Locks, events, conditions and barriers across processes, through the facade: exclusion
//! under every start method, owner death, and timeouts that hold when a peer died.

use std::time::Duration;

use multiprocessing::{
    Barrier, BoundedSemaphore, Condition, Connection, Event, Lock, Process, StartMethod, Value,
    pipe, synchronize::Acquire,
};

use crate::support::DEADLINE;

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::Forkserver,
];

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn increment_many(counter: Value<u64>) {
    for _ in 0..20_000 {
        *counter.lock().expect("nobody dies here") += 1;
    }
}

#[test]
fn four_processes_times_twenty_thousand_increments_make_eighty_thousand() {
    let counter = Value::new(1u64).unwrap();
    counter.set(0); // the parent has used a lock before it forks
    // Three children, one per start method, and the parent (whose forked child shares its
    // thread, so the owner check must tell them apart by pid).
    let children: Vec<_> = METHODS
        .iter()
        .map(|&m| {
            Process::new(increment_many, counter.clone())
                .method(m)
                .start()
                .unwrap()
        })
        .collect();
    increment_many(counter.clone());
    for mut child in children {
        assert!(
            child.join_timeout(DEADLINE).unwrap().is_some(),
            "child hung"
        );
    }
    assert_eq!(counter.get(), 80_000);
}

fn hold_forever((lock, conn): (Lock, Connection)) {
    let _held = lock.lock().expect("first owner");
    conn.send("held").unwrap();
    // Blocks until the test kills us (or, failing that, closes the pipe).
    let _ = conn.recv::<()>();
}

fn acquire_and_report((lock, ready): (Lock, Event)) -> (bool, u64) {
    ready.set();
    let how = lock.acquire();
    (how == Acquire::OwnerDied, now_ns())
}

#[test]
fn a_lock_whose_owner_is_killed_goes_to_a_waiter_within_a_second() {
    for method in METHODS {
        let lock = Lock::new().unwrap();
        let (ours, theirs) = pipe(true).unwrap();
        let owner = Process::new(hold_forever, (lock.clone(), theirs))
            .method(method)
            .daemon(true)
            .start()
            .unwrap();
        assert_eq!(ours.recv::<String>().unwrap(), "held");
        let ready = Event::new().unwrap();
        let mut waiter = Process::new(acquire_and_report, (lock.clone(), ready.clone()))
            .method(method)
            .start()
            .unwrap();
        assert!(ready.wait_timeout(DEADLINE));
        // The waiter is about to sleep on the lock (or already does): kill the owner.
        let killed_at = now_ns();
        owner.kill().unwrap();
        let (owner_died, acquired_at) = waiter
            .join_timeout(DEADLINE)
            .unwrap()
            .expect("the waiter never got the lock");
        assert!(
            owner_died,
            "{method:?}: the waiter was not told the owner died"
        );
        let took = Duration::from_nanos(acquired_at - killed_at);
        assert!(took < Duration::from_secs(1), "{method:?}: took {took:?}");
        // The waiter exited holding it, so the next taker is told again; then it is clean.
        assert_eq!(lock.acquire_timeout(DEADLINE), Acquire::OwnerDied);
        lock.release().unwrap();
        assert_eq!(lock.try_acquire(), Acquire::Acquired);
    }
}

fn wait_for_event((event, timeout_ms): (Event, u64)) -> bool {
    event.wait_timeout(Duration::from_millis(timeout_ms))
}

fn wait_at_barrier(barrier: Barrier) -> String {
    match barrier.wait_timeout(Duration::from_millis(300)) {
        Ok(i) => format!("passed {i}"),
        Err(e) => e.to_string(),
    }
}

fn arrive_and_block(barrier: Barrier) {
    // Arrives (the barrier counts it) and waits for a pass that never comes.
    let _ = barrier.wait();
}

fn die_before_arriving(_: ()) {
    // SAFETY: raising a signal at ourselves has no memory-safety preconditions.
    unsafe { libc::raise(libc::SIGKILL) };
}

fn wait_on_condition((cond, registered): (Condition, Event)) -> bool {
    let _held = cond.lock().expect("nobody died");
    registered.set(); // set under the lock: wait registers before releasing it
    cond.wait_timeout(DEADLINE).unwrap()
}

fn join<R: multiprocessing::Decode>(p: &mut Process<R>) -> multiprocessing::Result<R> {
    Ok(p.join_timeout(DEADLINE)?.expect("the child hung"))
}

#[test]
fn waits_honour_their_timeouts_when_the_peer_died() {
    // The process that should set the event dies instead.
    let event = Event::new().unwrap();
    let mut setter = Process::new(die_before_arriving, ()).start().unwrap();
    let mut waiter = Process::new(wait_for_event, (event.clone(), 200))
        .start()
        .unwrap();
    assert!(join(&mut setter).is_err());
    assert!(!join(&mut waiter).unwrap());

    // One of three parties arrives and is killed there: the next waits out its timeout,
    // and the barrier breaks.
    let barrier = Barrier::new(3).unwrap();
    let dead = Process::new(arrive_and_block, barrier.clone())
        .daemon(true)
        .start()
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while barrier.n_waiting() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the party never arrived"
        );
        std::thread::yield_now();
    }
    dead.kill().unwrap();
    let mut party = Process::new(wait_at_barrier, barrier.clone())
        .start()
        .unwrap();
    let said = join(&mut party).unwrap();
    assert!(said.contains("timed out"), "{said}");
    assert!(barrier.broken());

    // A process killed while waiting on a condition: notifying it costs a bounded pause,
    // and the condition goes on working.
    let cond = Condition::new().unwrap();
    let registered = Event::new().unwrap();
    let victim = Process::new(wait_on_condition, (cond.clone(), registered.clone()))
        .daemon(true)
        .start()
        .unwrap();
    assert!(registered.wait_timeout(DEADLINE));
    let held = cond.lock().expect("the victim released it to wait");
    victim.kill().unwrap();
    let start = std::time::Instant::now();
    cond.notify(1).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "notify hung on a dead waiter"
    );
    drop(held);
    let _ = cond.lock().expect("nobody holds it");
}

fn notify_once(cond: Condition) {
    let _held = cond.lock().expect("nobody died");
    cond.notify(1).unwrap();
}

fn barrier_party(barrier: Barrier) -> u32 {
    barrier.wait_timeout(DEADLINE).expect("all parties arrive")
}

#[test]
fn conditions_and_barriers_work_across_processes() {
    let cond = Condition::new().unwrap();
    let held = cond.lock().unwrap();
    // Registered as a waiter before the child can notify: the child needs the lock, which
    // wait releases.
    let mut child = None;
    let mut notified = false;
    for _ in 0..2 {
        if child.is_none() {
            child = Some(Process::new(notify_once, cond.clone()).start().unwrap());
        }
        if cond.wait_timeout(DEADLINE).unwrap() {
            notified = true;
            break;
        }
    }
    drop(held);
    assert!(notified);
    join(&mut child.unwrap()).unwrap();

    let barrier = Barrier::new(4).unwrap();
    let parties: Vec<_> = METHODS
        .iter()
        .map(|&m| {
            Process::new(barrier_party, barrier.clone())
                .method(m)
                .start()
                .unwrap()
        })
        .collect();
    let mut indices = vec![barrier.wait_timeout(DEADLINE).unwrap()];
    for mut p in parties {
        indices.push(join(&mut p).unwrap());
    }
    indices.sort();
    assert_eq!(indices, [0, 1, 2, 3]);
}

type Limited = (BoundedSemaphore, Value<u32>, Value<u32>, Event);

fn limited((sem, inside, most, go): Limited) {
    assert!(go.wait_timeout(DEADLINE));
    for _ in 0..2_000 {
        sem.acquire();
        let now = inside.fetch_add(1) + 1;
        most.fetch_max(now);
        for _ in 0..200 {
            std::hint::spin_loop();
        }
        inside.fetch_sub(1);
        sem.release().expect("acquired first");
    }
}

#[test]
fn a_bounded_semaphore_admits_at_most_its_value_across_processes() {
    let sem = BoundedSemaphore::new(2).unwrap();
    let (inside, most) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
    let go = Event::new().unwrap();
    let mut children: Vec<_> = METHODS
        .iter()
        .chain(&[StartMethod::Fork])
        .map(|&m| {
            let args = (sem.clone(), inside.clone(), most.clone(), go.clone());
            Process::new(limited, args).method(m).start().unwrap()
        })
        .collect();
    go.set(); // all four start together
    for child in &mut children {
        join(child).unwrap();
    }
    assert!(
        (1..=2).contains(&most.get()),
        "{} inside at once",
        most.get()
    );
    assert_eq!(sem.get_value(), 2);
    assert!(sem.release().is_err(), "bounded");
}

#[test]
fn two_processes_sharing_one_reader_under_a_lock_each_get_whole_messages() {
    // CPython's SimpleQueue pattern: one pipe, readers serialized by a lock. A reader must
    // never take more than the message it asked for (no read-ahead), or the other would
    // wait forever for messages held in the first one's memory.
    let (reader, writer) = pipe(false).unwrap();
    // Everything is in the pipe before either reader starts: a reader that read ahead would
    // end up holding both stop messages.
    for i in 0..500u32 {
        writer.send(&i).unwrap();
    }
    writer.send(&u32::MAX).unwrap();
    writer.send(&u32::MAX).unwrap();
    let reader = std::sync::Arc::new(reader);
    let lock = Lock::new().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|_| {
            let (reader, lock) = (reader.clone(), lock.clone());
            Process::fork(move || {
                let mut got = 0u32;
                loop {
                    let message = {
                        let _turn = lock.lock().expect("nobody died");
                        reader.recv::<u32>().expect("a whole message")
                    };
                    if message == u32::MAX {
                        return got;
                    }
                    got += 1;
                }
            })
            .daemon(true) // killed at exit if a failure left one blocked
            .start()
            .unwrap()
        })
        .collect();
    let total: u32 = children.iter_mut().map(|c| join(c).unwrap()).sum();
    assert_eq!(total, 500);
}
