//! What passes between rank 0 and a worker, as bytes: a task (a chunk of arguments for one
//! target) and its reply. Both are a head (postcard, after its 4-byte length) and a payload:
//! the values back to back, as runs of their bytes when the types are plain numbers, or
//! else each encoding after its 4-byte length.
//!
//! The target travels as its [`TargetId`]: its entry in this executable's table of targets,
//! checked against the executable's fingerprint, so a worker on a host running another build
//! refuses it ([`Failure::Unknown`]) rather than call anything.

use std::collections::HashMap;

use mp_codec::{Decode, Encode, Frame, plain};
use mp_pool::Error;
use mp_spawn::{CallError, Target, TargetId};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A task's head.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskHead {
    pub(crate) target: TargetId,
    /// Whether the payload is a run of plain values.
    pub(crate) plain: bool,
    pub(crate) count: u32,
}

/// A reply's head: whether the chunk ran, or how it failed (a chunk fails whole, as
/// Python's does: its first failure is the chunk's).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReplyHead {
    pub(crate) failed: Option<Failure>,
}

/// How a chunk failed in the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Failure {
    Panicked(String),
    Decode {
        type_name: String,
        reason: String,
    },
    Encode {
        type_name: String,
        reason: String,
    },
    /// The target is not one of this executable's (another build on another host), or the
    /// task's bytes are garbled.
    Unknown(String),
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Error {
        match failure {
            Failure::Panicked(message) => Error::Panicked { message },
            Failure::Decode { type_name, reason } => Error::Decode { type_name, reason },
            Failure::Encode { type_name, reason } => Error::Encode { type_name, reason },
            Failure::Unknown(why) => {
                Error::Spawn(std::sync::Arc::new(mp_spawn::Error::UnknownTarget(why)))
            }
        }
    }
}

impl From<CallError> for Failure {
    fn from(err: CallError) -> Failure {
        match err {
            CallError::Panicked(message) => Failure::Panicked(message),
            CallError::Decode { type_name, reason } => Failure::Decode { type_name, reason },
            CallError::Encode { type_name, reason } => Failure::Encode { type_name, reason },
            other => Failure::Unknown(other.to_string()),
        }
    }
}

/// Starts a message with `head`; the payload follows.
fn start_with<H: Serialize>(head: &H, out: &mut Vec<u8>) {
    let head = Frame::encode(head).expect("a head encodes").bytes;
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
}

/// A message's head and payload; an error for bytes that are not one.
fn split<H: DeserializeOwned>(bytes: &[u8]) -> Result<(H, &[u8]), String> {
    let len = bytes
        .first_chunk::<4>()
        .map(|b| u32::from_le_bytes(*b) as usize)
        .ok_or("a message shorter than its head's length")?;
    let head = bytes
        .get(4..4 + len)
        .ok_or("a message shorter than its head")?;
    let head = H::decode_bytes(head).map_err(|e| format!("a garbled head: {e}"))?;
    Ok((head, &bytes[4 + len..]))
}

/// Appends one encoding as a record: its length, then its bytes.
fn put_record(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The records of `payload`, in order; an error at the first that does not fit.
fn records(payload: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    let mut rest = payload;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(len) = rest
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b) as usize)
        else {
            rest = &[];
            return Some(Err("a record shorter than its length".to_string()));
        };
        let Some(record) = rest.get(4..4 + len) else {
            rest = &[];
            return Some(Err("a record shorter than it says".to_string()));
        };
        rest = &rest[4 + len..];
        Some(Ok(record))
    })
}

/// Whether tasks of `A -> R` travel as runs of plain values.
pub(crate) fn plain_types<A: 'static, R: 'static>() -> bool {
    plain::size_of::<A>().is_some() && plain::size_of::<R>().is_some()
}

/// A task for `target` over `items`.
///
/// # Errors
/// [`Error::Encode`] for an item that cannot be encoded, or that owns descriptors (which
/// cannot cross MPI).
pub(crate) fn task<A: Encode + 'static>(
    target: TargetId,
    plain: bool,
    items: &[A],
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64 + items.len() * 16);
    start_with(
        &TaskHead {
            target,
            plain,
            count: items.len() as u32,
        },
        &mut out,
    );
    if plain {
        for item in items {
            plain::put(item, &mut out);
        }
        return Ok(out);
    }
    let mut frame = Frame::new();
    for item in items {
        frame.clear();
        let failed = |reason: String| Error::Encode {
            type_name: std::any::type_name::<A>().into(),
            reason,
        };
        item.encode(&mut frame).map_err(|e| failed(e.to_string()))?;
        if !frame.fds.is_empty() {
            return Err(failed(
                "it owns file descriptors, which cannot go to another MPI rank".into(),
            ));
        }
        put_record(&frame.bytes, &mut out);
    }
    Ok(out)
}

/// In a worker: runs a task's chunk and makes its reply. Targets are resolved once each.
pub(crate) fn run(task: &[u8], targets: &mut HashMap<TargetId, Target>) -> Vec<u8> {
    let mut payload = Vec::new();
    let failed = run_into(task, targets, &mut payload).err();
    let mut out = Vec::with_capacity(16 + payload.len());
    start_with(
        &ReplyHead {
            failed: failed.clone(),
        },
        &mut out,
    );
    if failed.is_none() {
        out.extend_from_slice(&payload);
    }
    out
}

fn run_into(
    task: &[u8],
    targets: &mut HashMap<TargetId, Target>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let (head, args) = split::<TaskHead>(task).map_err(Failure::Unknown)?;
    let target = match targets.get(&head.target) {
        Some(target) => target,
        None => {
            let resolved = head
                .target
                .resolve()
                .map_err(|e| Failure::Unknown(e.to_string()))?;
            targets.entry(head.target).or_insert(resolved)
        }
    };
    if head.plain {
        return target.call_plain(args, out).map_err(|(_, e)| e.into());
    }
    let mut frame = Frame::new();
    for record in records(args) {
        let record = record.map_err(Failure::Unknown)?;
        frame.clear();
        target.call_bytes(record, &mut frame)?;
        if !frame.fds.is_empty() {
            return Err(Failure::Encode {
                type_name: "the result".into(),
                reason: "it owns file descriptors, which cannot go to another MPI rank".into(),
            });
        }
        put_record(&frame.bytes, out);
    }
    Ok(())
}

/// On rank 0: the values of a reply to a task of `count` items, appended to `out`.
///
/// # Errors
/// The chunk's failure in the worker; [`Error::Decode`] for a value that does not decode
/// as an `R`, or a reply of another length.
pub(crate) fn results<R: Decode + 'static>(
    reply: &[u8],
    plain: bool,
    count: usize,
    out: &mut Vec<R>,
) -> Result<(), Error> {
    let bad = |reason: String| Error::Decode {
        type_name: std::any::type_name::<R>().into(),
        reason,
    };
    let (head, payload) = split::<ReplyHead>(reply).map_err(bad)?;
    if let Some(failure) = head.failed {
        return Err(failure.into());
    }
    let before = out.len();
    if plain {
        let size = plain::size_of::<R>().ok_or_else(|| bad("not a plain type".into()))?;
        if payload.len() != size * count {
            return Err(bad(format!(
                "{} bytes of results for {count} values of {size}",
                payload.len()
            )));
        }
        for value in payload.chunks_exact(size) {
            out.push(plain::take(value).ok_or_else(|| bad("not a plain type".into()))?);
        }
    } else {
        for record in records(payload) {
            let record = record.map_err(bad)?;
            out.push(R::decode_bytes(record).map_err(|e| bad(e.to_string()))?);
        }
    }
    if out.len() - before != count {
        return Err(bad(format!(
            "{} results for {count} arguments",
            out.len() - before
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x: u64) -> u64 {
        x * x
    }

    fn shout(s: String) -> String {
        if s.is_empty() {
            panic!("nothing to shout")
        }
        s.to_uppercase()
    }

    #[test]
    fn plain_and_encoded_chunks_round_trip() {
        let mut targets = HashMap::new();
        let id = TargetId::of(&square).unwrap();
        let reply = run(&task(id, true, &[2u64, 3, 4]).unwrap(), &mut targets);
        let mut out = Vec::new();
        results::<u64>(&reply, true, 3, &mut out).unwrap();
        assert_eq!(out, [4, 9, 16]);

        let id = TargetId::of(&shout).unwrap();
        let items = ["a".to_string(), "bc".to_string()];
        let reply = run(&task(id, false, &items).unwrap(), &mut targets);
        let mut out = Vec::new();
        results::<String>(&reply, false, 2, &mut out).unwrap();
        assert_eq!(out, ["A", "BC"]);
    }

    #[test]
    fn a_panic_fails_the_chunk_with_its_message() {
        let id = TargetId::of(&shout).unwrap();
        let items = ["a".to_string(), String::new()];
        let reply = run(&task(id, false, &items).unwrap(), &mut HashMap::new());
        let err = results::<String>(&reply, false, 2, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&err, Error::Panicked { message } if message.contains("nothing to shout")),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_call() {
        for bytes in [&b""[..], &[1, 0, 0, 0, 9], &[0xff; 40]] {
            let reply = run(bytes, &mut HashMap::new());
            let err = results::<u64>(&reply, true, 1, &mut Vec::new()).unwrap_err();
            assert!(matches!(err, Error::Spawn(_)), "{err:?}");
            assert!(results::<u64>(bytes, true, 1, &mut Vec::new()).is_err());
        }
    }
}
