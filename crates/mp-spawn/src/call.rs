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

use mp_codec::{Decode, Encode, Frame, Message, plain};
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
/// the functions that call its target (so a call checks nothing: it was checked once).
pub(crate) type CallFn = fn(u64) -> Result<Calls, CallError>;

/// What a table entry hands back: how to call its target on one encoded argument, and (if
/// its argument and result types are both [plain](mp_codec::plain)) on a run of them.
#[derive(Clone, Copy)]
pub(crate) struct Calls {
    invoke: Invoke,
    plain: Option<Plain>,
}

/// A target's calls on runs of plain values: the sizes of its argument and result, and
/// the function that runs it over a run (see [`Target::call_plain`]).
#[derive(Clone, Copy)]
struct Plain {
    arg: usize,
    result: usize,
    run: RunPlain,
}

type RunPlain = fn(&[u8], &mut Vec<u8>) -> Result<(), (usize, CallError)>;

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
    calls: Calls,
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
pub(crate) fn call_entry<F, A, R>(types: u64) -> Result<Calls, CallError>
where
    F: Fn(A) -> R + Copy + 'static,
    A: Decode + 'static,
    R: Encode + 'static,
{
    if types != entry::types_of::<F, A, R>() {
        return Err(CallError::WrongTypes);
    }
    let plain = match (plain::size_of::<A>(), plain::size_of::<R>()) {
        (Some(arg), Some(result)) => Some(Plain {
            arg,
            result,
            run: run_plain::<F, A, R>,
        }),
        _ => None,
    };
    Ok(Calls {
        invoke: invoke::<F, A, R>,
        plain,
    })
}

/// Runs the target over each `A` of the run `args`, appending each result's bytes to
/// `out`; at the first call that panics, stops and gives its index and message (the results
/// before it are in `out`). Called only when `A` and `R` are plain.
fn run_plain<F, A, R>(args: &[u8], out: &mut Vec<u8>) -> Result<(), (usize, CallError)>
where
    F: Fn(A) -> R + Copy + 'static,
    A: 'static,
    R: 'static,
{
    let (Some(size), Some(result)) = (plain::size_of::<A>(), plain::size_of::<R>()) else {
        return Err((0, CallError::WrongTypes));
    };
    let items = args.chunks_exact(size);
    let whole = items.len();
    let tail = items.remainder().len();
    out.reserve(whole * result);
    let target: F = sys::copy_of_zero_sized();
    // The index of the item being called, read again if a call panics.
    let mut at = 0;
    catch_unwind(AssertUnwindSafe(|| {
        for bytes in items {
            let arg = plain::take::<A>(bytes).expect("a plain type, and a whole item");
            let value = target(arg);
            plain::put(&value, out);
            at += 1;
        }
    }))
    .map_err(|p| (at, CallError::Panicked(panic_message(&*p))))?;
    if tail != 0 {
        return Err((
            whole,
            CallError::Decode {
                type_name: std::any::type_name::<A>().into(),
                reason: format!("a run of plain items ends with {tail} bytes of a part of one"),
            },
        ));
    }
    Ok(())
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
        .map(|calls| Target { calls })
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
        (self.calls.invoke)(Args::Frame(args), out)
    }

    /// [`call`](Self::call) with an argument encoded in `args`, which owns no descriptors
    /// (one that refers to some fails to decode): for many small arguments back to back.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    #[inline]
    pub fn call_bytes(&self, args: &[u8], out: &mut Frame) -> Result<(), CallError> {
        (self.calls.invoke)(Args::Bytes(args), out)
    }

    /// The sizes of the target's argument and result, if both types are
    /// [plain](mp_codec::plain): then [`call_plain`](Self::call_plain) runs it over runs of
    /// their bytes.
    pub fn plain_sizes(&self) -> Option<(usize, usize)> {
        self.calls.plain.map(|p| (p.arg, p.result))
    }

    /// Runs the target over each argument of `args`, a run of plain values (their bytes
    /// back to back, as [`mp_codec::plain::put`] writes them), appending each result's bytes
    /// to `out`: one call for a whole chunk of numbers, with none of the per-value encoding
    /// of [`call_bytes`](Self::call_bytes).
    ///
    /// ```
    /// use multiprocessing::process::TargetId;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let target = TargetId::of(&square)?.resolve()?;
    /// assert_eq!(target.plain_sizes(), Some((8, 8)));
    /// let mut args = Vec::new();
    /// for x in [2u64, 3] {
    ///     multiprocessing::codec::plain::put(&x, &mut args);
    /// }
    /// let mut out = Vec::new();
    /// target.call_plain(&args, &mut out).unwrap();
    /// assert_eq!(out, [4u64.to_ne_bytes(), 9u64.to_ne_bytes()].concat());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The index of the first argument whose call panicked, with the panic's message (the
    /// results of those before it are in `out`: call again past it to go on); the index of
    /// the end of the whole arguments if `args` ends with part of one; index 0 and
    /// [`CallError::WrongTypes`] if the target's types are not plain.
    pub fn call_plain(&self, args: &[u8], out: &mut Vec<u8>) -> Result<(), (usize, CallError)> {
        match self.calls.plain {
            Some(plain) => (plain.run)(args, out),
            None => Err((0, CallError::WrongTypes)),
        }
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

    fn run(bytes: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for x in bytes {
            plain::put(x, &mut out);
        }
        out
    }

    fn halve_odd_panics(x: u32) -> f64 {
        assert!(x.is_multiple_of(2), "odd {x}");
        f64::from(x) / 2.0
    }

    #[test]
    fn a_run_of_plain_arguments_is_called_item_by_item() {
        let target = TargetId::of(&square).unwrap().resolve().unwrap();
        assert_eq!(target.plain_sizes(), Some((8, 8)));
        let mut out = Vec::new();
        target.call_plain(&run(&[1, 2, 3]), &mut out).unwrap();
        assert_eq!(out, run(&[1, 4, 9]));
        // An empty run is an empty result.
        out.clear();
        target.call_plain(&[], &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_panic_in_a_run_names_its_item_and_the_rest_runs_after_it() {
        let target = TargetId::of(&halve_odd_panics).unwrap().resolve().unwrap();
        assert_eq!(target.plain_sizes(), Some((4, 8)));
        let mut args = Vec::new();
        for x in [2u32, 4, 5, 6] {
            plain::put(&x, &mut args);
        }
        let mut out = Vec::new();
        let (at, why) = target.call_plain(&args, &mut out).unwrap_err();
        assert_eq!(at, 2);
        assert_eq!(why, CallError::Panicked("odd 5".into()));
        assert_eq!(out, [1.0f64.to_ne_bytes(), 2.0f64.to_ne_bytes()].concat());
        target.call_plain(&args[(at + 1) * 4..], &mut out).unwrap();
        assert_eq!(out.len(), 3 * 8);
        assert_eq!(plain::take::<f64>(&out[16..]), Some(3.0));
    }

    #[test]
    fn a_run_ending_in_part_of_an_item_is_a_decode_error_after_the_whole_ones() {
        let target = TargetId::of(&square).unwrap().resolve().unwrap();
        let mut args = run(&[5, 6]);
        args.extend_from_slice(&[1, 2, 3]);
        let mut out = Vec::new();
        let (at, why) = target.call_plain(&args, &mut out).unwrap_err();
        assert_eq!(at, 2);
        assert!(matches!(why, CallError::Decode { .. }), "{why:?}");
        assert_eq!(out, run(&[25, 36]));
    }

    #[test]
    fn a_target_of_other_types_takes_no_run() {
        let target = TargetId::of(&|s: String| s.len() as u64)
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(target.plain_sizes(), None);
        let mut out = Vec::new();
        assert_eq!(
            target.call_plain(&[0; 8], &mut out),
            Err((0, CallError::WrongTypes))
        );
        assert!(out.is_empty());
        // bool has bytes that are no value: not plain.
        let target = TargetId::of(&|x: u8| x > 1).unwrap().resolve().unwrap();
        assert_eq!(target.plain_sizes(), None);
    }
}
