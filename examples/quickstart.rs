//! A short tour of `multiprocessing`, grown by each crate as it lands.
//!
//! `cargo run --release --example quickstart`

use std::time::Instant;

use multiprocessing::{
    Barrier, Connection, Lock, Pool, Process, Queue, SharedMemory, StartMethod, Value,
    codec::{Frame, Pod},
    cpu_count, pipe,
    process::Builder,
    synchronize::Acquire,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Stats {
    count: usize,
    sum: u64,
    max: u64,
}

/// Runs in a child process: any serde value in, any serde value out.
fn summarize(xs: Vec<u64>) -> Stats {
    Stats {
        count: xs.len(),
        sum: xs.iter().sum(),
        max: xs.iter().copied().max().unwrap_or(0),
    }
}

fn divide(pair: (i64, i64)) -> i64 {
    pair.0 / pair.1 // panics on division by zero, in the child
}

fn echo_upper(conn: Connection) {
    while let Ok(text) = conn.recv::<String>() {
        let _ = conn.send(&text.to_uppercase());
    }
}

fn add_many((counter, n): (Value<u64>, u64)) {
    for _ in 0..n {
        counter.fetch_add(1);
    }
}

fn put_squares((queue, from, to): (Queue<u64>, u64, u64)) {
    for n in from..to {
        queue.put(n * n).expect("the queue is open");
    }
}

fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

fn crash(x: u64) -> u64 {
    if x == 3 {
        std::process::abort(); // the worker dies mid-task
    }
    x
}

/// Opens a named block (as another program could, Python included), writes its pid's low
/// byte at its place, and waits for the others.
fn sign((name, place, everyone): (String, usize, Barrier)) {
    let block = SharedMemory::open(&name).expect("the parent made it");
    let byte = (std::process::id() % 251) as u8 + 1;
    block.buf()[place].store(byte, std::sync::atomic::Ordering::Relaxed);
    everyone.wait().expect("nobody died");
}

fn timed<R: multiprocessing::Message + 'static>(
    builder: Builder<R>,
) -> Result<(R, f64), multiprocessing::Error> {
    let start = Instant::now();
    let value = builder.start()?.join()?;
    Ok((value, start.elapsed().as_secs_f64() * 1e3))
}

fn main() -> Result<(), multiprocessing::Error> {
    println!("cpu_count() = {}", cpu_count());

    // 1. A child runs a function and join() returns its value, under each start method.
    for method in [
        StartMethod::Fork,
        StartMethod::Forkserver,
        StartMethod::Spawn,
    ] {
        let data: Vec<u64> = (1..=1000).collect();
        let (stats, ms) = timed(Process::new(summarize, data).method(method))?;
        println!("{method:?}: {stats:?} in {ms:.2} ms");
    }

    // 2. A panic in the child is caught there and reported here; the parent carries on.
    println!("dividing by zero in a child (its panic report goes to stderr, as in Python):");
    let mut child = Process::new(divide, (1, 0)).name("divider").start()?;
    match child.join() {
        Err(err) => println!(
            "joined with an error: {err} (exitcode {:?})",
            child.exitcode()
        ),
        Ok(v) => println!("unexpectedly got {v}"),
    }

    // 3. A pipe between parent and child: whole typed messages, through shared memory.
    let (ours, theirs) = pipe(true)?;
    let mut child = Process::new(echo_upper, theirs).start()?;
    for word in ["ping", "pong"] {
        ours.send(word)?;
        println!("sent {word:?}, got back {:?}", ours.recv::<String>()?);
    }
    drop(ours);
    child.join()?;

    // 4. Plain-old-data crosses with no encoding at all.
    let frame = Frame::encode(&Pod([0.5f64, 1.5, 2.5]))?;
    println!("a [f64; 3] is {} bytes on the wire", frame.bytes.len());

    // 5. Shared memory and locks: four processes add to one Value under its lock.
    let counter = Value::new(0u64)?;
    let start = Instant::now();
    let children = (0..4)
        .map(|_| Process::new(add_many, (counter.clone(), 25_000)).start())
        .collect::<Result<Vec<_>, _>>()?;
    for mut child in children {
        child.join()?;
    }
    println!(
        "4 processes x 25000 locked increments = {} in {:.1} ms",
        counter.get(),
        start.elapsed().as_secs_f64() * 1e3
    );

    // 6. A queue in shared memory: two producers, one consumer, no feeder thread.
    let queue = Queue::<u64>::new()?;
    let start = Instant::now();
    let producers = [(0, 50_000), (50_000, 100_000)]
        .map(|(from, to)| Process::new(put_squares, (queue.clone(), from, to)).start());
    let mut total = 0u64;
    for _ in 0..100_000 {
        total = total.wrapping_add(queue.get()?);
    }
    for producer in producers {
        producer?.join()?;
    }
    println!(
        "2 processes put 100000 squares on a Queue, summed here to {total} in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    // 7. A lock whose holder dies is handed on, with word that what it guards may need repair.
    let lock = Lock::new()?;
    let held = lock.clone();
    let mut holder = Process::fork(move || {
        std::mem::forget(held.lock()); // the child ends without releasing it
    })
    .start()?;
    holder.join()?;
    let start = Instant::now();
    let how = lock.acquire();
    println!(
        "a lock whose holder exited: {how:?} after {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(how, Acquire::OwnerDied);

    // 8. A pool: map in chunks across worker processes; a worker that dies fails only its
    //    task, and is replaced.
    let pool = Pool::new(cpu_count())?;
    let start = Instant::now();
    let steps = pool.map(collatz_steps, 1..=200_000)?;
    let (longest, at) = steps.iter().zip(1..).max().expect("not empty");
    println!(
        "Pool.map: the longest Collatz chain below 200000 starts at {at} ({longest} steps), \
         {:.1} ms on {} workers",
        start.elapsed().as_secs_f64() * 1e3,
        pool.processes()
    );
    let each: Vec<_> = pool.imap(crash, 1..=5)?.collect();
    println!("imap with a worker that aborts on 3:");
    for (x, outcome) in (1..).zip(each) {
        match outcome {
            Ok(v) => println!("  {x} -> {v}"),
            Err(err) => println!("  {x} -> {err}"),
        }
    }
    println!(
        "and the pool goes on: {:?}",
        pool.map(collatz_steps, [6, 7, 27])?
    );

    // 9. A named shared-memory block (Python's shared_memory.SharedMemory) and a barrier:
    //    three children sign the block by name, and all meet at the barrier.
    let block = SharedMemory::new(3)?;
    let everyone = Barrier::new(4)?;
    let signers = (0..3)
        .map(|place| {
            Process::new(sign, (block.name().to_string(), place, everyone.clone())).start()
        })
        .collect::<Result<Vec<_>, _>>()?;
    everyone.wait()?;
    let mut signed = [0u8; 3];
    block.read(0, &mut signed)?;
    println!(
        "3 children signed {} by name, then met at a barrier: {signed:?}",
        block.name()
    );
    for mut signer in signers {
        signer.join()?;
    }
    Ok(())
}
