//! The integration tests of the facade: one binary (one link on 2 cores), a module per area.

// Messages with descriptors crossing into another process.
mod codec;
