//! What a handler cannot be, refused with advice that points at the user's tokens.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{
    AngleBracketedGenericArguments, FnArg, GenericArgument, PatType, PathArguments, ReturnType,
    Signature, Type, TypePath,
};

/// How many arguments a handler takes after its event: as many as the runtime implements
/// `IntoHandler` for.
pub(crate) const MAX_EXTRACTORS: usize = 6;

pub(crate) const ARGUMENTS_ADVICE: &str = "a handler takes its event, then up to 6 of \
     `Context`, `MessageId`, `Key`, `Attempt`, `Headers` and `State<S>`, in any order";
pub(crate) const RETURN_ADVICE: &str =
    "a handler returns `Result<(), E>`, or `Result<Event, E>` with `output = \"…\"`";

pub(crate) const BATCH_ARGUMENTS_ADVICE: &str = "a batch handler takes its events as \
     `Vec<T>`, then optionally `Batch`, the context of each event in the same order, and \
     nothing else";
pub(crate) const BATCH_RETURN_ADVICE: &str = "a batch handler publishes nothing: it returns \
     `Result<(), E>`; to fail only some of its events, return a `BatchFailure` naming them";

/// What the function is made into: a handler of one event at a time, or (with `batch`) of
/// many.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `(event: T, extractors…)`.
    Single,
    /// `(events: Vec<T>)` or `(events: Vec<T>, batch: Batch)`.
    Batch,
}

/// Checks that the function is a free, non-generic `async fn` of its event and up to
/// [`MAX_EXTRACTORS`] further owned arguments (a batch handler: a `Vec` of its events, and
/// maybe one more), with a return type. Types are checked by the compiler, against the
/// generated code.
pub(crate) fn check(sig: &Signature, shape: Shape) -> syn::Result<()> {
    check_qualifiers(sig)?;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let tokens = if sig.generics.params.is_empty() {
            sig.generics.where_clause.to_token_stream()
        } else {
            sig.generics.to_token_stream()
        };
        return Err(syn::Error::new_spanned(
            tokens,
            "#[handler] cannot be generic: the runtime must know the event type to decode; \
             write one handler per event type (they may call a shared generic function)",
        ));
    }
    check_arguments(sig, shape)?;
    if shape == Shape::Batch {
        check_batch_arguments(sig)?;
    }
    if let ReturnType::Default = sig.output {
        let advice = match shape {
            Shape::Single => RETURN_ADVICE,
            Shape::Batch => BATCH_RETURN_ADVICE,
        };
        return Err(syn::Error::new(
            sig.paren_token.span.close(),
            format!("#[handler] needs a return type: {advice}"),
        ));
    }
    Ok(())
}

/// The element type of a `Vec<T>` as written (`Vec<T>`, `std::vec::Vec<T>`), or `None`.
pub(crate) fn vec_element(ty: &Type) -> Option<&Type> {
    single_argument(ty, "Vec", true)
}

/// What a processor returning `ret` publishes, as written: `T` of `Result<T, E>` (any path
/// ending in `Result`: `io::Result<T>` too), or of `Result<Option<T>, E>` and
/// `Result<Events<T>, E>`, whose events are published one by one. `None` when the return
/// type is not written so, or publishes nothing (`()`).
pub(crate) fn published_type(ret: &Type) -> Option<&Type> {
    let ok = single_argument(ret, "Result", false)?;
    let published = single_argument(ok, "Option", true)
        .or_else(|| single_argument(ok, "Events", true))
        .unwrap_or(ok);
    match published {
        Type::Tuple(tuple) if tuple.elems.is_empty() => None,
        published => Some(published),
    }
}

/// The first type argument of `ty` when its path ends in `name` (and it has just one, if
/// `only`).
fn single_argument<'a>(ty: &'a Type, name: &str, only: bool) -> Option<&'a Type> {
    match ty {
        Type::Group(group) => single_argument(&group.elem, name, only),
        Type::Paren(paren) => single_argument(&paren.elem, name, only),
        Type::Path(TypePath { qself: None, path }) => {
            let last = path.segments.last()?;
            let PathArguments::AngleBracketed(AngleBracketedGenericArguments { args, .. }) =
                &last.arguments
            else {
                return None;
            };
            if last.ident != name || (only && args.len() != 1) {
                return None;
            }
            match args.first() {
                Some(GenericArgument::Type(first)) => Some(first),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A type as a user writes it, for messages: `std::collections::VecDeque<Order>`, not the
/// printer's `std :: collections :: VecDeque < Order >`.
fn type_written(ty: &Type) -> String {
    let printed = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(printed.len());
    for word in printed.split(' ').filter(|word| !word.is_empty()) {
        let glued_after = out.ends_with([':', '<', '&', '(', '[']);
        let glued_before = word.starts_with([':', '<', '>', ',', ';', ')', ']']);
        if !out.is_empty() && !glued_after && !glued_before {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The event type that `ty`, not a `Vec`, likely meant: the element of an array, a slice or
/// another collection of one type (`VecDeque<T>`), or else the type itself.
fn likely_element(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => likely_element(&group.elem),
        Type::Paren(paren) => likely_element(&paren.elem),
        Type::Array(array) => &array.elem,
        Type::Slice(slice) => &slice.elem,
        Type::Path(TypePath { qself: None, path }) => {
            let arguments = path.segments.last().map(|last| &last.arguments);
            match arguments {
                Some(PathArguments::AngleBracketed(AngleBracketedGenericArguments {
                    args,
                    ..
                })) if args.len() == 1 => match args.first() {
                    Some(GenericArgument::Type(element)) => element,
                    _ => ty,
                },
                _ => ty,
            }
        }
        _ => ty,
    }
}

/// A batch handler's events are a `Vec` (the type of its second argument, if any, is the
/// compiler's to check: `Batch`).
fn check_batch_arguments(sig: &Signature) -> syn::Result<()> {
    let events = sig.inputs.first().and_then(|input| match input {
        FnArg::Typed(PatType { ty, .. }) => Some(&**ty),
        FnArg::Receiver(_) => None,
    });
    match events {
        Some(events) if vec_element(events).is_none() => {
            let written = type_written(events);
            let element = type_written(likely_element(events));
            Err(syn::Error::new_spanned(
                events,
                format!(
                    "with `batch`, a handler takes its events as a `Vec`, not `{written}`: \
                     write `Vec<{element}>`; {BATCH_ARGUMENTS_ADVICE}"
                ),
            ))
        }
        _ => Ok(()),
    }
}

fn check_qualifiers(sig: &Signature) -> syn::Result<()> {
    if let Some(constness) = &sig.constness {
        return Err(syn::Error::new_spanned(
            constness,
            "#[handler] cannot be a `const fn`: write a plain `async fn`",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "#[handler] cannot be an `unsafe fn`: the runtime calls it for every message; \
             write a safe `async fn` and keep any `unsafe` block inside it",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "#[handler] cannot be an `extern fn`: write a plain Rust `async fn`",
        ));
    }
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "#[handler] needs an `async fn`: write `async fn` here",
        ));
    }
    Ok(())
}

fn check_arguments(sig: &Signature, shape: Shape) -> syn::Result<()> {
    let advice = match shape {
        Shape::Single => ARGUMENTS_ADVICE,
        Shape::Batch => BATCH_ARGUMENTS_ADVICE,
    };
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(variadic, advice));
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new_spanned(
                    receiver,
                    format!(
                        "#[handler] cannot take `self`: write a free function, and share values \
                         through `App::state` and a `State<S>` argument; {advice}"
                    ),
                ));
            }
            FnArg::Typed(PatType { ty, .. }) => match &**ty {
                Type::Reference(reference) => {
                    return Err(syn::Error::new_spanned(
                        reference,
                        format!(
                            "a handler owns its arguments, so it cannot borrow them: \
                             write the type without `&`; {advice}"
                        ),
                    ));
                }
                Type::ImplTrait(impl_trait) => {
                    return Err(syn::Error::new_spanned(
                        impl_trait,
                        "#[handler] cannot be generic, and an `impl Trait` argument makes it so: \
                         the runtime must know each argument's type; name the type",
                    ));
                }
                _ => {}
            },
        }
    }
    let count = sig.inputs.len();
    let extra = |skip: usize| -> TokenStream {
        sig.inputs
            .iter()
            .skip(skip)
            .map(ToTokens::to_token_stream)
            .collect()
    };
    match (shape, count) {
        (Shape::Single, 0) => Err(syn::Error::new(
            sig.paren_token.span.join(),
            format!("#[handler] needs the event to handle: {ARGUMENTS_ADVICE}"),
        )),
        (Shape::Batch, 0) => Err(syn::Error::new(
            sig.paren_token.span.join(),
            format!("#[handler] with `batch` needs the events to handle: {BATCH_ARGUMENTS_ADVICE}"),
        )),
        (Shape::Batch, 1 | 2) => Ok(()),
        (Shape::Batch, _) => Err(syn::Error::new_spanned(
            extra(2),
            format!(
                "a batch handler takes at most 2 arguments, its events and a `Batch`, not \
                 {count}: each event's id, key, attempt and headers are in the `Context`s of \
                 `batch.contexts()`, in the order of the events"
            ),
        )),
        (Shape::Single, count) if count <= 1 + MAX_EXTRACTORS => Ok(()),
        (Shape::Single, count) => Err(syn::Error::new_spanned(
            extra(1 + MAX_EXTRACTORS),
            format!(
                "#[handler] takes at most {} arguments, the event and {MAX_EXTRACTORS} \
                     more, not {count}: take `Context` alone to read the message's id, key, \
                     attempt and headers from it, and put shared values together in one app \
                     state, taken as `State<S>`",
                1 + MAX_EXTRACTORS
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(signature: &str) -> String {
        let sig: Signature = syn::parse_str(signature).unwrap();
        check(&sig, Shape::Single).unwrap_err().to_string()
    }

    fn batch_error(signature: &str) -> String {
        let sig: Signature = syn::parse_str(signature).unwrap();
        check(&sig, Shape::Batch).unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_event_and_up_to_six_owned_arguments() {
        for ok in [
            "async fn bill(event: Order) -> Result<(), E>",
            "async fn bill(mut event: Order, ctx: Context) -> Result<Invoice, E>",
            "async fn bill((a, b): (u32, u32), _: Context) -> io::Result<()>",
            "async fn bill(event: Order, State(db): State<Db>, id: MessageId) -> Result<(), E>",
            // Types are the compiler's to check: any owned type passes the macro.
            "async fn bill(event: Order, count: u32) -> Result<(), E>",
            "async fn bill(e: O, a: A, b: B, c: C, d: D, f: F, g: G) -> Result<(), E>",
        ] {
            let sig: Signature = syn::parse_str(ok).unwrap();
            assert!(check(&sig, Shape::Single).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_batch_handler_takes_a_vec_of_events_and_maybe_its_batch() {
        for ok in [
            "async fn reserve(events: Vec<Order>) -> Result<(), E>",
            "async fn reserve(events: std::vec::Vec<Order>, batch: Batch) -> Result<(), E>",
            "async fn reserve(mut events: Vec<(u32, u32)>, _: Batch) -> Result<(), E>",
            // The second argument's type is the compiler's to check.
            "async fn reserve(events: Vec<Order>, ctx: Context) -> Result<(), E>",
        ] {
            let sig: Signature = syn::parse_str(ok).unwrap();
            assert!(check(&sig, Shape::Batch).is_ok(), "{ok}");
        }
        for (signature, expected) in [
            (
                "async fn reserve(event: Order) -> R",
                "takes its events as a `Vec`, not `Order`: write `Vec<Order>`",
            ),
            (
                "async fn reserve(events: [Order; 3]) -> R",
                "write `Vec<Order>`",
            ),
            (
                "async fn reserve(events: std::collections::VecDeque<Order>) -> R",
                "not `std::collections::VecDeque<Order>`: write `Vec<Order>`",
            ),
            (
                "async fn reserve(events: [(u32, &'static str); 3]) -> R",
                "not `[(u32, &'static str); 3]`: write `Vec<(u32, &'static str)>`",
            ),
            ("async fn reserve(events: Vec<A, B>) -> R", "as a `Vec`"),
            ("async fn reserve() -> R", "needs the events to handle"),
            (
                "async fn reserve(e: Vec<O>, b: Batch, c: Context) -> R",
                "at most 2 arguments, its events and a `Batch`, not 3",
            ),
            ("async fn reserve(e: &Vec<O>) -> R", "cannot borrow"),
            ("async fn reserve(e: Vec<O>)", "returns `Result<(), E>`"),
        ] {
            let message = batch_error(signature);
            assert!(message.contains(expected), "{signature}: {message}");
        }
    }

    #[test]
    fn a_processor_publishes_the_ok_type_or_its_elements() {
        for (ret, expected) in [
            ("Result<Invoice, E>", Some("Invoice")),
            ("std::io::Result<Invoice>", Some("Invoice")),
            ("Result<Option<Invoice>, E>", Some("Invoice")),
            ("Result<event_binder::Events<Invoice>, E>", Some("Invoice")),
            ("Result<Vec<Invoice>, E>", Some("Vec < Invoice >")),
            ("Result<(), E>", None),
            ("MyResult", None),
            ("impl Future", None),
        ] {
            let ty: Type = syn::parse_str(ret).unwrap();
            let published = published_type(&ty).map(|ty| ty.to_token_stream().to_string());
            assert_eq!(published.as_deref(), expected, "{ret}");
        }
    }

    #[test]
    fn the_advice_names_the_limit() {
        assert!(ARGUMENTS_ADVICE.contains(&format!("up to {MAX_EXTRACTORS} of")));
    }

    #[test]
    fn refuses_each_mistake_with_its_advice() {
        for (signature, expected) in [
            ("fn bill(e: O) -> R", "needs an `async fn`"),
            ("const fn bill(e: O) -> R", "`const fn`"),
            ("async unsafe fn bill(e: O) -> R", "`unsafe fn`"),
            ("async extern \"C\" fn bill(e: O) -> R", "`extern fn`"),
            ("async fn bill<T>(e: T) -> R", "cannot be generic"),
            (
                "async fn bill(e: O) -> R where O: Clone",
                "cannot be generic",
            ),
            ("async fn bill() -> R", "needs the event"),
            (
                "async fn bill(e: O, a: A, b: B, c: C, d: D, f: F, g: G, h: H) -> R",
                "at most 7 arguments, the event and 6 more, not 8",
            ),
            (
                "async fn bill(e: O, c: impl Clone) -> R",
                "`impl Trait` argument",
            ),
            ("async fn bill(e: O, c: &Context) -> R", "cannot borrow"),
            ("async fn bill(&self, e: O) -> R", "cannot take `self`"),
            ("async fn bill(e: &O) -> R", "cannot borrow"),
            ("async fn bill(e: O)", "needs a return type"),
        ] {
            let message = error(signature);
            assert!(message.contains(expected), "{signature}: {message}");
        }
    }
}
