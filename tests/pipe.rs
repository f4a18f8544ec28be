//! `pipe()` on shared-memory rings between processes: a writer SIGKILLed in the middle of
//! its sends never leaves a torn message, and whichever end survives gets end of file or a
//! broken pipe, never a hang, under every start method.

use std::{sync::mpsc, time::Duration};

use multiprocessing::{Connection, Process, StartMethod, pipe};

/// Bytes of each streamed message: copied through the ring (not beside it), so a kill lands
/// in the middle of a copy more often than not.
const MESSAGE: usize = 256 << 10;
const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::Forkserver,
];

/// Sends numbered messages (the number, then its low byte repeated) until the pipe breaks.
fn stream_until_killed(conn: Connection) -> u8 {
    let mut buf = vec![0u8; MESSAGE];
    for seq in 0u64.. {
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        buf[8..].fill(seq as u8);
        if conn.send_bytes(&buf).is_err() {
            return 1;
        }
    }
    0
}

/// Says it is ready, then holds its end without reading until it is killed.
fn hold_without_reading(conn: Connection) -> u8 {
    conn.send("ready").unwrap();
    loop {
        std::thread::park();
    }
}

#[test]
fn a_writer_killed_mid_send_leaves_whole_messages_then_end_of_file() {
    for method in METHODS {
        for round in 0..3 {
            let (reader, writer) = pipe(false).unwrap();
            let child = Process::new(stream_until_killed, writer)
                .method(method)
                .start()
                .unwrap();
            let mut next = 0u64;
            let mut buf = vec![0u8; MESSAGE];
            loop {
                assert!(
                    reader.poll(Some(Duration::from_secs(30))).unwrap(),
                    "{method:?} round {round}: no message and no end of file in 30 s"
                );
                match reader.recv_bytes_into(&mut buf) {
                    Ok(n) => {
                        assert_eq!(n, MESSAGE, "{method:?}: a torn message");
                        let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
                        assert_eq!(seq, next, "{method:?}: a message lost or repeated");
                        assert!(
                            buf[8..].iter().all(|&b| b == seq as u8),
                            "{method:?}: message {seq} garbled"
                        );
                        next += 1;
                    }
                    Err(multiprocessing::connection::Error::Eof) => break,
                    Err(e) => panic!("{method:?}: {e}"),
                }
                if next == 20 + round * 7 {
                    // While it streams: most likely in the middle of copying a message.
                    child.kill().unwrap();
                }
            }
            assert!(next >= 20, "{method:?}: end of file before the kill");
        }
    }
}

#[test]
fn a_writer_whose_reader_is_killed_gets_a_broken_pipe_not_a_hang() {
    for method in METHODS {
        let (ours, theirs) = pipe(true).unwrap();
        let child = Process::new(hold_without_reading, theirs)
            .method(method)
            .start()
            .unwrap();
        assert!(ours.poll(Some(Duration::from_secs(30))).unwrap());
        assert_eq!(ours.recv::<String>().unwrap(), "ready");
        let (done, result) = mpsc::channel();
        let writer = std::thread::spawn(move || {
            // Fills the ring (4 MiB), then waits for room that never comes, until the
            // reader's death ends the wait.
            let message = vec![9u8; 64 << 10];
            let sent = (0..1_000_000).find_map(|_| ours.send_bytes(&message).err());
            let _ = done.send(sent);
        });
        child.kill().unwrap();
        let err = result
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{method:?}: the writer hung"))
            .expect("a million sends to a dead reader all succeeded");
        assert!(err.is_disconnect(), "{method:?}: {err:?}");
        writer.join().unwrap();
    }
}

#[test]
fn a_reader_whose_writer_died_without_closing_gets_end_of_file() {
    fn send_and_exit(conn: Connection) -> u8 {
        conn.send(&"last words").unwrap();
        // Exits at once: no close of its own, and no feeder thread to flush.
        std::process::exit(0);
    }
    for method in METHODS {
        let (ours, theirs) = pipe(true).unwrap();
        let mut child = Process::new(send_and_exit, theirs)
            .method(method)
            .start()
            .unwrap();
        // (It ends without a result: the join says so, and that is all it is for here.)
        let _ = child.join_timeout(Duration::from_secs(30));
        assert!(ours.poll(Some(Duration::from_secs(30))).unwrap());
        assert_eq!(ours.recv::<String>().unwrap(), "last words");
        assert!(ours.poll(Some(Duration::from_secs(30))).unwrap());
        assert!(
            matches!(
                ours.recv_bytes(),
                Err(multiprocessing::connection::Error::Eof)
            ),
            "{method:?}"
        );
    }
}
