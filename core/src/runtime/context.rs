//! What a handler may know besides its event: the message, the attempt, shared state.

use crate::delivery::Origin;
use crate::error::{Error, Result};
use crate::message::{Headers, Message};
use crate::publisher::Publisher;
use crate::runtime::HandlerSpec;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The destination and scope of a [`Context::detached`].
const DETACHED: &str = "detached";

/// Values shared with every handler of an [`App`](crate::App), looked up by type.
#[derive(Clone, Default)]
pub(crate) struct Extensions(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl Extensions {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

/// What the runtime shares with every call of one handler of an app.
#[derive(Clone, Default)]
pub(crate) struct Shared {
    pub(crate) publisher: Option<Publisher>,
    pub(crate) extensions: Extensions,
    /// The app's state ([`App::state`](crate::App::state)), read by [`State`](crate::State).
    pub(crate) state: Option<Arc<dyn Any + Send + Sync>>,
    /// The handler called, and the scope its message ids are recorded under.
    pub(crate) binding: Option<(HandlerSpec, Arc<str>)>,
}

/// The second, optional argument of a handler: the message behind the event, which attempt
/// this is, a [`Publisher`] and the app's shared values.
///
/// In a unit test, make one with [`Context::detached`]:
///
/// ```
/// use event_binder_core::{Context, Message};
///
/// struct Tax(u32);
/// let ctx = Context::detached(Message::new("{}").with_key("customer-7")).with_extension(Tax(20));
/// assert_eq!(ctx.key(), Some("customer-7"));
/// assert_eq!(ctx.attempt(), 1);
/// assert_eq!(ctx.extension::<Tax>().map(|t| t.0), Some(20));
/// assert!(ctx.publisher().is_err());
/// ```
#[derive(Clone)]
pub struct Context {
    message: Arc<Message>,
    attempt: u32,
    origin: Arc<Origin>,
    shared: Arc<Shared>,
}

impl Context {
    pub(crate) fn new(
        message: Arc<Message>,
        attempt: u32,
        origin: Arc<Origin>,
        shared: Arc<Shared>,
    ) -> Self {
        Context {
            message,
            attempt,
            origin,
            shared,
        }
    }

    /// A context for calling a handler directly, as a unit test does: attempt 1, destination
    /// `detached`, no publisher, no shared values (add them with
    /// [`with_extension`](Self::with_extension)).
    pub fn detached(message: Message) -> Self {
        Context::new(
            Arc::new(message),
            1,
            Origin::new(DETACHED, None),
            Arc::default(),
        )
    }

    /// Gives the context an app state, as [`App::state`](crate::App::state) does, for the
    /// [`State`](crate::State) argument of a handler called directly.
    ///
    /// ```
    /// use event_binder_core::{Context, FromContext, Message, State};
    ///
    /// let ctx = Context::detached(Message::new("{}")).with_state(42u32);
    /// assert_eq!(State::<u32>::from_context(&ctx).0, 42);
    /// ```
    pub fn with_state<S: Send + Sync + 'static>(mut self, state: S) -> Self {
        Arc::make_mut(&mut self.shared).state = Some(Arc::new(state));
        self
    }

    /// The app's state, if it is an `S`. A handler takes it as a [`State<S>`](crate::State)
    /// argument, which the compiler checks against the app.
    pub fn state<S: Send + Sync + 'static>(&self) -> Option<&S> {
        self.shared.state.as_deref()?.downcast_ref()
    }

    /// Adds a shared value, as [`App::extension`](crate::App::extension) does.
    pub fn with_extension<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.shared).extensions.insert(value);
        self
    }

    /// The message the event was decoded from.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message id.
    pub fn id(&self) -> &str {
        self.message.id()
    }

    /// The message headers.
    pub fn headers(&self) -> &Headers {
        self.message.headers()
    }

    /// The message key, if any.
    pub fn key(&self) -> Option<&str> {
        self.message.key()
    }

    /// Which call of the handler for this message this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The destination the message came from.
    pub fn destination(&self) -> &str {
        &self.origin.destination
    }

    /// The group handling it, `None` for an anonymous subscription.
    pub fn group(&self) -> Option<&str> {
        self.origin.group.as_deref()
    }

    /// A value shared through [`App::extension`](crate::App::extension).
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.shared.extensions.get()
    }

    /// The spec of the handler called: its name, destination, group and output. `None`
    /// for a [`detached`](Self::detached) context.
    pub fn handler(&self) -> Option<&HandlerSpec> {
        self.shared.binding.as_ref().map(|(spec, _)| spec)
    }

    /// The scope the runtime records this handler's message ids under in its
    /// [`IdempotencyStore`](crate::IdempotencyStore) (`destination/group/handler`), for a
    /// layer that records them itself, as a transactional inbox does. `None` for a
    /// [`detached`](Self::detached) context.
    pub fn idempotency_scope(&self) -> Option<&str> {
        self.shared.binding.as_ref().map(|(_, scope)| &**scope)
    }

    /// Output `index` (from 0) of a processor for this context's message, as the runtime
    /// publishes it: its id derived from the input's and the handler's scope (the same on
    /// every attempt), the input's key unless it has its own, the input's id as its
    /// causation. For a layer that publishes a processor's outputs itself, as a
    /// transactional outbox does.
    ///
    /// ```
    /// use event_binder_core::{Context, Message};
    ///
    /// let ctx = Context::detached(Message::new("{}").with_key("customer-7"));
    /// let first = ctx.derive_output(0, Message::new("{\"ok\":true}"));
    /// assert_eq!(first.key(), Some("customer-7"));
    /// assert_eq!(first.id(), ctx.derive_output(0, Message::new("{}")).id());
    /// ```
    pub fn derive_output(&self, index: usize, output: Message) -> Message {
        let scope = self.idempotency_scope().unwrap_or(DETACHED);
        super::app::derive_output(scope, &self.message, index, output)
    }

    /// The app's publisher, to send further events. A detached context has none.
    pub fn publisher(&self) -> Result<&Publisher> {
        self.shared.publisher.as_ref().ok_or_else(|| {
            Error::Unsupported(
                "a detached Context has no publisher; run the handler in an App".into(),
            )
        })
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.message.id())
            .field("attempt", &self.attempt)
            .field("destination", &self.origin.destination)
            .field("group", &self.origin.group)
            .finish_non_exhaustive()
    }
}
