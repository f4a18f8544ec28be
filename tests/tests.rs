//! The integration tests of the facade: one binary (one link on 2 cores), a module per area.

// Shared helpers: children with deadlines, paths of examples and Python peers.
mod support;

// Messages with descriptors crossing into another process.
mod codec;
// Interop with CPython's multiprocessing.connection, both directions, both handshakes.
mod connection;
// Ring-backed pipes between processes: kills mid-send, EOF and EPIPE.
mod pipe;
// Pools through the facade; the documentation's pool program.
mod pool;
// Processes with pipes, and the documentation's example programs.
mod process;
// Queues between processes; the documentation's queue program.
mod queue;
// Shared values, arrays and named blocks across processes; nothing survives SIGKILL.
mod shm;
// Locks, conditions, events and barriers across processes; owner death.
mod sync;
