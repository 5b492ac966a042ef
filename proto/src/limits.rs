//! Sizes the node and its callers agree on.

/// Largest gRPC message either side sends or accepts (snapshot chunks,
/// status of many groups), and the largest mux frame.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Writes one client session may have in flight at once (the state machine
/// keeps at most this many answers per session).
pub const MAX_IN_FLIGHT: u64 = 256;

/// Largest KV key, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

/// Largest KV value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
