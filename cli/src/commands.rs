//! What each command does with the channel.

use crate::print::{self, Out};
use crate::{CliError, DeadLetters, Place, ProvisionArgs, PublishArgs, Select, TailArgs};
use event_binder::{
    content_type, AnyChannel, Channel, Consumer, Message, Publisher, RedriveOptions, Subscription,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::BufRead;

/// How many messages one send carries.
const PUBLISH_BATCH: usize = 100;

/// The messages of the JSON values on `input`, one per non-blank line, each with the key
/// and headers of `args`. The first line that is not JSON fails it all.
pub(crate) fn read_messages(
    input: impl BufRead,
    args: &PublishArgs,
) -> Result<Vec<Message>, CliError> {
    let mut messages = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        let json = line.trim();
        if json.is_empty() {
            continue;
        }
        if let Err(err) = serde_json::from_str::<serde_json::Value>(json) {
            return Err(CliError::Input {
                line: index + 1,
                reason: format!("not JSON ({err})"),
            });
        }
        let mut message = Message::new(json.to_owned())
            .with_content_type(content_type::JSON)
            .with_optional_key(args.key.clone());
        for (name, value) in &args.headers {
            message.headers_mut().insert(name, value);
        }
        messages.push(message);
    }
    Ok(messages)
}

pub(crate) async fn publish(
    channel: &AnyChannel,
    destination: &str,
    messages: Vec<Message>,
) -> Result<(), CliError> {
    let publisher = Publisher::new(channel.clone());
    let total = messages.len();
    let mut out = Out::stdout();
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let batch: Vec<Message> = messages.by_ref().take(PUBLISH_BATCH).collect();
        let ids: Vec<String> = batch.iter().map(|m| m.id().to_owned()).collect();
        publisher.send_batch(destination, batch).await?;
        for id in ids {
            out.line(&id)?;
        }
    }
    print::note(format_args!("published {total} messages to {destination}"));
    Ok(())
}

pub(crate) async fn tail(channel: &AnyChannel, args: &TailArgs) -> Result<(), CliError> {
    let subscription = Subscription::new(&args.destination)
        .optional_group(args.group.clone())
        .prefetch(16);
    let mut consumer = channel.consumer(&subscription).await?;
    match &args.group {
        Some(group) => print::note(format_args!(
            "tailing {} as group {group}; Ctrl-C stops",
            args.destination
        )),
        None => print::note(format_args!(
            "tailing {} (anonymous: what is published from now on); Ctrl-C stops",
            args.destination
        )),
    }
    let mut out = Out::stdout();
    let mut printed = 0;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    while args.count.is_none_or(|count| printed < count) {
        let delivery = tokio::select! {
            delivery = consumer.receive() => delivery?,
            _ = &mut interrupted => break,
        };
        out.delivery(delivery.message(), delivery.attempt())?;
        delivery.ack().await?;
        printed += 1;
    }
    Ok(())
}

pub(crate) async fn provision(channel: &AnyChannel, args: &ProvisionArgs) -> Result<(), CliError> {
    channel
        .provision(&args.destination, args.group.as_deref())
        .await?;
    match &args.group {
        Some(group) => print::note(format_args!(
            "provisioned {} and its group {group}",
            args.destination
        )),
        None => print::note(format_args!("provisioned {}", args.destination)),
    }
    Ok(())
}

pub(crate) async fn dead_letters(
    channel: &AnyChannel,
    command: &DeadLetters,
) -> Result<(), CliError> {
    let mut out = Out::stdout();
    match command {
        DeadLetters::List { at, limit, idle } => {
            let mut options = RedriveOptions::new().dry_run().idle(idle.idle);
            if let Some(limit) = limit {
                options = options.limit(*limit);
            }
            let listed = list(channel, at, options).await?;
            out.dead_letter_table(&listed)?;
            print::note(format_args!("{} dead letters", listed.len()));
        }
        DeadLetters::Show { at, id, idle } => {
            let options = RedriveOptions::new()
                .dry_run()
                .ids([id.as_str()])
                .limit(1)
                .idle(idle.idle);
            let listed = list(channel, at, options).await?;
            let dead_letter = listed.first().ok_or_else(|| CliError::NoSuchDeadLetter {
                destination: at.destination.clone(),
                group: at.group.clone(),
                id: id.clone(),
            })?;
            out.dead_letter(dead_letter)?;
        }
        DeadLetters::Redrive { at, select } => {
            let (options, progress) = selected(select, "sent back");
            let taken = channel.redrive(&at.destination, &at.group, &options).await;
            progress.finish_and_clear();
            report(
                &mut out,
                select,
                &taken?,
                "would send back",
                "sent back",
                at,
            )?;
        }
        DeadLetters::Purge { at, select, yes } => {
            if !yes && !select.dry_run {
                return Err(CliError::PurgeUnconfirmed);
            }
            let (options, progress) = selected(select, "deleted");
            let taken = channel
                .purge_dead_letters(&at.destination, Some(&at.group), &options)
                .await;
            progress.finish_and_clear();
            report(&mut out, select, &taken?, "would delete", "deleted", at)?;
        }
    }
    Ok(())
}

async fn list(
    channel: &AnyChannel,
    at: &Place,
    options: RedriveOptions,
) -> Result<Vec<Message>, CliError> {
    Ok(channel
        .purge_dead_letters(&at.destination, Some(&at.group), &options)
        .await?)
}

/// The options a selection makes, and the progress it reports while the run goes on.
fn selected(select: &Select, done: &'static str) -> (RedriveOptions, ProgressBar) {
    let progress = match select.limit {
        Some(limit) => ProgressBar::new(limit as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {pos} {msg} ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    progress.set_message(if select.dry_run { "listed" } else { done });
    let counter = progress.clone();
    let mut options = RedriveOptions::new()
        .idle(select.idle.idle)
        .on_taken(move |_| counter.inc(1));
    if !select.ids.is_empty() {
        options = options.ids(select.ids.iter().cloned());
    }
    if let Some(limit) = select.limit {
        options = options.limit(limit);
    }
    if select.dry_run {
        options = options.dry_run();
    }
    (options, progress)
}

/// A dry run's table, or the ids taken.
fn report(
    out: &mut Out,
    select: &Select,
    taken: &[Message],
    would: &str,
    did: &str,
    at: &Place,
) -> Result<(), CliError> {
    let (destination, group) = (&at.destination, &at.group);
    if select.dry_run {
        out.dead_letter_table(taken)?;
        print::note(format_args!(
            "dry run: {would} {} dead letters of {destination}/{group}",
            taken.len()
        ));
    } else {
        for message in taken {
            out.line(message.id())?;
        }
        print::note(format_args!(
            "{did} {} dead letters of {destination}/{group}",
            taken.len()
        ));
    }
    Ok(())
}
