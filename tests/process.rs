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
        let sentinel = child.sentinel().unwrap();
        let ready = wait(&[&ours as &dyn AsFd, &sentinel], deadline).unwrap();
        assert_eq!(ready, [0], "{method:?}: the message comes first");
        assert_eq!(ours.recv::<String>().unwrap(), "ready");
        ours.send(&7u8).unwrap();
        let ready = wait(&[&sentinel], deadline).unwrap();
        assert_eq!(ready, [0], "{method:?}: then the child ends");
        assert_eq!(child.join().unwrap(), 7);
    }
}

#[test]
fn a_sentinel_asked_for_after_the_join_reads_as_ended() {
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ] {
        let mut child = Process::new(|x: u8| x + 1, 1)
            .method(method)
            .start()
            .unwrap();
        assert_eq!(child.join().unwrap(), 2);
        let sentinel = child.sentinel().unwrap();
        let ready = wait(&[&sentinel], Some(Duration::ZERO)).unwrap();
        assert_eq!(ready, [0], "{method:?}");
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
