//! Processes through the facade, together with pipes: `wait` on connections and sentinels,
//! and the documentation's example programs printing exactly what Python prints.

use std::{os::fd::AsFd, process::Command, time::Duration};

use multiprocessing::{Connection, Process, StartMethod, connection::wait, pipe};

use crate::support::{Guarded, example};

fn reply_then_wait(conn: Connection) -> u8 {
    conn.send("ready").unwrap();
    conn.recv::<u8>().unwrap_or(0)
}

#[test]
fn wait_sees_a_message_and_then_the_sentinel() {
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ] {
        let (ours, theirs) = pipe(true).unwrap();
        let mut child = Process::new(reply_then_wait, theirs)
            .method(method)
            .start()
            .unwrap();
        let deadline = Some(Duration::from_secs(30));
        let ready = wait(&[&ours as &dyn AsFd, &child.sentinel()], deadline).unwrap();
        assert_eq!(ready, [0], "{method:?}: the message comes first");
        assert_eq!(ours.recv::<String>().unwrap(), "ready");
        ours.send(&7u8).unwrap();
        let ready = wait(&[&child.sentinel()], deadline).unwrap();
        assert_eq!(ready, [0], "{method:?}: then the child ends");
        assert_eq!(child.join().unwrap(), 7);
    }
}

#[test]
fn the_process_example_prints_exactly_five_lines() {
    let (status, out, err) = Guarded::spawn(Command::new(example("process"))).finish();
    assert!(status.success(), "{err}");
    assert_eq!(out, "0\n1\n2\n3\n4\n");
}

#[test]
fn the_pipe_example_plays_three_rallies() {
    let (status, out, err) = Guarded::spawn(Command::new(example("pipe"))).finish();
    assert!(status.success(), "{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("parent received"))
            .count(),
        3
    );
    assert!(out.ends_with("the child returned 3 rallies\n"), "{out}");
}
