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
