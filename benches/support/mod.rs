//! The event `memory_throughput` carries: about 100 bytes of JSON. (`memory_cost` carries
//! issue #11's fixed two-integer body instead, so its figures compare with the peer's.)

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: u64,
    pub(crate) customer: String,
    pub(crate) sku: String,
    pub(crate) quantity: u32,
    pub(crate) total_cents: u64,
}

/// The encoded event for one order id; the same bytes for the same id in every loop.
pub(crate) fn payload(order_id: u64) -> bytes::Bytes {
    let event = OrderPlaced {
        order_id,
        customer: format!("customer-{:06}", order_id % 100_000),
        sku: "SKU-0001-BLUE".to_owned(),
        quantity: 3,
        total_cents: 12_345,
    };
    serde_json::to_vec(&event).expect("encode").into()
}
