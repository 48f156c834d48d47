//! The code `#[handler]` generates: a route type carrying the spec, and the function,
//! unchanged to its callers, returning its body's future tagged with that route.

use crate::args::Args;
use crate::signature::{self, Shape, BATCH_ARGUMENTS_ADVICE, BATCH_RETURN_ADVICE, RETURN_ADVICE};
use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Ident, ItemFn, Pat, PatIdent, PatType, ReturnType, Type};

/// The whole expansion, or the first mistake found.
pub(crate) fn expand(args: &TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let function: ItemFn = syn::parse2(item).map_err(|error| {
        syn::Error::new(
            error.span(),
            format!("#[handler] goes on an `async fn`: {error}"),
        )
    })?;
    let args = Args::parse(args)?;
    let shape = if args.batch.is_some() {
        Shape::Batch
    } else {
        Shape::Single
    };
    signature::check(&function.sig, shape)?;

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let krate = &args.krate;
    let ident = &sig.ident;
    let ReturnType::Type(arrow, ret) = &sig.output else {
        unreachable!("a missing return type is refused by signature::check");
    };
    let ret_span = ret.span();
    let kind = match (&args.batch, &args.output) {
        (Some((size, _)), _) => quote_spanned!(size.span()=> #krate::BatchSink),
        (None, Some(output)) => quote_spanned!(output.span()=> #krate::Processor),
        (None, None) => quote!(#krate::Sink),
    };

    // `#[cfg]` on the function applies to its route too.
    let cfgs: Vec<&Attribute> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
        .collect();
    let mut spec = spec(&args, ident);
    spec.extend(payload_types(&args, &sig.inputs, ret, shape));
    let (params, bindings) = parameters(&sig.inputs);
    let checks = match shape {
        Shape::Single => checks(&args, &kind, ret, &sig.inputs),
        Shape::Batch => batch_checks(&args, ret, &sig.inputs),
    };
    // The return type, spanned on the user's, so that errors about the future (not `Send`,
    // say) point there.
    let returned = respan(
        quote! {
            #krate::__private::Routed<
                #ident,
                impl ::core::future::Future<Output = #ret> + ::core::marker::Send,
            >
        },
        ret_span,
    );
    let must_use = (!attrs.iter().any(|attr| attr.path().is_ident("must_use")))
        .then(|| quote!(#[must_use = "the handler does nothing until its future is `.await`ed"]));
    let fn_token = &sig.fn_token;
    let stmts = &block.stmts;
    let body = quote_spanned! {block.brace_token.span.join()=>
        {
            #checks
            #krate::__private::Routed::new(async move {
                #(#bindings)*
                let __event_binder_result: #ret = { #(#stmts)* };
                #[allow(unreachable_code)]
                __event_binder_result
            })
        }
    };

    Ok(quote! {
        // A braced struct lives in the type namespace only: it does not clash with the
        // function of the same name, and names the handler's route in its return type.
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(
            non_camel_case_types,
            dead_code,
            missing_docs,
            missing_debug_implementations,
            unreachable_pub
        )]
        #vis struct #ident {}

        #(#cfgs)*
        impl #krate::__private::Route for #ident {
            type Kind = #kind;
            fn spec() -> #krate::HandlerSpec {
                #spec
            }
        }

        #(#attrs)*
        #must_use
        #vis #fn_token #ident(#(#params),*) #arrow #returned
        #body
    })
}

/// `HandlerSpec::new(concat!(module_path!(), "::bill"), "orders").group("billing")…`
fn spec(args: &Args, ident: &Ident) -> TokenStream {
    let krate = &args.krate;
    let name = format!("::{}", ident.unraw());
    let destination = &args.destination;
    let mut spec = quote! {
        #krate::HandlerSpec::new(::core::concat!(::core::module_path!(), #name), #destination)
    };
    if let Some(group) = &args.group {
        spec.extend(quote!(.group(#group)));
    }
    if let Some(output) = &args.output {
        spec.extend(quote!(.output(#output)));
    }
    if let Some(concurrency) = &args.concurrency {
        spec.extend(quote!(.concurrency(#concurrency)));
    }
    if let Some(max_attempts) = &args.max_attempts {
        spec.extend(quote!(.max_attempts(#max_attempts)));
    }
    // Durations are whole milliseconds, computed from the strings at expansion time.
    if let Some((first, longest)) = &args.backoff {
        spec.extend(quote! {
            .backoff(
                ::core::time::Duration::from_millis(#first),
                ::core::time::Duration::from_millis(#longest),
            )
        });
    }
    if let Some(jitter) = &args.jitter {
        spec.extend(quote!(.jitter(#jitter)));
    }
    if let Some(through_broker) = &args.retry_through_broker {
        spec.extend(quote!(.retry_through_broker(#through_broker)));
    }
    if let Some(timeout) = &args.timeout {
        spec.extend(quote!(.timeout(::core::time::Duration::from_millis(#timeout))));
    }
    if let Some((size, wait)) = &args.batch {
        let wait = wait.as_ref().map_or_else(
            || quote!(#krate::BatchHandler::DEFAULT_WAIT),
            |wait| quote!(::core::time::Duration::from_millis(#wait)),
        );
        spec.extend(quote!(.batch(#size, #wait)));
    }
    spec
}

/// `.payload_type(…)`, and for a processor `.output_payload_type(…)`: the event type (a
/// batch handler's `Vec` element type) and the published type, each with its JSON Schema
/// where it has one (see [`payload_type`]).
fn payload_types<'a>(
    args: &Args,
    inputs: impl IntoIterator<Item = &'a FnArg>,
    ret: &Type,
    shape: Shape,
) -> TokenStream {
    let krate = &args.krate;
    let event = inputs.into_iter().next().and_then(|input| match input {
        FnArg::Typed(PatType { ty, .. }) => match shape {
            Shape::Single => Some(&**ty),
            Shape::Batch => signature::vec_element(ty),
        },
        FnArg::Receiver(_) => None,
    });
    let mut tokens = TokenStream::new();
    if let Some(event) = event {
        let payload = payload_type(krate, event);
        tokens.extend(quote!(.payload_type(#payload)));
    }
    let output = match (shape, &args.output) {
        (Shape::Single, Some(_)) => signature::published_type(ret),
        _ => None,
    };
    if let Some(output) = output {
        let payload = payload_type(krate, output);
        tokens.extend(quote!(.output_payload_type(#payload)));
    }
    tokens
}

/// The `PayloadType` of `ty`, with its JSON Schema when core's feature `asyncapi` is on and
/// `ty` implements `JsonSchema`, by its name alone otherwise: method resolution picks
/// `SchemaOf` on the probe where it is implemented, `NameOf` on a reference to it
/// everywhere. The same tokens whatever the features, so a user's crate never needs to know.
fn payload_type(krate: &syn::Path, ty: &Type) -> TokenStream {
    quote! {{
        #[allow(unused_imports)]
        use #krate::__private::{NameOf as _, SchemaOf as _};
        (&#krate::__private::SchemaProbe::<#ty>(::core::marker::PhantomData)).payload_type()
    }}
}

/// The function's parameters, and the statements that bind them inside the future.
///
/// Simple names stay in the signature (they are what rustdoc shows), `mut` moves inside;
/// patterns are bound inside. Every parameter moves into the future and lives until it
/// completes, as with an `async fn`.
fn parameters<'a>(
    inputs: impl IntoIterator<Item = &'a FnArg>,
) -> (Vec<TokenStream>, Vec<TokenStream>) {
    let mut params = Vec::new();
    let mut bindings = Vec::new();
    for (index, input) in inputs.into_iter().enumerate() {
        let FnArg::Typed(PatType {
            attrs,
            pat,
            colon_token,
            ty,
        }) = input
        else {
            unreachable!("receivers are refused by signature::check");
        };
        if let Pat::Ident(PatIdent {
            attrs: pat_attrs,
            by_ref: None,
            mutability,
            ident: name,
            subpat: None,
        }) = &**pat
        {
            params.push(quote!(#(#attrs)* #(#pat_attrs)* #name #colon_token #ty));
            // An `_event` the body does not use still lives as long as the future.
            bindings.push(quote! {
                #[allow(
                    clippy::redundant_locals,
                    clippy::used_underscore_binding,
                    clippy::no_effect_underscore_binding
                )]
                let #mutability #name = #name;
            });
        } else {
            let name = format_ident!("__event_binder_arg{}", index, span = pat.span());
            params.push(quote!(#(#attrs)* #name #colon_token #ty));
            bindings.push(quote!(let #name = #name; let #pat = #name;));
        }
    }
    (params, bindings)
}

/// Compile-time checks of the signature against the runtime, each spanned on the user's
/// tokens and worded by an `on_unimplemented` (a local trait's, or core's `Decode`,
/// `FromContext` and `Merge`), so that a mistake shows at the function (not only where it
/// is registered) with advice. They cost nothing at run time.
fn checks<'a>(
    args: &Args,
    kind: &TokenStream,
    ret: &Type,
    inputs: impl IntoIterator<Item = &'a FnArg>,
) -> TokenStream {
    let krate = &args.krate;
    let mut inputs = inputs.into_iter().map(|input| match input {
        FnArg::Typed(PatType { ty, .. }) => ty,
        FnArg::Receiver(_) => unreachable!("receivers are refused by signature::check"),
    });
    // The event is decoded from the message: `Decode` says what to derive.
    let event_check = inputs.next().map(|ty| {
        let check = respan(quote!(__event_binder_check_event::<#ty>();), ty.span());
        quote! {
            fn __event_binder_check_event<T>()
            where
                T: #krate::Decode + ::core::marker::Send + 'static,
            {
            }
            #check
        }
    });
    // `Result<O, E>` is taken apart by projection, not inference, so that the error names
    // the type that does not fit the handler's kind.
    let output_check = respan(
        quote!(__event_binder_check_output::<#kind, #ret>();),
        ret.span(),
    );
    // Every further argument is made from the delivery's context (core's `FromContext` says
    // what it can be), and what they need of the app's state must be one type (core's
    // `Merge`), as `App::handler` checks too; here each error points at the argument's type.
    // The tokens of one argument's checks span its type, first to last, so that an error
    // underlines the whole type and the compiler reports it once, not once more for each
    // check that depends on it.
    let argument_check = inputs
        .map(|ty| {
            let (first, last) = outer_spans(ty);
            let call = quote_spanned!(first=> __event_binder_state::<);
            let close = quote_spanned!(last=> >());
            (quote!(#call #ty #close), first, last)
        })
        .reduce(|(states, ..), (state, first, last)| {
            // The new argument's state first: an error blames that argument.
            let call = quote_spanned!(first=> __event_binder_merge);
            let mut arguments = Group::new(Delimiter::Parenthesis, quote!(#state, #states));
            arguments.set_span(last);
            (quote!(#call #arguments), first, last)
        })
        .map(|(states, ..)| {
            quote! {
                fn __event_binder_state<A: #krate::FromContext>(
                ) -> ::core::marker::PhantomData<A::State> {
                    ::core::marker::PhantomData
                }
                fn __event_binder_merge<New: #krate::__private::Merge<Before>, Before>(
                    _: ::core::marker::PhantomData<New>,
                    _: ::core::marker::PhantomData<Before>,
                ) -> ::core::marker::PhantomData<New::Out> {
                    ::core::marker::PhantomData
                }
                #states;
            }
        });
    let result_trait = result_trait(RETURN_ADVICE);
    // In a block of their own, so that their names stay out of the body's scope.
    quote! {{
        #result_trait
        fn __event_binder_check_output<K, R>()
        where
            R: __EventBinderResult,
            K: #krate::OutputPolicy<R::Ok>,
            R::Err: ::core::convert::Into<#krate::BoxError>,
        {
        }
        #output_check
        #event_check
        #argument_check
    }}
}

/// The local trait that takes a `Result` apart, by projection, so that an error names the
/// part that does not fit; `advice` says what the handler returns.
fn result_trait(advice: &str) -> TokenStream {
    quote! {
        #[diagnostic::on_unimplemented(
            message = "a handler returns a `Result`, not `{Self}`",
            label = "not a `Result`",
            note = #advice
        )]
        trait __EventBinderResult {
            type Ok;
            type Err;
        }
        impl<O, E> __EventBinderResult for ::core::result::Result<O, E> {
            type Ok = O;
            type Err = E;
        }
    }
}

/// The compile-time checks of a batch handler: its events' type decodes, its second
/// argument (if any) is `Batch`, and it returns `Result<(), E>`; each spanned on the user's
/// tokens, as [`checks`] are.
fn batch_checks<'a>(
    args: &Args,
    ret: &Type,
    inputs: impl IntoIterator<Item = &'a FnArg>,
) -> TokenStream {
    let krate = &args.krate;
    let mut inputs = inputs.into_iter().map(|input| match input {
        FnArg::Typed(PatType { ty, .. }) => ty,
        FnArg::Receiver(_) => unreachable!("receivers are refused by signature::check"),
    });
    let event_check = inputs
        .next()
        .and_then(|ty| signature::vec_element(ty))
        .map(|element| {
            let check = respan(
                quote!(__event_binder_check_event::<#element>();),
                element.span(),
            );
            quote! {
                fn __event_binder_check_event<T>()
                where
                    T: #krate::Decode + ::core::marker::Send + 'static,
                {
                }
                #check
            }
        });
    let batch_check = inputs.next().map(|ty| {
        let (first, last) = outer_spans(ty);
        let call = quote_spanned!(first=> __event_binder_check_batch::<);
        let close = quote_spanned!(last=> >(););
        quote! {
            #[diagnostic::on_unimplemented(
                message = "a batch handler's second argument is a `Batch`, not `{Self}`",
                label = "not a `Batch`",
                note = #BATCH_ARGUMENTS_ADVICE
            )]
            trait __EventBinderBatch {}
            impl __EventBinderBatch for #krate::Batch {}
            fn __event_binder_check_batch<B: __EventBinderBatch>() {}
            #call #ty #close
        }
    });
    let result_trait = result_trait(BATCH_RETURN_ADVICE);
    let output_check = respan(quote!(__event_binder_check_output::<#ret>();), ret.span());
    quote! {{
        #result_trait
        #[diagnostic::on_unimplemented(
            message = "a batch handler cannot return `{Self}`",
            label = "not `()`",
            note = #BATCH_RETURN_ADVICE
        )]
        trait __EventBinderNothing {}
        impl __EventBinderNothing for () {}
        fn __event_binder_check_output<R>()
        where
            R: __EventBinderResult,
            R::Ok: __EventBinderNothing,
            R::Err: ::core::convert::Into<#krate::BoxError>,
        {
        }
        #output_check
        #event_check
        #batch_check
    }}
}

/// The spans of a type's first and last tokens: code spanned from one to the other is
/// reported as the whole type.
fn outer_spans(ty: &Type) -> (Span, Span) {
    let mut tokens = ty.to_token_stream().into_iter();
    let first = tokens
        .next()
        .map_or_else(|| ty.span(), |token| token.span());
    let last = tokens.last().map_or(first, |token| token.span());
    (first, last)
}

/// The same tokens, all spanned at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                TokenTree::Group(respanned)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(args: &TokenStream, item: TokenStream) -> String {
        expand(args, item).unwrap().to_string()
    }

    #[test]
    fn a_sink_names_its_route_and_spec() {
        let code = expanded(
            &quote!(destination = "orders", group = "billing"),
            quote!(
                pub async fn bill(event: Order, ctx: Context) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let expected_struct = quote!(
            pub struct bill {}
        )
        .to_string();
        assert!(code.contains(&expected_struct), "{code}");
        let expected_kind = quote!(
            type Kind = ::event_binder::Sink;
        )
        .to_string();
        assert!(code.contains(&expected_kind), "{code}");
        let expected_spec = quote!(::event_binder::HandlerSpec::new(
            ::core::concat!(::core::module_path!(), "::bill"),
            "orders"
        )
        .group("billing"))
        .to_string();
        assert!(code.contains(&expected_spec), "{code}");
        let expected_return = quote!(
            -> ::event_binder::__private::Routed<
                bill,
                impl ::core::future::Future<Output = Result<(), E> > + ::core::marker::Send,
            >
        )
        .to_string();
        assert!(code.contains(&expected_return), "{code}");
    }

    #[test]
    fn a_processor_carries_every_option_and_the_crate_path() {
        let code = expanded(
            &quote!(
                destination = "orders",
                output = "invoices",
                concurrency = 8,
                max_attempts = 5,
                crate = "::event_binder_core"
            ),
            quote!(
                async fn r#invoice(event: Order) -> Result<Invoice, E> {
                    todo!()
                }
            ),
        );
        let expected_kind = quote!(
            type Kind = ::event_binder_core::Processor;
        )
        .to_string();
        assert!(code.contains(&expected_kind), "{code}");
        let expected_options =
            quote!(.output("invoices").concurrency(8usize).max_attempts(5u32)).to_string();
        assert!(code.contains(&expected_options), "{code}");
        assert!(code.contains("\"::invoice\""), "{code}");
        assert!(!code.contains("::event_binder::"), "{code}");
    }

    #[test]
    fn retry_options_become_durations_and_flags() {
        let code = expanded(
            &quote!(
                destination = "orders",
                backoff = "250ms..2m",
                jitter = 1,
                timeout = "1h",
                retry = "in_process"
            ),
            quote!(
                async fn bill(event: Order) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let expected = quote!(
            .backoff(
                ::core::time::Duration::from_millis(250u64),
                ::core::time::Duration::from_millis(120000u64),
            )
            .jitter(1.0f64)
            .retry_through_broker(false)
            .timeout(::core::time::Duration::from_millis(3600000u64))
        )
        .to_string();
        assert!(code.contains(&expected), "{code}");
    }

    #[test]
    fn patterns_and_mut_bind_inside_the_future() {
        let code = expanded(
            &quote!(destination = "pairs"),
            quote!(
                async fn pair(mut event: Pair, (a, b): (u32, u32)) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(
            code.contains(
                &quote!(fn pair(event: Pair, __event_binder_arg1: (u32, u32))).to_string()
            ),
            "{code}"
        );
        assert!(
            code.contains(&quote!(let mut event = event;).to_string()),
            "{code}"
        );
        assert!(
            code.contains(&quote!(let (a, b) = __event_binder_arg1;).to_string()),
            "{code}"
        );
    }

    #[test]
    fn extractors_stay_in_the_signature_and_are_checked() {
        let code = expanded(
            &quote!(destination = "orders"),
            quote!(
                async fn reserve(
                    event: Order,
                    id: MessageId,
                    State(db): State<Db>,
                    attempt: Attempt,
                ) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let expected_params = quote!(fn reserve(
            event: Order,
            id: MessageId,
            __event_binder_arg2: State<Db>,
            attempt: Attempt
        ))
        .to_string();
        assert!(code.contains(&expected_params), "{code}");
        assert!(
            code.contains(&quote!(let State(db) = __event_binder_arg2;).to_string()),
            "{code}"
        );
        let expected_checks = quote!(__event_binder_merge(
            __event_binder_state::<Attempt>(),
            __event_binder_merge(
                __event_binder_state::<State<Db>>(),
                __event_binder_state::<MessageId>()
            )
        ))
        .to_string();
        // `>>` and `> >` are the same tokens, printed apart.
        let squeeze = |text: &str| text.replace(' ', "");
        assert!(
            squeeze(&code).contains(&squeeze(&expected_checks)),
            "{code}"
        );
        assert!(
            code.contains(&quote!(A: ::event_binder::FromContext).to_string()),
            "{code}"
        );
    }

    #[test]
    fn a_handler_of_its_event_alone_checks_no_arguments() {
        let code = expanded(
            &quote!(destination = "orders"),
            quote!(
                async fn bill(event: Order) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(!code.contains("__event_binder_state"), "{code}");
    }

    #[test]
    fn a_batch_handler_has_the_batch_kind_and_limits() {
        let code = expanded(
            &quote!(
                destination = "orders",
                group = "stock",
                batch = 100,
                batch_wait = "50ms"
            ),
            quote!(
                async fn reserve(events: Vec<Order>, batch: Batch) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let expected_kind = quote!(
            type Kind = ::event_binder::BatchSink;
        )
        .to_string();
        assert!(code.contains(&expected_kind), "{code}");
        let expected_limits =
            quote!(.batch(100usize, ::core::time::Duration::from_millis(50u64))).to_string();
        assert!(code.contains(&expected_limits), "{code}");
        // The element type is what decodes; the second argument must be a `Batch`.
        assert!(
            code.contains(&quote!(__event_binder_check_event::<Order>();).to_string()),
            "{code}"
        );
        assert!(
            code.contains(&quote!(__event_binder_check_batch::<Batch>();).to_string()),
            "{code}"
        );
        assert!(!code.contains("OutputPolicy"), "{code}");

        let code = expanded(
            &quote!(destination = "orders", batch = 8),
            quote!(
                async fn reserve(events: Vec<Order>) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let expected_limits =
            quote!(.batch(8usize, ::event_binder::BatchHandler::DEFAULT_WAIT)).to_string();
        assert!(code.contains(&expected_limits), "{code}");
        assert!(!code.contains("__event_binder_check_batch"), "{code}");
    }

    #[test]
    fn without_batch_a_vec_is_one_event() {
        let code = expanded(
            &quote!(destination = "orders"),
            quote!(
                async fn bill(events: Vec<Order>) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(
            code.contains(
                &quote!(
                    type Kind = ::event_binder::Sink;
                )
                .to_string()
            ),
            "{code}"
        );
        assert!(
            code.contains(&quote!(__event_binder_check_event::<Vec<Order> >();).to_string()),
            "{code}"
        );
        assert!(!code.contains(".batch("), "{code}");
    }

    #[test]
    fn the_spec_names_the_event_and_published_types() {
        let probe = |ty: TokenStream| {
            quote!((&::event_binder::__private::SchemaProbe::<#ty>(::core::marker::PhantomData))
                .payload_type())
            .to_string()
        };
        let code = expanded(
            &quote!(destination = "orders", output = "invoices"),
            quote!(
                async fn bill(event: Order, ctx: Context) -> io::Result<Option<Invoice>> {
                    todo!()
                }
            ),
        );
        assert!(code.contains(". payload_type ({"), "{code}");
        assert!(code.contains(&probe(quote!(Order))), "{code}");
        assert!(code.contains(". output_payload_type ({"), "{code}");
        assert!(code.contains(&probe(quote!(Invoice))), "{code}");
        // Resolution picks `SchemaOf` where it applies: both traits are in scope.
        assert!(
            code.contains(
                &quote!(
                    use ::event_binder::__private::{NameOf as _, SchemaOf as _};
                )
                .to_string()
            ),
            "{code}"
        );

        // A batch handler's events are the `Vec`'s elements; a sink publishes nothing.
        let code = expanded(
            &quote!(destination = "orders", batch = 8),
            quote!(
                async fn reserve(events: Vec<Order>) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(code.contains(&probe(quote!(Order))), "{code}");
        assert!(!code.contains("output_payload_type"), "{code}");
    }

    #[test]
    fn keeps_attributes_and_cfg() {
        let code = expanded(
            &quote!(destination = "orders"),
            quote!(
                /// Docs.
                #[cfg(feature = "billing")]
                #[must_use]
                async fn bill(event: Order) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let cfg = quote!(#[cfg(feature = "billing")]).to_string();
        assert_eq!(code.matches(&cfg).count(), 3, "{code}");
        assert!(code.contains("Docs."), "{code}");
        assert_eq!(code.matches("must_use").count(), 1, "{code}");
    }
}
