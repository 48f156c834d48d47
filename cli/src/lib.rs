//! `event-binder`, the command line of event-binder: publish to any destination, tail it,
//! look at a group's dead letters and send them back, provision destinations and groups,
//! on whichever broker the URL names (`--url` or `EVENT_BINDER_URL`).
//!
//! ```text
//! $ export EVENT_BINDER_URL=amqp://guest:guest@127.0.0.1:5672/%2f
//! $ echo '{"order_id":7}' | event-binder publish orders --key order-7
//! $ event-binder tail orders --group billing
//! $ event-binder dead-letters list orders billing
//! $ event-binder dead-letters redrive orders billing --limit 100
//! ```
//!
//! A service can ship the same commands in a binary of its own, with its handlers known, so
//! that `asyncapi` prints their AsyncAPI document: see [`Tool`].

mod commands;
mod print;

use clap::{Args, Parser, Subcommand, ValueEnum};
use event_binder::{AnyChannel, Channel};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// The command line, run by the `event-binder` binary or by a service's own.
///
/// ```no_run
/// use std::process::ExitCode;
///
/// fn main() -> ExitCode {
///     event_binder_cli::Tool::new().main()
/// }
/// ```
///
/// A service's own binary, with the `asyncapi` feature, knows its handlers: its `asyncapi`
/// command prints their document.
///
/// ```ignore
/// use event_binder::asyncapi::Info;
/// use event_binder::memory::MemoryChannel;
///
/// fn main() -> std::process::ExitCode {
///     event_binder_cli::Tool::new()
///         .asyncapi(|| {
///             let app = billing::app(MemoryChannel::new());
///             app.asyncapi(Info::new("billing", env!("CARGO_PKG_VERSION")))
///         })
///         .main()
/// }
/// ```
#[derive(Default)]
pub struct Tool {
    #[cfg(feature = "asyncapi")]
    asyncapi: Option<Box<dyn Fn() -> event_binder::asyncapi::Document + Send + Sync>>,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool").finish_non_exhaustive()
    }
}

impl Tool {
    /// The commands, with no handlers known (`asyncapi` says so).
    pub fn new() -> Self {
        Tool::default()
    }

    /// Parses the process's arguments and runs the command; errors are printed as one line
    /// on stderr and give a non-zero exit code.
    pub fn main(self) -> ExitCode {
        let cli = Cli::parse();
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime,
            Err(err) => return failed(&CliError::Io(err)),
        };
        match runtime.block_on(self.run(cli)) {
            Ok(()) => ExitCode::SUCCESS,
            // `| head` closing the pipe ends the output, not in failure.
            Err(CliError::Io(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                ExitCode::SUCCESS
            }
            Err(err) => failed(&err),
        }
    }

    async fn run(&self, cli: Cli) -> Result<(), CliError> {
        let command = match cli.command {
            Command::Asyncapi(args) => return self.print_asyncapi(&args),
            Command::Publish(args) => {
                // All of stdin is read and checked before anything is sent: bad input
                // publishes nothing.
                let messages = commands::read_messages(std::io::stdin().lock(), &args)?;
                Broker::Publish(args, messages)
            }
            Command::Tail(args) => Broker::Tail(args),
            Command::DeadLetters(command) => Broker::DeadLetters(command),
            Command::Provision(args) => Broker::Provision(args),
        };
        let url = cli.url.ok_or(CliError::NoUrl)?;
        let channel = AnyChannel::connect(&url).await?;
        let outcome = match command {
            Broker::Publish(args, messages) => {
                commands::publish(&channel, &args.destination, messages).await
            }
            Broker::Tail(args) => commands::tail(&channel, &args).await,
            Broker::DeadLetters(command) => commands::dead_letters(&channel, &command).await,
            Broker::Provision(args) => commands::provision(&channel, &args).await,
        };
        let closed = channel.close().await;
        outcome?;
        Ok(closed?)
    }

    #[cfg(not(feature = "asyncapi"))]
    fn print_asyncapi(&self, _args: &AsyncApiArgs) -> Result<(), CliError> {
        Err(CliError::NoHandlers)
    }
}

#[cfg(feature = "asyncapi")]
impl Tool {
    /// Gives the `asyncapi` command the document to print: the app's
    /// (`App::asyncapi`), made when the command runs.
    pub fn asyncapi(
        mut self,
        document: impl Fn() -> event_binder::asyncapi::Document + Send + Sync + 'static,
    ) -> Self {
        self.asyncapi = Some(Box::new(document));
        self
    }

    fn print_asyncapi(&self, args: &AsyncApiArgs) -> Result<(), CliError> {
        self.write_asyncapi(args, &mut std::io::stdout().lock())
    }

    fn write_asyncapi(&self, args: &AsyncApiArgs, out: &mut impl Write) -> Result<(), CliError> {
        let document = self.asyncapi.as_ref().ok_or(CliError::NoHandlers)?();
        let text = match args.format {
            Format::Json => document.to_json(),
            Format::Yaml => document.to_yaml()?,
        };
        writeln!(out, "{}", text.trim_end())?;
        Ok(out.flush()?)
    }
}

fn failed(err: &CliError) -> ExitCode {
    // One line, whatever the error's source printed.
    let line = err.to_string().replace('\n', "; ");
    let _ = writeln!(std::io::stderr(), "event-binder: error: {line}");
    ExitCode::FAILURE
}

/// A command that talks to the broker, its input read.
enum Broker {
    Publish(PublishArgs, Vec<event_binder::Message>),
    Tail(TailArgs),
    DeadLetters(DeadLetters),
    Provision(ProvisionArgs),
}

/// What went wrong, in one line a user can act on. No variant shows a URL's secrets:
/// errors from the channel show URLs without them.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("no broker URL: pass --url or set EVENT_BINDER_URL")]
    NoUrl,
    #[error(transparent)]
    Binder(#[from] event_binder::Error),
    #[error("stdin line {line}: {reason}; nothing was published")]
    Input { line: usize, reason: String },
    #[error("--header {0:?}: expected NAME=VALUE")]
    Header(String),
    #[error("no dead letter of {destination}/{group} has the id {id:?}")]
    NoSuchDeadLetter {
        destination: String,
        group: String,
        id: String,
    },
    #[error(
        "purge deletes dead letters for good: add --yes, or --dry-run to list what it would delete"
    )]
    PurgeUnconfirmed,
    #[cfg_attr(
        not(feature = "asyncapi"),
        error(
            "this binary knows no handlers: a service prints its AsyncAPI document from its own \
             binary, built with event_binder_cli::Tool and the `asyncapi` feature"
        )
    )]
    #[cfg_attr(
        feature = "asyncapi",
        error(
            "this binary knows no handlers: register them with Tool::asyncapi in the service's \
             own binary"
        )
    )]
    NoHandlers,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Parser)]
#[command(
    name = "event-binder",
    version,
    about = "Publish, tail, redrive dead letters and provision on any broker event-binder \
             speaks: memory, RabbitMQ, Kafka, SNS+SQS.",
    after_help = "The broker is the URL of --url or EVENT_BINDER_URL, as AnyChannel::connect \
                  takes it: amqp://user:password@host:5672/vhost, kafka://host:9092, \
                  sns-sqs://region?endpoint=…, memory:// (this process only)."
)]
pub(crate) struct Cli {
    /// The broker's URL (its password is never printed).
    #[arg(
        long,
        env = "EVENT_BINDER_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publishes the JSON values on stdin, one per line, to DEST, and prints their ids.
    Publish(PublishArgs),
    /// Prints DEST's deliveries as they come (id, key, headers, pretty JSON) until Ctrl-C.
    Tail(TailArgs),
    /// Lists, shows, redrives or purges the dead letters of a destination's group.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// Creates DEST, and GROUP's subscription and its dead letters, on the broker.
    Provision(ProvisionArgs),
    /// Prints the AsyncAPI 3.0 document of the service's handlers.
    Asyncapi(AsyncApiArgs),
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// The destination (a topic, an exchange).
    destination: String,
    /// The ordering key of every message.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// A header of every message; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

fn parse_header(header: &str) -> Result<(String, String), CliError> {
    match header.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(CliError::Header(header.to_owned())),
    }
}

#[derive(Debug, Args)]
struct TailArgs {
    /// The destination to read.
    destination: String,
    /// Read as a member of GROUP: take a share of the group's messages, acknowledged once
    /// printed. Without it, an anonymous subscription sees what is published from now on,
    /// taking nothing from any group.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Stop after COUNT deliveries.
    #[arg(long, value_name = "COUNT")]
    count: Option<usize>,
}

#[derive(Debug, Args)]
struct ProvisionArgs {
    /// The destination to create.
    destination: String,
    /// A durable group to create, which keeps what is published from now on.
    group: Option<String>,
}

#[derive(Debug, Args)]
struct AsyncApiArgs {
    /// The document's format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// Lists the dead letters in a table, and leaves them where they are.
    List {
        #[command(flatten)]
        at: Place,
        /// At most LIMIT of them.
        #[arg(long, value_name = "LIMIT")]
        limit: Option<usize>,
        #[command(flatten)]
        idle: Idle,
    },
    /// Prints one dead letter whole: why it failed, its headers and its payload.
    Show {
        #[command(flatten)]
        at: Place,
        /// The message id.
        id: String,
        #[command(flatten)]
        idle: Idle,
    },
    /// Sends dead letters back to GROUP (only), with their ids, keys and headers, counting
    /// the redrive in the header `redrive-count`; prints the ids sent back.
    Redrive {
        #[command(flatten)]
        at: Place,
        #[command(flatten)]
        select: Select,
    },
    /// Deletes dead letters; prints the ids deleted.
    Purge {
        #[command(flatten)]
        at: Place,
        #[command(flatten)]
        select: Select,
        /// Yes, delete them for good.
        #[arg(long)]
        yes: bool,
    },
}

/// Whose dead letters.
#[derive(Debug, Args)]
struct Place {
    /// The destination the messages were sent to.
    destination: String,
    /// The group whose handler failed them.
    group: String,
}

/// Which dead letters a redrive or purge takes.
#[derive(Debug, Args)]
struct Select {
    /// Only the dead letter with this message id; repeat for more.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// At most LIMIT dead letters.
    #[arg(long, value_name = "LIMIT")]
    limit: Option<usize>,
    /// List what would be taken, and take nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    idle: Idle,
}

#[derive(Debug, Args)]
struct Idle {
    /// How long the dead letters may bring nothing before all count as seen.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    idle: Duration,
}

#[cfg(all(test, feature = "asyncapi"))]
mod tests {
    use super::*;
    use event_binder::asyncapi::Info;
    use event_binder::memory::MemoryChannel;
    use event_binder::{App, Context, Handler, HandlerSpec};

    fn tool() -> Tool {
        Tool::new().asyncapi(|| {
            App::new(MemoryChannel::new())
                .handler(Handler::from_fn(
                    HandlerSpec::new("shop::bill", "orders").group("billing"),
                    |_order: serde_json::Value, _ctx: Context| async {
                        Ok::<_, std::io::Error>(())
                    },
                ))
                .asyncapi(Info::new("shop", "1.2.3"))
        })
    }

    fn printed(tool: &Tool, format: Format) -> String {
        let mut out = Vec::new();
        tool.write_asyncapi(&AsyncApiArgs { format }, &mut out)
            .expect("printing the document");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn asyncapi_prints_the_apps_document_as_json_or_yaml() {
        let tool = tool();
        let json: serde_json::Value =
            serde_json::from_str(&printed(&tool, Format::Json)).expect("JSON");
        assert_eq!(json["asyncapi"], "3.0.0");
        assert_eq!(json["info"]["title"], "shop");
        assert_eq!(json["channels"]["orders"]["address"], "orders", "{json:#}");
        let yaml = printed(&tool, Format::Yaml);
        assert!(yaml.starts_with("asyncapi: 3.0.0"), "{yaml}");
    }

    #[test]
    fn asyncapi_with_no_document_given_says_so() {
        let mut out = Vec::new();
        let err = Tool::new()
            .write_asyncapi(
                &AsyncApiArgs {
                    format: Format::Json,
                },
                &mut out,
            )
            .expect_err("no handlers");
        assert!(matches!(err, CliError::NoHandlers), "{err}");
    }
}
