//! The event `memory_throughput` carries: issue #11's fixed two-integer JSON body, decoded
//! into a struct without strings, the same bytes and struct `memory_cost` defines for itself.

use serde::Deserialize;
use std::hint::black_box;

/// The body of every message, issue #11's: the same bytes each time.
pub(crate) const PAYLOAD: &[u8] = br#"{"id":1000000,"quantity":37}"#;

/// What every loop decodes `PAYLOAD` into: no strings, so serde allocates nothing.
#[derive(Debug, Deserialize)]
pub(crate) struct Order {
    id: u64,
    quantity: u32,
}

impl Order {
    /// Hands both fields to `black_box`, so the optimiser can drop neither the decode nor a
    /// field of it.
    pub(crate) fn consume(self) {
        black_box((self.id, self.quantity));
    }
}

/// `PAYLOAD` as static bytes: a clone is a copy of the handle, with no reference count to
/// touch, so every loop hands the body over for nothing.
pub(crate) fn payload() -> bytes::Bytes {
    bytes::Bytes::from_static(PAYLOAD)
}
