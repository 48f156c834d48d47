//! Extractors: what a handler takes besides its event, each made from the delivery's
//! [`Context`], as axum's handlers take theirs from a request.

use super::context::Context;
use crate::message::Headers;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

/// A handler argument made from the delivery's [`Context`]: [`Context`] itself,
/// [`MessageId`], [`Key`], [`Attempt`], [`Headers`], or the app's [`State`].
///
/// ```
/// use event_binder_core::{Attempt, Context, Handler, HandlerSpec, Key, MessageId};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order_id: u64 }
///
/// let handler = Handler::from_fn(
///     HandlerSpec::new("audit", "orders").group("audit"),
///     |event: OrderPlaced, id: MessageId, key: Key, attempt: Attempt| async move {
///         println!("order {} ({id}, key {:?}, attempt {})", event.order_id, key.0, attempt.0);
///         Ok::<(), std::io::Error>(())
///     },
/// );
/// # let _ = handler;
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument",
    note = "after the event, a handler takes any of `Context`, `MessageId`, `Key`, `Attempt`, `Headers` and `State<S>`, in any order"
)]
pub trait FromContext: Sized + Send + 'static {
    /// The app state this argument needs: [`NoState`], or [`StateOf<S>`] for [`State<S>`].
    type State;

    /// Makes the argument.
    fn from_context(ctx: &Context) -> Self;
}

impl FromContext for Context {
    type State = NoState;

    fn from_context(ctx: &Context) -> Self {
        ctx.clone()
    }
}

impl FromContext for Headers {
    type State = NoState;

    fn from_context(ctx: &Context) -> Self {
        ctx.headers().clone()
    }
}

/// The id of the message being handled, shared with the message (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId(pub Arc<str>);

impl FromContext for MessageId {
    type State = NoState;

    fn from_context(ctx: &Context) -> Self {
        MessageId(ctx.message().shared_id().clone())
    }
}

impl Deref for MessageId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of the message being handled, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(pub Option<String>);

impl FromContext for Key {
    type State = NoState;

    fn from_context(ctx: &Context) -> Self {
        Key(ctx.key().map(str::to_owned))
    }
}

/// Which call of the handler for this message this is (1 for the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt(pub u32);

impl FromContext for Attempt {
    type State = NoState;

    fn from_context(ctx: &Context) -> Self {
        Attempt(ctx.attempt())
    }
}

/// The app's state, given with [`App::state`](crate::App::state): a database pool, a
/// client, configuration. A handler taking `State<S>` can only be registered in an app
/// whose state is an `S`: a missing value is a compile error, not an `Option` at run time.
///
/// ```
/// use event_binder_core::{App, Context, Handler, HandlerSpec, State};
///
/// #[derive(Clone)]
/// struct Inventory { warehouse: &'static str }
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order_id: u64 }
///
/// # fn demo(channel: impl event_binder_core::Channel) {
/// let app = App::new(channel)
///     .state(Inventory { warehouse: "north" })
///     .handler(Handler::from_fn(
///         HandlerSpec::new("reserve", "orders").group("inventory"),
///         |event: OrderPlaced, State(inventory): State<Inventory>| async move {
///             println!("reserving order {} in {}", event.order_id, inventory.warehouse);
///             Ok::<(), std::io::Error>(())
///         },
///     ));
/// # let _ = app; }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State<S>(pub S);

impl<S: Clone + Send + Sync + 'static> FromContext for State<S> {
    type State = StateOf<S>;

    /// # Panics
    ///
    /// When the context has no state of this type: never in an [`App`](crate::App), whose
    /// types rule that out; a [`Context::detached`] one gets it with
    /// [`Context::with_state`].
    fn from_context(ctx: &Context) -> Self {
        match ctx.state::<S>() {
            Some(state) => State(state.clone()),
            None => panic!(
                "the context has no state of type {}; give it with Context::with_state",
                std::any::type_name::<S>()
            ),
        }
    }
}

/// An argument, or arguments, that need no app state.
#[derive(Debug)]
pub enum NoState {}

/// Arguments that need the app's state to be an `S`.
pub struct StateOf<S>(PhantomData<fn() -> S>);

impl<S> fmt::Debug for StateOf<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateOf<{}>", std::any::type_name::<S>())
    }
}

/// What two arguments need together: no state, or the one state type both name.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a handler's arguments need two different app states",
    note = "an app has one state type; put what the handler needs into it and take `State<AppState>` once"
)]
pub trait Merge<Other> {
    /// The state both need.
    type Out;
}

impl<T> Merge<T> for NoState {
    type Out = T;
}

impl<S> Merge<NoState> for StateOf<S> {
    type Out = StateOf<S>;
}

impl<S> Merge<StateOf<S>> for StateOf<S> {
    type Out = StateOf<S>;
}

/// Whether an app whose state is an `AppState` gives what a handler needs.
#[diagnostic::on_unimplemented(
    message = "this handler needs an app state the app does not have",
    note = "a handler taking `State<S>` is registered in an `App` given its state with `.state(value_of_S)` first"
)]
pub trait ProvidedBy<AppState> {}

impl<A> ProvidedBy<A> for NoState {}

impl<A> ProvidedBy<A> for StateOf<A> {}

/// The arguments of a handler after its event, as a tuple of [`FromContext`] types.
#[doc(hidden)]
pub trait Extractors: Sized + Send + 'static {
    /// What they need together.
    type State;

    /// Makes them.
    fn extract(ctx: &Context) -> Self;
}

impl Extractors for () {
    type State = NoState;

    fn extract(_: &Context) -> Self {}
}

macro_rules! extractors {
    ($first:ident $(, $rest:ident)*) => {
        impl<$first: FromContext $(, $rest: FromContext)*> Extractors for ($first, $($rest,)*)
        where
            ($($rest,)*): Extractors,
            $first::State: Merge<<($($rest,)*) as Extractors>::State>,
        {
            type State = <$first::State as Merge<<($($rest,)*) as Extractors>::State>>::Out;

            fn extract(ctx: &Context) -> Self {
                ($first::from_context(ctx), $($rest::from_context(ctx),)*)
            }
        }
    };
}

extractors!(A1);
extractors!(A1, A2);
extractors!(A1, A2, A3);
extractors!(A1, A2, A3, A4);
extractors!(A1, A2, A3, A4, A5);
extractors!(A1, A2, A3, A4, A5, A6);
