//! Calling a target by name in another process of this executable: what a pool's tasks
//! carry instead of a function pointer.
//!
//! [`TargetId::of`] names a zero-sized target (a fn item, a closure without captures) by
//! its entry in a table the linker builds into the executable, exactly as
//! [`Process::new`](crate::Process::new) does for a child's target. Any process running the
//! same executable (a fork, a spawn or a forkserver child) can [`resolve`](TargetId::resolve)
//! the name and [`call`](Target::call) the target on encoded arguments, as often as it
//! likes. The name is checked against this executable's fingerprint and the target's
//! argument and result types: a name made by another build, or forged, finds nothing it
//! could call except the program's own targets of the types it names.

use std::panic::{AssertUnwindSafe, catch_unwind};

use mp_codec::{Decode, Encode, Frame, Message};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, entry, sys};

/// A target another process of this executable can call: its entry in the executable's
/// table of callable targets, with its types and a check tied to this build.
///
/// ```
/// use multiprocessing::codec::Frame;
/// use multiprocessing::process::TargetId;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let id = TargetId::of(&square)?; // a Message: send it to a child of this executable
/// let target = id.resolve()?; // in the child
/// let (mut args, mut out) = (Frame::encode(&12u64)?, Frame::new());
/// target.call(&mut args, &mut out)?;
/// assert_eq!(out.decode::<u64>()?, 144);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TargetId {
    entry: u64,
    types: u64,
    check: u64,
}

/// A table entry: checks the types a name was made for against its own, and hands back
/// the function that calls its target (so a call checks nothing: it was checked once).
pub(crate) type CallFn = fn(u64) -> Result<Invoke, CallError>;

/// Decodes `A` (from a frame, or from bytes that own no descriptors), runs the target,
/// encodes `R`.
pub(crate) type Invoke = fn(Args<'_>, &mut Frame) -> Result<(), CallError>;

pub(crate) enum Args<'a> {
    Frame(&'a mut Frame),
    Bytes(&'a [u8]),
}

/// A target found in this executable's table, ready to call.
#[derive(Clone, Copy)]
pub struct Target {
    invoke: Invoke,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").finish_non_exhaustive()
    }
}

/// Why a call of a [`Target`] produced no result. It is a `Message`, so the process that
/// made the call can send it back as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CallError {
    /// The target panicked; the message is the panic's.
    #[error("the target panicked: {0}")]
    Panicked(String),
    /// The argument's bytes are not a value of the target's argument type.
    #[error("cannot decode the argument as {type_name}: {reason}")]
    Decode {
        /// The argument type.
        type_name: String,
        /// What the codec said.
        reason: String,
    },
    /// The target returned a value that cannot be encoded.
    #[error("cannot encode the result, a {type_name}: {reason}")]
    Encode {
        /// The result type.
        type_name: String,
        /// What the codec said.
        reason: String,
    },
    /// The name finds no target here (see [`TargetId::resolve`]).
    #[error("no such target: {0}")]
    Unknown(String),
    /// The entry's types are not the ones the name was made for.
    #[error("the target was named with other argument or result types")]
    WrongTypes,
}

/// The message of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".into())
}

/// The table entry of target `F`: its address is what `sys::register_call` puts in the
/// table, and `F` (zero-sized) fixes the target.
pub(crate) fn call_entry<F, A, R>(types: u64) -> Result<Invoke, CallError>
where
    F: Fn(A) -> R + Copy + 'static,
    A: Decode + 'static,
    R: Encode + 'static,
{
    if types != entry::types_of::<F, A, R>() {
        return Err(CallError::WrongTypes);
    }
    Ok(invoke::<F, A, R>)
}

fn invoke<F, A, R>(args: Args<'_>, out: &mut Frame) -> Result<(), CallError>
where
    F: Fn(A) -> R + Copy + 'static,
    A: Decode + 'static,
    R: Encode + 'static,
{
    let args = match args {
        Args::Frame(frame) => A::decode(frame),
        Args::Bytes(bytes) => A::decode_bytes(bytes),
    };
    let args = args.map_err(|err| CallError::Decode {
        type_name: std::any::type_name::<A>().into(),
        reason: err.to_string(),
    })?;
    let target: F = sys::copy_of_zero_sized();
    let value = catch_unwind(AssertUnwindSafe(move || target(args)))
        .map_err(|p| CallError::Panicked(panic_message(&*p)))?;
    value.encode(out).map_err(|err| CallError::Encode {
        type_name: std::any::type_name::<R>().into(),
        reason: err.to_string(),
    })
}

impl TargetId {
    /// Names `target` for another process of this executable. `F` must be zero-sized (a fn
    /// item or a closure without captures), as for [`Process::new`](crate::Process::new).
    ///
    /// # Errors
    /// [`Error::NotInExecutable`] if the target lives in a shared library, whose table other
    /// processes of the executable do not share.
    pub fn of<F, A, R>(_target: &F) -> Result<TargetId>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
    {
        const {
            assert!(
                size_of::<F>() == 0,
                "a target is a fn item or a closure without captures, not a fn pointer"
            )
        };
        sys::register_call::<F, A, R>();
        let call = call_entry::<F, A, R> as CallFn;
        if !sys::same_object(entry::anchor(), call as usize) || !sys::calls().contains(&Some(call))
        {
            return Err(Error::NotInExecutable);
        }
        let entry = sys::offset_of(entry::anchor(), call as usize);
        let types = entry::types_of::<F, A, R>();
        Ok(TargetId {
            entry,
            types,
            check: entry::checksum(entry::fingerprint(), entry, types),
        })
    }

    /// Finds the target in this executable's table. Only the table's own entries can come
    /// out: the name's bytes choose among them, and are never called.
    ///
    /// # Errors
    /// [`Error::UnknownTarget`] if the name was made by another executable (or is
    /// corrupted), names no entry of this one, or names one of other types.
    pub fn resolve(self) -> Result<Target> {
        let unknown = |why: &str| Error::UnknownTarget(why.to_string());
        if self.check != entry::checksum(entry::fingerprint(), self.entry, self.types) {
            return Err(unknown(
                "the name was made by another executable, or is corrupted",
            ));
        }
        sys::calls()
            .iter()
            .flatten()
            .copied()
            .find(|&c| sys::offset_of(entry::anchor(), c as usize) == self.entry)
            .ok_or_else(|| unknown("the name is no entry of this executable's table"))?(
            self.types
        )
        .map(|invoke| Target { invoke })
        .map_err(|_| unknown("the entry is a target of other argument or result types"))
    }
}

impl Target {
    /// Decodes the target's argument from all of `args`, runs the target (catching a panic)
    /// and appends the encoded result to `out`.
    ///
    /// # Errors
    /// A [`CallError`]: the panic's message, an argument that does not decode, a result
    /// that does not encode (`out` may then hold part of it: clear it).
    #[inline]
    pub fn call(&self, args: &mut Frame, out: &mut Frame) -> Result<(), CallError> {
        (self.invoke)(Args::Frame(args), out)
    }

    /// [`call`](Self::call) with an argument encoded in `args`, which owns no descriptors
    /// (one that refers to some fails to decode): for many small arguments back to back.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    #[inline]
    pub fn call_bytes(&self, args: &[u8], out: &mut Frame) -> Result<(), CallError> {
        (self.invoke)(Args::Bytes(args), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x: u64) -> u64 {
        x * x
    }

    fn boom(x: u8) -> u8 {
        panic!("boom {x}")
    }

    fn call<A: Encode + ?Sized>(id: TargetId, a: &A) -> Result<Frame, CallError> {
        let mut out = Frame::new();
        id.resolve()
            .expect("resolves")
            .call(&mut Frame::encode(a).unwrap(), &mut out)?;
        Ok(out)
    }

    #[test]
    fn a_named_target_is_called_with_its_argument() {
        let id = TargetId::of(&square).unwrap();
        assert_eq!(call(id, &9u64).unwrap().decode::<u64>().unwrap(), 81);
        let twice = TargetId::of(&|s: String| s.repeat(2)).unwrap();
        assert_eq!(
            call(twice, &"ab").unwrap().decode::<String>().unwrap(),
            "abab"
        );
    }

    #[test]
    fn a_panic_is_an_error_with_its_message() {
        let id = TargetId::of(&boom).unwrap();
        assert_eq!(
            call(id, &7u8).unwrap_err(),
            CallError::Panicked("boom 7".into())
        );
    }

    #[test]
    fn an_argument_of_another_type_is_a_decode_error_naming_the_type() {
        let id = TargetId::of(&square).unwrap();
        match call(id, &"not a number") {
            Err(CallError::Decode { type_name, .. }) => assert_eq!(type_name, "u64"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_forged_or_foreign_name_resolves_to_nothing() {
        let id = TargetId::of(&square).unwrap();
        let forged = TargetId {
            check: id.check ^ 1,
            ..id
        };
        assert!(matches!(forged.resolve(), Err(Error::UnknownTarget(_))));
        // A consistent name for an offset with no entry (a forger who knows the checksum).
        let entry = id.entry.wrapping_add(1);
        let stray = TargetId {
            entry,
            check: entry::checksum(entry::fingerprint(), entry, id.types),
            ..id
        };
        assert!(matches!(stray.resolve(), Err(Error::UnknownTarget(_))));
        // Another entry's offset with this entry's types: the entry refuses.
        let other = TargetId::of(&boom).unwrap();
        let swapped = TargetId {
            entry: other.entry,
            check: entry::checksum(entry::fingerprint(), other.entry, id.types),
            ..id
        };
        match swapped.resolve() {
            Err(Error::UnknownTarget(why)) => assert!(why.contains("other"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
