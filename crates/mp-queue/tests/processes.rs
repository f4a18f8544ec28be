//! Queues between processes: passing handles under every start method, producers that exit
//! at once, and processes killed with SIGKILL in the middle of `put` and `get`.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use mp_queue::{Error, Queue};
use mp_spawn::{Process, StartMethod};
use mp_sync::Shared;

const DEADLINE: Duration = Duration::from_secs(60);

fn put_square(args: (Queue<u64>, u64)) {
    let (q, n) = args;
    q.put(n * n).expect("put");
}

fn pass_on(args: (Queue<u64>, u64)) {
    let mut grandchild = Process::new(put_square, args).start().expect("start");
    grandchild.join().expect("grandchild");
}

#[test]
fn a_queue_passes_to_children_under_every_start_method_and_on_to_theirs() {
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ] {
        let q = Queue::<u64>::new().unwrap();
        let mut children: Vec<_> = (1..=5)
            .map(|n| {
                // Targets are fn items (a fn pointer chosen at run time is refused).
                let builder = if n == 5 {
                    Process::new(pass_on, (q.clone(), n))
                } else {
                    Process::new(put_square, (q.clone(), n))
                };
                builder.method(method).start().unwrap()
            })
            .collect();
        for child in &mut children {
            child
                .join_timeout(DEADLINE)
                .unwrap()
                .expect("child finished");
        }
        let mut got: Vec<u64> = (0..5).map(|_| q.get_timeout(DEADLINE).unwrap()).collect();
        got.sort();
        assert_eq!(got, [1, 4, 9, 16, 25], "{method:?}");
        assert!(q.empty());
    }
}

fn put_big(args: (Queue<Vec<u8>>, usize)) {
    let (q, len) = args;
    q.put(vec![0xa5; len]).expect("put");
}

#[test]
fn a_producer_that_exits_right_after_a_10_mib_put_is_joined_and_its_item_received() {
    let q = Queue::<Vec<u8>>::new().unwrap(); // a ring of 1 MiB: the item goes aside
    let mut child = Process::new(put_big, (q.clone(), 10 << 20))
        .start()
        .unwrap();
    child.join_timeout(DEADLINE).unwrap().expect("joined");
    let item = q.get_timeout(DEADLINE).unwrap();
    assert_eq!(item.len(), 10 << 20);
    assert!(item.iter().all(|&b| b == 0xa5));
}

fn put_256_mib(q: Queue<mp_codec::Bytes>) {
    let bytes: Vec<u8> = (0..256usize << 20)
        .map(|i| ((i * 131) >> 7) as u8)
        .collect();
    q.put(mp_codec::Bytes(bytes)).expect("put");
}

#[test]
fn a_256_mib_item_and_100000_empty_ones_round_trip() {
    let q = Queue::<mp_codec::Bytes>::new().unwrap();
    let mut child = Process::new(put_256_mib, q.clone()).start().unwrap();
    let mp_codec::Bytes(got) = q.get_timeout(DEADLINE).unwrap();
    child.join_timeout(DEADLINE).unwrap().expect("joined");
    assert_eq!(got.len(), 256 << 20);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, &b)| b == ((i * 131) >> 7) as u8)
    );
    let empty = Queue::<()>::new().unwrap();
    for round in 0..4 {
        for _ in 0..25_000 {
            empty.put(()).unwrap();
        }
        assert_eq!(empty.qsize(), 25_000, "round {round}");
        for _ in 0..25_000 {
            empty.get_timeout(DEADLINE).unwrap();
        }
    }
    assert!(empty.empty());
}

/// An item a producer can check: who put it, its number, and bytes derived from both.
fn item(producer: u64, seq: u64) -> Vec<u8> {
    // One in 50 is bigger than an eighth of the 16 KiB ring: it goes through the side
    // channel, so kills land in that path too.
    let len = if seq % 50 == 7 {
        3000
    } else {
        (seq * 7919 % 300) as usize + 16
    };
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&producer.to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend((16..len).map(|i| (producer as usize * 31 + seq as usize * 17 + i) as u8));
    bytes
}

fn check(bytes: &[u8]) -> (u64, u64) {
    assert!(bytes.len() >= 16, "a torn item: {} bytes", bytes.len());
    let producer = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    assert_eq!(bytes, item(producer, seq), "a garbled item");
    (producer, seq)
}

/// Puts items numbered from `first` for ever, recording in `acked[producer]` the count of
/// puts that returned `Ok`.
fn produce(args: (Queue<Vec<u8>>, Shared<AtomicU64>, u64, u64)) {
    let (q, acked, producer, first) = args;
    let mut seq = first;
    loop {
        q.put(item(producer, seq)).expect("put");
        seq += 1;
        acked.store(seq, Ordering::SeqCst);
    }
}

/// Takes items for ever, sending each to the parent through `out`, counting in `taken`.
fn consume(args: (Queue<Vec<u8>>, Queue<Vec<u8>>, Shared<AtomicU64>)) {
    let (q, out, taken) = args;
    loop {
        let item = q.get().expect("get");
        taken.fetch_add(1, Ordering::SeqCst);
        out.put(item).expect("forward");
    }
}

/// SIGKILLs producers and consumers at random moments (after a random number of their
/// operations) and checks: every item whose `put` returned `Ok` arrives exactly once, but
/// for at most one per killed consumer; none arrives torn or garbled; nothing hangs.
#[test]
fn producers_and_consumers_killed_mid_operation_lose_at_most_the_consumers_items() {
    let q = Queue::<Vec<u8>>::builder()
        .capacity(16 << 10)
        .build()
        .unwrap();
    let out = Queue::<Vec<u8>>::builder()
        .capacity(1 << 20)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut producer_kills, mut consumer_kills) = (0u64, 0u64);
    let mut acked_final: HashMap<u64, u64> = HashMap::new();
    let mut received: HashSet<(u64, u64)> = HashSet::new();
    let mut operations = 0u64;
    let drain = |received: &mut HashSet<(u64, u64)>, out: &Queue<Vec<u8>>| {
        while let Ok(bytes) = out.try_get() {
            let key = check(&bytes);
            assert!(received.insert(key), "item {key:?} received twice");
        }
    };
    // Rounds: two producers and one consumer; one of them is killed at a random count.
    for round in 0..12u64 {
        let producers: Vec<(u64, Shared<AtomicU64>)> = (0..2)
            .map(|i| (round * 2 + i, Shared::<AtomicU64>::new().unwrap()))
            .collect();
        let taken = Shared::<AtomicU64>::new().unwrap();
        let mut procs: Vec<_> = producers
            .iter()
            .map(|(id, acked)| {
                Process::new(produce, (q.clone(), acked.clone(), *id, 0))
                    .method(StartMethod::Fork)
                    .daemon(true)
                    .start()
                    .unwrap()
            })
            .collect();
        let mut consumer = Process::new(consume, (q.clone(), out.clone(), taken.clone()))
            .method(StartMethod::Fork)
            .daemon(true)
            .start()
            .unwrap();
        // Kill one producer, or the consumer, after a random number of operations.
        let victim = next(3);
        let at = 50 + next(2000);
        loop {
            assert!(start.elapsed() < DEADLINE * 2, "no progress: a hang");
            let count = if victim < 2 {
                producers[victim as usize].1.load(Ordering::SeqCst)
            } else {
                taken.load(Ordering::SeqCst)
            };
            if count >= at {
                break;
            }
            drain(&mut received, &out);
            std::thread::yield_now();
        }
        if victim < 2 {
            procs[victim as usize].kill().unwrap();
            producer_kills += 1;
        } else {
            consumer.kill().unwrap();
            consumer_kills += 1;
            // A new consumer takes over and must not be wedged by the dead one.
            consumer = Process::new(consume, (q.clone(), out.clone(), taken.clone()))
                .method(StartMethod::Fork)
                .daemon(true)
                .start()
                .unwrap();
        }
        // Stop the producers, then let the consumer drain everything.
        for p in &procs {
            let _ = p.kill();
        }
        for p in &mut procs {
            // Killed: `join` says so (and reaps it) well within the deadline.
            assert!(
                !matches!(p.join_timeout(DEADLINE), Ok(None)),
                "a producer hung"
            );
        }
        for (id, acked) in &producers {
            let n = acked.load(Ordering::SeqCst);
            operations += n;
            acked_final.insert(*id, n);
        }
        // Wait until the consumer has taken every item still in the queue.
        let drained_by = Instant::now() + DEADLINE;
        while q.qsize() > 0 {
            assert!(
                Instant::now() < drained_by,
                "the queue never drained: a hang"
            );
            drain(&mut received, &out);
            std::thread::yield_now();
        }
        consumer.kill().unwrap();
        assert!(
            !matches!(consumer.join_timeout(DEADLINE), Ok(None)),
            "a consumer hung"
        );
        drain(&mut received, &out);
    }
    // Every acknowledged item arrived, but for at most one per consumer kill (the item it
    // was taking or forwarding). Items put but not acknowledged (killed before `acked` was
    // written) may arrive or not.
    let mut missing = 0;
    for (&id, &acked) in &acked_final {
        for seq in 0..acked {
            if !received.contains(&(id, seq)) {
                missing += 1;
            }
        }
    }
    // Each round ends with a killed consumer (the one left running), which may lose one.
    let consumer_deaths = consumer_kills + 12;
    eprintln!(
        "kill test: {operations} puts acknowledged, {producer_kills} producers and \
         {consumer_deaths} consumers killed, {missing} items lost (at most \
         {consumer_deaths} allowed), 0 hangs"
    );
    assert!(
        missing <= consumer_deaths,
        "{missing} acknowledged items lost with {consumer_deaths} consumer deaths"
    );
    // The queue still works.
    q.put(item(999, 0)).unwrap();
    assert_eq!(check(&q.get_timeout(DEADLINE).unwrap()), (999, 0));
    let _ = Error::Empty;
}

fn soak_produce((q, producer, count): (Queue<u64>, u64, u64)) {
    for i in 0..count {
        q.put(producer << 32 | i).expect("put");
    }
}

/// Takes items until it has seen `stop` end markers; returns (items, wrapping sum, xor).
/// Checks that each producer's items come in the order they were put (FIFO per producer:
/// what one consumer takes of a producer's items is in increasing order).
fn soak_consume((q, stops): (Queue<u64>, u32)) -> (u64, u64, u64) {
    let (mut n, mut sum, mut xor, mut seen) = (0u64, 0u64, 0u64, 0);
    let mut last = [None::<u64>; 2];
    while seen < stops {
        let v = q
            .get_timeout(DEADLINE)
            .expect("an item within the deadline");
        if v == u64::MAX {
            seen += 1;
            continue;
        }
        let (producer, i) = ((v >> 32) as usize, v & 0xffff_ffff);
        assert!(last[producer].is_none_or(|l| l < i), "out of order");
        last[producer] = Some(i);
        n += 1;
        sum = sum.wrapping_add(v.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        xor ^= v.rotate_left((v % 63) as u32);
    }
    (n, sum, xor)
}

/// 1,000,000 items from two producer processes to two consumer processes, through a small
/// ring (so producers wait for room all the time): every item arrives exactly once, and in
/// its producer's order.
#[test]
fn soak_a_million_items_two_producers_to_two_consumers() {
    const EACH: u64 = 500_000;
    let q = Queue::<u64>::builder().capacity(64 << 10).build().unwrap();
    let consumers: Vec<_> = (0..2)
        .map(|_| Process::new(soak_consume, (q.clone(), 1)).start().unwrap())
        .collect();
    let mut producers: Vec<_> = (0..2)
        .map(|p| {
            Process::new(soak_produce, (q.clone(), p, EACH))
                .start()
                .unwrap()
        })
        .collect();
    for p in &mut producers {
        p.join_timeout(DEADLINE * 4)
            .unwrap()
            .expect("producer done");
    }
    for _ in 0..2 {
        q.put(u64::MAX).unwrap(); // one end marker per consumer
    }
    let (mut n, mut sum, mut xor) = (0u64, 0u64, 0u64);
    for mut c in consumers {
        let (cn, csum, cxor) = c
            .join_timeout(DEADLINE * 4)
            .unwrap()
            .expect("consumer done");
        n += cn;
        sum = sum.wrapping_add(csum);
        xor ^= cxor;
    }
    let (mut want_sum, mut want_xor) = (0u64, 0u64);
    for p in 0..2u64 {
        for i in 0..EACH {
            let v = p << 32 | i;
            want_sum = want_sum.wrapping_add(v.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            want_xor ^= v.rotate_left((v % 63) as u32);
        }
    }
    assert_eq!(n, 2 * EACH);
    assert_eq!((sum, xor), (want_sum, want_xor), "checksums");
    assert!(q.empty());
}
