//! A worker process: takes tasks from its own inbox, runs each chunk's items, puts one reply
//! per task on the pool's shared reply queue.

use std::sync::Arc;

use mp_codec::{Encode, Frame};
use mp_queue::Queue;
use mp_spawn::{CallError, Target, TargetId};
use serde::{Deserialize, Serialize};

use crate::{
    sys,
    wire::{ChunkReader, ChunkWriter, Head, Msg, load},
};

/// What a worker is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct Boot {
    pub(crate) slot: u32,
    pub(crate) generation: u64,
    pub(crate) inbox: Queue<Msg>,
    pub(crate) replies: Queue<Msg>,
    /// The initializer and its encoded argument.
    pub(crate) init: Option<(TargetId, Vec<u8>)>,
    /// For a worker forked by the pool without an initializer: where it was put to start,
    /// and the CPUs to take back before its first task ([`crate::place`]).
    pub(crate) placed: Option<crate::place::Plan>,
}

/// This worker's reply queue (for [`crate::__testing`]).
static REPLIES: std::sync::OnceLock<Queue<Msg>> = std::sync::OnceLock::new();

/// Kills this worker with SIGKILL while it holds the lock of the reply queue that every
/// worker puts its results on: the moment a death hurts the others most.
pub(crate) fn die_holding_the_reply_lock() {
    let kill = || {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    };
    if let Some(replies) = REPLIES.get() {
        let _ = replies.__with_put_lock(|| {
            loop {
                kill();
            }
        });
    }
}

/// Exit code of a worker that could not put a reply.
const CANNOT_REPLY: i32 = 3;

/// The worker's body (a `Process` target).
pub(crate) fn main(boot: Boot) {
    // Ctrl-C reaches the whole process group: the pool, not each worker, decides what it
    // means (it kills its workers and returns an error from the wait).
    sys::ignore_sigint();
    let Boot {
        slot,
        generation,
        inbox,
        replies,
        init,
        mut placed,
    } = boot;
    if let Some((id, args)) = init {
        let ran = id.resolve().map_err(|e| e.to_string()).and_then(|t| {
            let mut args = Frame {
                bytes: args,
                fds: Vec::new(),
            };
            t.call(&mut args, &mut Frame::new())
                .map_err(|e| e.to_string())
        });
        if let Err(message) = ran {
            let _ = replies.put(Msg::bare(Head::InitFailed {
                slot,
                generation,
                message,
            }));
            return;
        }
        let _ = replies.put(Msg::bare(Head::Ready { slot, generation }));
    }
    let _ = REPLIES.set(replies.clone());
    let mut known: Option<(TargetId, Target)> = None;
    let mut scratch = Frame::new();
    // The last reply's payload, emptied: its buffer serves the next (a fresh one would cost
    // a page fault per 4 KiB of results).
    let mut spare = Frame::new();
    // Any error on the inbox (it cannot be closed by anyone but us, so it is corrupted
    // memory or a task that does not decode) ends the worker: the pool then treats the
    // task it held as lost and sends the others elsewhere, rather than wait for a reply
    // that would never come.
    while let Ok(msg) = inbox.get() {
        // Every CPU back before the first task runs. Not at start-up: the parent moves us
        // after the fork, and may do so only once we have started; a task, though, is sent
        // after that move (see `crate::place`).
        if let Some(plan) = placed.take() {
            plan.back_to_all();
        }
        let Head::Task {
            job,
            chunk,
            target,
            plain,
        } = msg.head
        else {
            return;
        };
        let resolved = match known {
            Some((id, t)) if id == target => Ok(t),
            _ => target
                .resolve()
                .map_err(|e| CallError::Unknown(e.to_string())),
        };
        if let Ok(t) = resolved {
            known = Some((target, t));
        }
        let payload = Arc::try_unwrap(msg.payload).unwrap_or_default();
        let room = std::mem::take(&mut spare);
        let (out, failed, plain) = if plain {
            let (out, failed, errors) = run_plain(resolved, payload, room);
            (out, failed, Some(errors))
        } else {
            let (out, failed) = run_chunk(resolved, payload, &mut scratch, room);
            (out, failed, None)
        };
        let reply = Msg {
            head: Head::Done {
                slot,
                generation,
                job,
                chunk,
                failed: failed.clone(),
                plain,
            },
            payload: Arc::new(out),
        };
        let put = replies.put(reply.clone());
        if let Ok(mut out) = Arc::try_unwrap(reply.payload) {
            out.clear();
            spare = out;
        }
        if let Err(err) = put {
            // The results could not be sent (a descriptor that cannot be duplicated, say):
            // the task still fails, with why, rather than leave the pool waiting.
            let why = CallError::Encode {
                type_name: "the task's results".into(),
                reason: err.to_string(),
            };
            let head = Head::Done {
                slot,
                generation,
                job,
                chunk,
                failed: Some((failed.map_or(0, |(i, _)| i), why)),
                plain: None,
            };
            if replies.put(Msg::bare(head)).is_err() {
                std::process::exit(CANNOT_REPLY);
            }
        }
    }
}

/// An item that failed: its index in its chunk, and why.
type Failure = (u32, CallError);

/// Runs a chunk of plain arguments (a run of their bytes): the reply's payload (a run of
/// results, zero bytes in the place of each item that failed), the first failure, and every
/// failure in order.
fn run_plain(
    target: Result<Target, CallError>,
    payload: Frame,
    mut out: Frame,
) -> (Frame, Option<Failure>, Vec<Failure>) {
    let sizes = target.and_then(|t| {
        let (arg, result) = t.plain_sizes().ok_or(CallError::WrongTypes)?;
        if !payload.bytes.len().is_multiple_of(arg) {
            return Err(CallError::Decode {
                type_name: "a task's run of plain arguments".into(),
                reason: format!(
                    "{} bytes are no whole number of {arg}-byte items",
                    payload.bytes.len()
                ),
            });
        }
        Ok((t, arg, result))
    });
    let (target, arg, result) = match sizes {
        Ok(sizes) => sizes,
        Err(why) => return (out, Some((0, why)), Vec::new()),
    };
    let mut errors = Vec::new();
    let mut from = 0;
    // Each failure is stepped over: every pass goes at least one item further.
    while let Err((at, why)) = target.call_plain(&payload.bytes[from * arg..], &mut out.bytes) {
        let at = from + at;
        out.bytes.resize(out.bytes.len() + result, 0);
        errors.push((at as u32, why));
        from = at + 1;
        if from * arg >= payload.bytes.len() {
            break;
        }
    }
    let failed = errors.first().cloned();
    (out, failed, errors)
}

/// Runs every item of a chunk: the reply's payload (one result item per item, in order, up
/// to the first that could not be read) and the first failure.
fn run_chunk(
    target: Result<Target, CallError>,
    payload: Frame,
    scratch: &mut Frame,
    mut out: Frame,
) -> (Frame, Option<(u32, CallError)>) {
    // Results take about the room their arguments took.
    out.bytes
        .reserve(payload.bytes.len() + payload.bytes.len() / 2);
    let mut failed = None;
    let target = match target {
        Ok(t) => t,
        Err(why) => return (out, Some((0, why))),
    };
    let mut writer = ChunkWriter::new(&mut out);
    let mut reader = ChunkReader::new(&payload.bytes, payload.fds.len());
    let mut fds = payload.fds.into_iter();
    let mut index = 0u32;
    loop {
        let item = match reader.next_item() {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(why) => {
                failed.get_or_insert((
                    index,
                    CallError::Decode {
                        type_name: "a task's chunk of items".into(),
                        reason: why.into(),
                    },
                ));
                break;
            }
        };
        let called = if item.fds == 0 {
            writer.item(|f| target.call_bytes(item.bytes, f).map(|()| false))
        } else {
            load(scratch, &item, &mut fds);
            writer.item(|f| target.call(scratch, f).map(|()| false))
        };
        if let Err(why) = called {
            // The item's error instead of its result (a CallError always encodes).
            let _ = writer.item(|f| why.encode(f).map(|()| true));
            failed.get_or_insert((index, why));
        }
        index += 1;
    }
    (out, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x: u64) -> u64 {
        x.wrapping_mul(x)
    }

    fn run_of(xs: &[u64]) -> Frame {
        let mut frame = Frame::new();
        for x in xs {
            mp_codec::plain::put(x, &mut frame.bytes);
        }
        frame
    }

    #[test]
    fn a_plain_chunk_runs_every_item() {
        let target = Ok(TargetId::of(&square).unwrap().resolve().unwrap());
        let (out, failed, errors) = run_plain(target, run_of(&[2, 3]), Frame::new());
        assert_eq!(out.bytes, run_of(&[4, 9]).bytes);
        assert!(failed.is_none() && errors.is_empty());
    }

    #[test]
    fn a_plain_chunk_that_cannot_be_run_fails_whole() {
        // A target whose types are not plain (a forged or mismatched task).
        let text = Ok(TargetId::of(&|s: String| s).unwrap().resolve().unwrap());
        // A run cut in the middle of an item.
        let mut cut = run_of(&[1, 2]);
        cut.bytes.pop();
        let cases = [
            (text, run_of(&[1])),
            (Ok(TargetId::of(&square).unwrap().resolve().unwrap()), cut),
            (Err(CallError::Unknown("gone".into())), run_of(&[1])),
        ];
        for (target, payload) in cases {
            let (out, failed, errors) = run_plain(target, payload, Frame::new());
            assert!(out.bytes.is_empty());
            assert!(errors.is_empty());
            assert!(matches!(failed, Some((0, _))), "{failed:?}");
        }
    }
}
