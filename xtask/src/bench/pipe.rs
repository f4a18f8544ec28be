//! Pipe workloads between two processes, the peer being this same binary re-executed
//! (`xtask __peer KIND`) with its end of a unix socket as stdin. The parent runs on CPU 0 and
//! every peer on CPU 1, CPython's too, so all implementations get the same placement.
//!
//! - `pipe_rtt_8b`: one round trip of an 8-byte message (ns/op). `raw/framed, 2 reads` does
//!   on a raw socket the I/O CPython's framing needs: 12 bytes written at once, read as a
//!   4-byte header then the payload; it shows what the second read costs here.
//! - `pipe_1mib`: 1 MiB messages one way, acknowledged once per batch (MB/s).
//! - `pipe_idle_reader`: the CPU a reader uses while it waits 1 s for a message that comes
//!   only then (% of one CPU, from the thread's CPU-time clock around the wait).
//!
//! `ours/mp-pipe socket` is our `Connection` on the socket (`socket_pipe`, CPython's wire
//! format); `ours/mp-pipe ring` is what `pipe()` returns, on shared-memory rings, its peer's
//! end sent to it over the bootstrap socket. In `pipe_1mib` the ring's peer reads into one
//! buffer (`recv_bytes_into`), as the raw socket's does; `ring, recv_bytes` takes each
//! message as a new `Vec`, as the socket row's peer does.

use std::{
    os::fd::{AsFd, OwnedFd},
    process::{Child, Command, Stdio},
    time::Duration,
};

use ipc_channel::ipc::{
    self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender,
};
use mp_pipe::Connection;
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

use super::{Bound, Impl, Target, Unit, Workload, cpython, time_batched};

const MIB: usize = 1 << 20;
/// The CPUs of the measuring process and of its peer.
pub const PARENT_CPU: usize = 0;
pub const PEER_CPU: usize = 1;

pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "pipe_rtt_8b",
            unit: Unit::NsPerOp,
            impls: vec![
                peer_impl("raw/socketpair", "raw-echo", raw_rtt),
                peer_impl("ours/mp-pipe socket", "ours-echo", ours_rtt),
                ring_impl("ours/mp-pipe ring", "ring-echo", conn_rtt),
                peer_impl("raw/framed, 2 reads", "raw-framed-echo", raw_framed_rtt),
                cpython("multiprocessing.Pipe", "pipe.py", "pipe_rtt_8b"),
            ],
        },
        Workload {
            name: "pipe_1mib",
            unit: Unit::MegabytesPerSec,
            impls: vec![
                peer_impl("raw/socketpair", "raw-sink", raw_stream),
                peer_impl("ours/mp-pipe socket", "ours-sink", ours_stream),
                ring_impl("ours/mp-pipe ring", "ring-sink-into", conn_stream),
                ring_impl("ours/mp-pipe ring, recv_bytes", "ring-sink", conn_stream),
                cpython("multiprocessing.Pipe", "pipe.py", "pipe_1mib"),
                ipc_channel_impl(),
            ],
        },
        Workload {
            name: "pipe_idle_reader",
            unit: Unit::PercentCpu,
            impls: vec![
                Impl::new("ours/mp-pipe ring", || idle_reader(mp_pipe::pipe)),
                Impl::new("ours/mp-pipe socket", || idle_reader(mp_pipe::socket_pipe)),
            ],
        },
    ]
}

/// Issue 17's targets for the ring-backed pipe, checked after the table.
pub fn targets() -> Vec<Target> {
    const RING: &str = "ours/mp-pipe ring";
    vec![
        Target::new("pipe_rtt_8b", RING, "raw/socketpair", Bound::AtMost(0.05)),
        Target::new(
            "pipe_rtt_8b",
            "cpython/multiprocessing.Pipe",
            RING,
            Bound::AtLeast(20.0),
        ),
        Target::new("pipe_1mib", RING, "raw/socketpair", Bound::AtLeast(1.5)),
        Target::absolute("pipe_idle_reader", RING, Bound::AtMost(1.0)),
    ]
}

/// The CPU time (user and system) this thread has used: its CPU-time clock, which counts
/// what `getrusage(RUSAGE_THREAD)` does, in nanoseconds rather than ticks.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A reader thread waits in `recv` for a message the main thread sends 1 s later; the CPU
/// the reader used meanwhile, as a percentage of the second.
fn idle_reader(make: fn(bool) -> mp_pipe::Result<(Connection, Connection)>) -> Result<f64, String> {
    const IDLE: Duration = Duration::from_secs(1);
    let (reader, writer) = make(false).map_err(|e| e.to_string())?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        pin(PEER_CPU);
        let before = thread_cpu();
        let start = std::time::Instant::now();
        let _ = ready_tx.send(());
        let got = reader.recv_bytes();
        let (used, waited) = (thread_cpu() - before, start.elapsed());
        got.map(|_| used.as_secs_f64() / waited.as_secs_f64() * 100.0)
            .map_err(|e| e.to_string())
    });
    pin(PARENT_CPU);
    ready_rx.recv().map_err(|e| e.to_string())?;
    // The clock the reader is measured by, not a synchronization: it waits for the message.
    std::thread::sleep(IDLE);
    writer.send_bytes(b"wake").map_err(|e| e.to_string())?;
    waiter.join().map_err(|_| "reader panicked".to_string())?
}

/// An implementation over a ring pipe (`pipe(true)`), whose other end goes to a peer started
/// on first use (over the bootstrap socket, its stdin) and kept for every run.
fn ring_impl(
    name: &str,
    kind: &'static str,
    mut run: impl FnMut(&Connection, &mut u64) -> Result<f64, String> + 'static,
) -> Impl {
    let mut state: Option<(Connection, OwnedFd, Peer)> = None;
    let mut iters = 0;
    Impl::new(name, move || {
        if state.is_none() {
            let (ours, theirs) = pair();
            let peer = Peer::start(kind, Stdio::from(theirs))?;
            let (here, there) = mp_pipe::pipe(true).map_err(|e| e.to_string())?;
            Connection::from_unix_socket(ours.try_clone().map_err(|e| e.to_string())?)
                .send(&there)
                .map_err(|e| format!("sending the peer its end: {e}"))?;
            state = Some((here, ours, peer));
        }
        pin(PARENT_CPU);
        let (conn, _, _) = state.as_ref().unwrap();
        run(conn, &mut iters)
    })
}

/// Pins the calling thread to `cpu` if the machine has it (best effort).
pub fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// A child running `xtask __peer KIND` with `stdin` as its stdin; killed and reaped on drop.
struct Peer {
    child: Child,
}

impl Peer {
    fn start(kind: &str, stdin: Stdio) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args(["__peer", kind])
            .stdin(stdin)
            .spawn()
            .map_err(|e| format!("cannot start peer: {e}"))?;
        Ok(Peer { child })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair")
}

/// An implementation whose peer is started on first use and kept for every run; `run`
/// measures one run over the parent's end of the socket.
fn peer_impl(
    name: &str,
    kind: &'static str,
    mut run: impl FnMut(&OwnedFd, &mut u64) -> Result<f64, String> + 'static,
) -> Impl {
    let mut state: Option<(OwnedFd, Peer)> = None;
    let mut iters = 0;
    Impl::new(name, move || {
        if state.is_none() {
            let (ours, theirs) = pair();
            let peer = Peer::start(kind, Stdio::from(theirs))?;
            state = Some((ours, peer));
        }
        pin(PARENT_CPU);
        let (fd, _) = state.as_ref().unwrap();
        run(fd, &mut iters)
    })
}

fn read_exact(fd: &impl AsFd, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn write_all(fd: &impl AsFd, buf: &[u8]) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < buf.len() {
        match rustix::io::write(fd, &buf[sent..]) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn raw_rtt(fd: &OwnedFd, iters: &mut u64) -> Result<f64, String> {
    let mut buf = [7u8; 8];
    let mut failed = None;
    let ns = time_batched(iters, |n| {
        for _ in 0..n {
            if let Err(e) = write_all(fd, &buf).and_then(|()| read_exact(fd, &mut buf)) {
                failed = Some(e.to_string());
                return;
            }
        }
    });
    failed.map_or(Ok(ns), Err)
}

/// Reads one CPython-framed 8-byte message as CPython does: the header, then the payload.
fn read_framed(fd: &impl AsFd, message: &mut [u8; 12]) -> std::io::Result<()> {
    let (head, payload) = message.split_at_mut(4);
    read_exact(fd, head)?;
    read_exact(fd, payload)
}

fn raw_framed_rtt(fd: &OwnedFd, iters: &mut u64) -> Result<f64, String> {
    let mut message = [0, 0, 0, 8, 7, 7, 7, 7, 7, 7, 7, 7];
    let mut failed = None;
    let ns = time_batched(iters, |n| {
        for _ in 0..n {
            if let Err(e) = write_all(fd, &message).and_then(|()| read_framed(fd, &mut message)) {
                failed = Some(e.to_string());
                return;
            }
        }
    });
    failed.map_or(Ok(ns), Err)
}

fn ours_rtt(fd: &OwnedFd, iters: &mut u64) -> Result<f64, String> {
    let conn = Connection::from_unix_socket(fd.try_clone().map_err(|e| e.to_string())?);
    conn_rtt(&conn, iters)
}

/// Round trips of an 8-byte message over one of our connections.
fn conn_rtt(conn: &Connection, iters: &mut u64) -> Result<f64, String> {
    let message = [7u8; 8];
    let mut failed = None;
    let ns = time_batched(iters, |n| {
        for _ in 0..n {
            if let Err(e) = conn.send_bytes(&message).and_then(|()| conn.recv_bytes()) {
                failed = Some(e.to_string());
                return;
            }
        }
    });
    failed.map_or(Ok(ns), Err)
}

/// Turns nanoseconds per 1 MiB message into MB/s.
fn mb_per_sec(ns_per_message: f64) -> f64 {
    MIB as f64 / ns_per_message * 1e3
}

fn raw_stream(fd: &OwnedFd, iters: &mut u64) -> Result<f64, String> {
    let message = vec![7u8; MIB];
    let mut ack = [0u8; 1];
    let mut failed = None;
    let ns = time_batched(iters, |n| {
        let result = write_all(fd, &n.to_le_bytes())
            .and_then(|()| (0..n).try_for_each(|_| write_all(fd, &message)))
            .and_then(|()| read_exact(fd, &mut ack));
        if let Err(e) = result {
            failed = Some(e.to_string());
        }
    });
    failed.map_or(Ok(mb_per_sec(ns)), Err)
}

fn ours_stream(fd: &OwnedFd, iters: &mut u64) -> Result<f64, String> {
    let conn = Connection::from_unix_socket(fd.try_clone().map_err(|e| e.to_string())?);
    conn_stream(&conn, iters)
}

/// Batches of 1 MiB messages over one of our connections, each batch acknowledged.
fn conn_stream(conn: &Connection, iters: &mut u64) -> Result<f64, String> {
    let message = vec![7u8; MIB];
    let mut failed = None;
    let ns = time_batched(iters, |n| {
        let result = conn
            .send(&n)
            .and_then(|()| (0..n).try_for_each(|_| conn.send_bytes(&message)))
            .and_then(|()| conn.recv_bytes());
        if let Err(e) = result {
            failed = Some(e.to_string());
        }
    });
    failed.map_or(Ok(mb_per_sec(ns)), Err)
}

/// ipc-channel's bytes channel (no serde on the payload), bootstrapped through its one-shot
/// server; the peer acknowledges each batch on a second channel.
fn ipc_channel_impl() -> Impl {
    type Hello = (IpcBytesSender, IpcReceiver<()>);
    let mut state: Option<(IpcBytesSender, IpcReceiver<()>, Peer)> = None;
    let mut iters = 0;
    Impl::new("ipc-channel/bytes_channel", move || {
        if state.is_none() {
            let (server, name) = IpcOneShotServer::<Hello>::new().map_err(|e| e.to_string())?;
            let (ours, theirs) = pair();
            let peer = Peer::start("ipc-sink", Stdio::from(theirs))?;
            mp_codec::wire::write_frame(&ours, name.as_bytes()).map_err(|e| e.to_string())?;
            let (_, (tx, acks)) = server.accept().map_err(|e| e.to_string())?;
            state = Some((tx, acks, peer));
        }
        pin(PARENT_CPU);
        let (tx, acks, _) = state.as_ref().unwrap();
        let message = vec![7u8; MIB];
        let mut failed = None;
        let ns = time_batched(&mut iters, |n| {
            let result = tx
                .send(&n.to_le_bytes())
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    (0..n).try_for_each(|_| tx.send(&message).map_err(|e| e.to_string()))
                })
                .and_then(|()| acks.recv().map_err(|e| format!("{e:?}")));
            if let Err(e) = result {
                failed = Some(e);
            }
        });
        failed.map_or(Ok(mb_per_sec(ns)), Err)
    })
}

/// The peer side: `xtask __peer KIND`, stdin being its end of the socket. Returns when the
/// parent closes its end.
pub fn peer(kind: &str) -> Result<(), String> {
    pin(PEER_CPU);
    let stdin: OwnedFd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let eof_is_fine = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(())
        } else {
            Err(e.to_string())
        }
    };
    match kind {
        "raw-echo" => {
            let mut buf = [0u8; 8];
            loop {
                if let Err(e) = read_exact(&stdin, &mut buf) {
                    return eof_is_fine(e);
                }
                write_all(&stdin, &buf).map_err(|e| e.to_string())?;
            }
        }
        "raw-framed-echo" => {
            let mut message = [0u8; 12];
            loop {
                if let Err(e) = read_framed(&stdin, &mut message) {
                    return eof_is_fine(e);
                }
                write_all(&stdin, &message).map_err(|e| e.to_string())?;
            }
        }
        "raw-sink" => {
            let mut buf = vec![0u8; MIB];
            loop {
                let mut count = [0u8; 8];
                if let Err(e) = read_exact(&stdin, &mut count) {
                    return eof_is_fine(e);
                }
                for _ in 0..u64::from_le_bytes(count) {
                    read_exact(&stdin, &mut buf).map_err(|e| e.to_string())?;
                }
                write_all(&stdin, &[1]).map_err(|e| e.to_string())?;
            }
        }
        "ring-echo" | "ring-sink" | "ring-sink-into" => {
            let conn: Connection = Connection::from_unix_socket(stdin)
                .recv()
                .map_err(|e| format!("receiving our end: {e}"))?;
            conn_peer(kind, &conn)
        }
        "ours-echo" | "ours-sink" => conn_peer(kind, &Connection::from_unix_socket(stdin)),
        "ipc-sink" => {
            let mut name = Vec::new();
            mp_codec::wire::read_frame(&stdin, 4096, &mut name).map_err(|e| e.to_string())?;
            let name = String::from_utf8(name).map_err(|e| e.to_string())?;
            let hello = IpcSender::<(IpcBytesSender, IpcReceiver<()>)>::connect(name)
                .map_err(|e| e.to_string())?;
            let (tx, rx): (IpcBytesSender, IpcBytesReceiver) =
                ipc::bytes_channel().map_err(|e| e.to_string())?;
            let (ack_tx, ack_rx) = ipc::channel::<()>().map_err(|e| e.to_string())?;
            hello.send((tx, ack_rx)).map_err(|e| e.to_string())?;
            loop {
                let Ok(count) = rx.recv() else {
                    return Ok(()); // the parent has gone
                };
                let count = u64::from_le_bytes(count.try_into().map_err(|_| "bad count")?);
                for _ in 0..count {
                    rx.recv().map_err(|e| format!("{e:?}"))?;
                }
                ack_tx.send(()).map_err(|e| e.to_string())?;
            }
        }
        other => Err(format!("unknown peer kind {other}")),
    }
}

/// The peer on one of our connections: echoes each message back (`*-echo`), or takes
/// batches of 1 MiB messages, each a new `Vec` from `recv_bytes` (`*-sink`, what most
/// callers write) or into one buffer with `recv_bytes_into` (`*-sink-into`, as the raw
/// socket's peer reads), and acknowledges each batch; returns when the parent's end is gone.
fn conn_peer(kind: &str, conn: &Connection) -> Result<(), String> {
    let mut buf = vec![0u8; MIB];
    loop {
        if kind.ends_with("-echo") {
            match conn.recv_bytes_into(&mut buf) {
                Ok(n) => conn.send_bytes(&buf[..n]).map_err(|e| e.to_string())?,
                Err(mp_pipe::Error::Eof) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
            continue;
        }
        let n: u64 = match conn.recv() {
            Ok(n) => n,
            Err(mp_pipe::Error::Eof) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        for _ in 0..n {
            if kind.ends_with("-into") {
                conn.recv_bytes_into(&mut buf).map_err(|e| e.to_string())?;
            } else {
                conn.recv_bytes().map_err(|e| e.to_string())?;
            }
        }
        conn.send_bytes(b"").map_err(|e| e.to_string())?;
    }
}
