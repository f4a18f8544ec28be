//! Parent and child play ping-pong with typed messages over a duplex pipe.
//!
//! `cargo run --example pipe`

use multiprocessing::{Connection, Process, pipe};

fn player(conn: Connection) -> u32 {
    let mut rallies = 0;
    while let Ok((word, n)) = conn.recv::<(String, u32)>() {
        println!("child received ({word:?}, {n})");
        conn.send(&("pong", n + 1)).expect("parent is listening");
        rallies += 1;
    }
    rallies
}

fn main() -> Result<(), multiprocessing::Error> {
    let (ours, theirs) = pipe(true)?;
    let mut child = Process::new(player, theirs).start()?;
    let mut n = 0;
    for _ in 0..3 {
        ours.send(&("ping", n))?;
        let (word, back): (String, u32) = ours.recv()?;
        println!("parent received ({word:?}, {back})");
        n = back + 1;
    }
    drop(ours); // the child sees end of file and returns
    println!("the child returned {} rallies", child.join()?);
    Ok(())
}
