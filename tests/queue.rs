//! Queues through the facade: the documentation's second program, and a queue handed from
//! child to grandchild.

use std::process::Command;

use multiprocessing::{Process, Queue, queues};

use crate::support::{DEADLINE, Guarded, example};

#[test]
fn the_queue_example_prints_the_five_squares() {
    let (status, out, err) = Guarded::spawn(Command::new(example("queue"))).finish();
    assert!(status.success(), "{err}");
    let mut squares: Vec<u64> = out.lines().map(|l| l.parse().unwrap()).collect();
    squares.sort();
    assert_eq!(squares, [1, 4, 9, 16, 25]);
}

fn relay((from, to): (Queue<String>, Queue<String>)) {
    let text = from.get().expect("an item");
    to.put(text.to_uppercase()).expect("put");
}

#[test]
fn a_child_answers_through_queues_and_errors_convert() {
    let (ask, answer) = (Queue::<String>::new().unwrap(), Queue::new().unwrap());
    let mut child = Process::new(relay, (ask.clone(), answer.clone()))
        .start()
        .unwrap();
    ask.put("hello".into()).unwrap();
    assert_eq!(answer.get_timeout(DEADLINE).unwrap(), "HELLO");
    child.join().unwrap();
    let err: multiprocessing::Error = answer.try_get().unwrap_err().into();
    assert!(matches!(
        err,
        multiprocessing::Error::Queue(queues::Error::Empty)
    ));
}

fn put_later((ready, q): (multiprocessing::Connection, Queue<u32>)) {
    // Wait for the parent's go, so its first wait surely finds nothing.
    let _: u8 = ready.recv().expect("go");
    q.put(42).expect("put");
}

#[test]
fn wait_sees_a_queue_beside_a_pipe() {
    use std::{os::fd::AsFd, time::Duration};

    use multiprocessing::connection::wait;

    let q = Queue::<u32>::new().unwrap();
    let (go, ready) = multiprocessing::pipe(true).unwrap();
    let (idle, _idle_peer) = multiprocessing::pipe(true).unwrap();
    let mut child = Process::new(put_later, (ready, q.clone())).start().unwrap();
    let objects: [&dyn AsFd; 2] = [&idle, &q];
    assert!(wait(&objects, Some(Duration::ZERO)).unwrap().is_empty());
    go.send(&1u8).unwrap();
    assert_eq!(wait(&objects, Some(DEADLINE)).unwrap(), [1]);
    assert_eq!(q.get_timeout(DEADLINE).unwrap(), 42);
    assert!(
        wait(&objects, Some(Duration::ZERO)).unwrap().is_empty(),
        "drained"
    );
    child.join().unwrap();
    // An item put before anyone waited is seen too.
    let early = Queue::<u32>::new().unwrap();
    early.put(7).unwrap();
    assert_eq!(wait(&[&early], Some(DEADLINE)).unwrap(), [0]);
    assert!(matches!(early.try_get(), Ok(7)));
    assert!(wait(&[&early], Some(Duration::ZERO)).unwrap().is_empty());
}
