#![deny(warnings)]

use event_binder::{handler, App, Attempt, Channel, Context, Headers, Key, MessageId, State};
use std::sync::Arc;

#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

/// The app's state.
#[derive(Clone)]
pub struct Inventory {
    pub warehouse: Arc<str>,
}

/// Every extractor, in another order than the runtime's, with a pattern for the state.
#[handler(destination = "orders", group = "inventory")]
pub async fn reserve(
    event: OrderPlaced,
    attempt: Attempt,
    State(Inventory { warehouse }): State<Inventory>,
    id: MessageId,
    _headers: Headers,
    Key(key): Key,
    ctx: Context,
) -> Result<(), std::io::Error> {
    println!(
        "order {} in {warehouse}: {id} (key {key:?}), attempt {} of {}",
        event.order_id,
        attempt.0,
        ctx.attempt()
    );
    Ok(())
}

/// A processor taking the state only.
#[handler(destination = "orders", output = "reservations")]
pub async fn locate(
    event: OrderPlaced,
    inventory: State<Inventory>,
) -> Result<String, std::io::Error> {
    Ok(format!("{} at {}", event.order_id, inventory.0.warehouse))
}

/// Extractors that need no state register in an app without one.
#[handler(destination = "orders")]
pub async fn trace(_event: OrderPlaced, id: MessageId, Attempt(n): Attempt) -> Result<(), String> {
    println!("{id}: {n}");
    Ok(())
}

pub fn register(channel: impl Channel) {
    let _app = App::new(channel)
        .state(Inventory {
            warehouse: "north".into(),
        })
        .handler(reserve)
        .handler(locate)
        .handler(trace);
}

pub fn without_state<C: Channel>(channel: C) -> App<C> {
    App::new(channel).handler(trace)
}

fn main() {
    let _ = event_binder::IntoHandler::into_handler(reserve);
}
