//! A short tour of `multiprocessing`, grown by each crate as it lands.
//!
//! Run it with `cargo run --release --example quickstart`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    os::fd::OwnedFd,
};

use multiprocessing::codec::{Bytes, Fd, Frame, Pod, wire};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use serde::{Deserialize, Serialize};

/// An ordinary serde type that also owns a file descriptor.
#[derive(Serialize, Deserialize, Debug)]
struct Job {
    name: String,
    inputs: BTreeMap<String, Vec<u32>>,
    reply_to: Fd,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Any serde value encodes into a frame, and back.
    let frame = Frame::encode(&("squares", vec![1u32, 4, 9, 16, 25]))?;
    println!(
        "encoded ('squares', [1, 4, 9, 16, 25]) in {} bytes",
        frame.bytes.len()
    );
    let (name, xs): (String, Vec<u32>) = frame.decode()?;
    println!("decoded {name}: {xs:?}");

    // 2. Plain-old-data crosses with no encoding at all; raw bytes as they are.
    let pod = Frame::encode(&Pod([0.5f64, 1.5, 2.5]))?;
    println!("a [f64; 3] is {} bytes on the wire", pod.bytes.len());
    let raw = Frame::encode(&Bytes(b"\x00raw\xff".to_vec()))?;
    println!("raw bytes: {:?}", raw.bytes);

    // 3. A value holding a descriptor crosses a unix socket in CPython's framing; the receiver
    //    gets its own descriptor for the same pipe and writes the answer through it.
    let (left, right) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let (mut answers, writer) = std::io::pipe()?;
    let job = Job {
        name: "sum".into(),
        inputs: BTreeMap::from([("xs".into(), vec![1, 2, 3, 4])]),
        reply_to: Fd::from(OwnedFd::from(writer)),
    };
    wire::send_frame(&left, &Frame::encode(&job)?)?;
    drop(job);

    let mut frame = Frame::new();
    wire::recv_frame(&right, wire::DEFAULT_MAX_LEN, &mut frame)?;
    println!(
        "received a frame of {} bytes and {} fd",
        frame.bytes.len(),
        frame.fds.len()
    );
    let job: Job = frame.decode()?;
    let total: u32 = job.inputs.values().flatten().sum();
    writeln!(
        std::fs::File::from(job.reply_to.into_inner()),
        "{} = {total}",
        job.name
    )?;

    let mut reply = String::new();
    answers.read_to_string(&mut reply)?;
    print!("the reply came back through the sent pipe: {reply}");
    Ok(())
}
