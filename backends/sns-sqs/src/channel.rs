//! [`SnsSqsChannel`]: the [`Channel`] of the SNS+SQS backend.

use crate::config::{whole_seconds, SnsSqsConfig, MAX_MESSAGE_SIZE};
use crate::consumer::{flush, QueueKind, Settle, SqsConsumer};
use crate::error::{self, BACKEND};
use crate::names::Names;
use crate::producer::{send_to_queue, Outgoing, PublishQueue, SnsProducer};
use crate::requests::{RequestCounter, RequestCounts};
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use event_binder_core::{Capabilities, Channel, ChannelUrl, Error, Message, Result, Subscription};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// One connection to SNS and SQS in one region (or one emulator). Cheap to clone: clones
/// share the connection, the known topics and queues, and the publish batches.
///
/// ```no_run
/// # async fn demo() -> event_binder_core::Result<()> {
/// use event_binder_core::{Channel, Consumer, Message, Producer, Subscription};
/// use event_binder_sns_sqs::SnsSqsChannel;
///
/// let channel = SnsSqsChannel::connect("sns-sqs://us-east-1").await?;
/// let mut billing = channel.consumer(&Subscription::new("orders").group("billing")).await?;
/// channel.producer("orders").await?.send(Message::new(r#"{"order":42}"#)).await?;
/// billing.receive().await?.ack().await?;
/// println!("requests so far: {}", channel.requests().total());
/// channel.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SnsSqsChannel {
    inner: Arc<Inner>,
}

/// A queue this channel created or found: its URL and ARN.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    pub(crate) url: String,
    pub(crate) arn: String,
}

/// What the channel, its producers and its consumers share.
pub(crate) struct Inner {
    pub(crate) config: SnsSqsConfig,
    pub(crate) sns: aws_sdk_sns::Client,
    pub(crate) sqs: aws_sdk_sqs::Client,
    requests: RequestCounter,
    /// Topic name → ARN, for topics known to exist.
    topics: Mutex<HashMap<String, String>>,
    /// Queue name → URL and ARN, for queues known to exist.
    queues: Mutex<HashMap<String, Queue>>,
    /// (topic ARN, queue ARN) pairs known to be subscribed.
    subscriptions: Mutex<HashSet<(String, String)>>,
    /// Topic ARN → the batcher of its publishes.
    publishers: Mutex<HashMap<String, PublishQueue>>,
    /// The settlers of the consumers (acks, nacks, visibility), to flush on close.
    settlers: Mutex<Vec<Settler>>,
    /// The consumers' pollers: `close` lets each finish the receive it has in flight, whose
    /// messages it releases, before the settlers are flushed.
    pollers: Mutex<Vec<JoinHandle<()>>>,
    /// `true` once the channel is closed.
    closed: watch::Sender<bool>,
}

impl Inner {
    /// Fails with [`Error::ShutDown`] once the channel is closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            Err(Error::ShutDown("the sns-sqs channel"))
        } else {
            Ok(())
        }
    }

    /// A receiver that sees the channel close.
    pub(crate) fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub(crate) fn names(&self, destination: &str, group: Option<&str>) -> Result<Names> {
        Names::new(
            &self.config.prefix,
            destination,
            group,
            self.config.is_fifo(destination),
        )
    }

    /// The ARN of a topic, creating it unless this channel knows it (CreateTopic is
    /// idempotent: an existing topic just answers with its ARN).
    pub(crate) async fn ensure_topic(&self, name: &str) -> Result<String> {
        self.check_open()?;
        if let Some(arn) = lock(&self.topics).get(name) {
            return Ok(arn.clone());
        }
        let mut request = self.sns.create_topic().name(name);
        if name.ends_with(crate::names::FIFO_SUFFIX) {
            request = request.attributes("FifoTopic", "true");
        }
        let created = request
            .send()
            .await
            .map_err(|err| self.request_error(&format!("creating SNS topic {name}"), err))?;
        let arn = created.topic_arn().ok_or_else(|| {
            Error::broker(
                BACKEND,
                format!("creating SNS topic {name}: no ARN in the answer"),
            )
        })?;
        lock(&self.topics).insert(name.to_owned(), arn.to_owned());
        Ok(arn.to_owned())
    }

    /// The URL and ARN of a queue, creating it unless this channel knows it.
    pub(crate) async fn ensure_queue(&self, name: &str) -> Result<Queue> {
        if let Some(queue) = lock(&self.queues).get(name) {
            return Ok(queue.clone());
        }
        let queue = self.create_queue(name).await?;
        lock(&self.queues).insert(name.to_owned(), queue.clone());
        Ok(queue)
    }

    /// The messages a queue holds that are not deleted: visible, received and not deleted
    /// yet (in flight, or waiting out a nack's delay as their visibility timeout), and
    /// delayed. SQS reports each count as approximate.
    pub(crate) async fn backlog(&self, url: &str) -> Result<u64> {
        self.check_open()?;
        const COUNTS: [QueueAttributeName; 3] = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ];
        let what = || format!("reading the message counts of SQS queue {url}");
        let output = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(COUNTS.to_vec()))
            .send()
            .await
            .map_err(|err| self.request_error(&what(), err))?;
        let attributes = output.attributes();
        COUNTS.iter().try_fold(0u64, |total, name| {
            let count = attributes
                .and_then(|attributes| attributes.get(name))
                .and_then(|count| count.parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::broker(
                        BACKEND,
                        format!("{}: no count {} in the answer", what(), name.as_str()),
                    )
                })?;
            Ok(total.saturating_add(count))
        })
    }

    /// Creates a queue (or finds it) and reads its URL and ARN, without remembering it.
    pub(crate) async fn create_queue(&self, name: &str) -> Result<Queue> {
        self.check_open()?;
        let visibility = whole_seconds(self.config.visibility_timeout).to_string();
        let mut request = self
            .sqs
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::VisibilityTimeout, visibility);
        if name.ends_with(crate::names::FIFO_SUFFIX) {
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let url = match request.send().await {
            Ok(created) => created.queue_url().unwrap_or_default().to_owned(),
            // The queue exists with other attributes (another visibility timeout): use it
            // as it is; every receive sets the visibility timeout it wants anyway.
            Err(err)
                if matches!(
                    error::code(&err),
                    Some("QueueAlreadyExists" | "QueueNameExists")
                ) =>
            {
                self.sqs
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(|err| self.request_error(&format!("finding SQS queue {name}"), err))?
                    .queue_url()
                    .unwrap_or_default()
                    .to_owned()
            }
            Err(err) => return Err(self.request_error(&format!("creating SQS queue {name}"), err)),
        };
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|err| {
                self.request_error(&format!("reading the ARN of SQS queue {name}"), err)
            })?;
        let arn = attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| {
                Error::broker(
                    BACKEND,
                    format!("SQS queue {name} has no ARN in its attributes"),
                )
            })?;
        Ok(Queue { url, arn })
    }

    /// Subscribes a queue to a topic with raw message delivery, after letting the topic
    /// send to the queue (a queue policy: AWS drops what a topic sends without one).
    /// Returns the subscription's ARN.
    pub(crate) async fn subscribe(&self, topic_arn: &str, queue: &Queue) -> Result<String> {
        self.allow_topic(topic_arn, queue).await?;
        let subscribed = self
            .sns
            .subscribe()
            .topic_arn(topic_arn)
            .protocol("sqs")
            .endpoint(&queue.arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true)
            .send()
            .await
            .map_err(|err| {
                self.request_error(&format!("subscribing {} to {topic_arn}", queue.arn), err)
            })?;
        Ok(subscribed.subscription_arn().unwrap_or_default().to_owned())
    }

    /// Lets a topic send to a queue: adds the statement [`topic_statement`] to the
    /// queue's policy, keeping every other statement (an operator's, another tool's), and
    /// sends nothing when the policy already holds it. A policy that is not a JSON object
    /// is left alone, with an error, rather than overwritten.
    async fn allow_topic(&self, topic_arn: &str, queue: &Queue) -> Result<()> {
        let what = format!("letting topic {topic_arn} send to {}", queue.arn);
        let current = self
            .sqs
            .get_queue_attributes()
            .queue_url(&queue.url)
            .attribute_names(QueueAttributeName::Policy)
            .send()
            .await
            .map_err(|err| self.request_error(&format!("{what}: reading its policy"), err))?;
        let current = current
            .attributes()
            .and_then(|attributes| attributes.get(&QueueAttributeName::Policy))
            .filter(|policy| !policy.trim().is_empty());
        let Some(policy) = merge_policy(current.map(String::as_str), topic_arn, &queue.arn)
            .map_err(|reason| Error::broker(BACKEND, format!("{what}: {reason}")))?
        else {
            return Ok(());
        };
        self.sqs
            .set_queue_attributes()
            .queue_url(&queue.url)
            .attributes(QueueAttributeName::Policy, policy)
            .send()
            .await
            .map_err(|err| self.request_error(&what, err))?;
        Ok(())
    }

    /// An SDK error as event-binder's; [`Error::Timeout`] when the request got no answer
    /// within the configured timeouts.
    pub(crate) fn request_error<E, R>(&self, what: &str, err: SdkError<E, R>) -> Error
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        error::request_within(what, err, self.config.operation_timeout)
    }

    /// The timeouts of a receive, which long-polls for the wait time on top of the
    /// configured ones.
    pub(crate) fn receive_timeouts(&self) -> TimeoutConfig {
        let config = &self.config;
        TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_attempt_timeout(config.attempt_timeout + config.wait_time)
            .operation_timeout(config.operation_timeout + config.wait_time)
            .build()
    }

    /// Creates a destination's topic, a group's queue subscribed to it, and the group's
    /// dead-letter queue, skipping what this channel knows exists. Returns the group's
    /// queue.
    pub(crate) async fn ensure_group(&self, names: &Names, queue_name: &str) -> Result<Queue> {
        let topic_arn = self.ensure_topic(&names.topic).await?;
        let queue = self.ensure_queue(queue_name).await?;
        let pair = (topic_arn.clone(), queue.arn.clone());
        if !lock(&self.subscriptions).contains(&pair) {
            self.subscribe(&topic_arn, &queue).await?;
            lock(&self.subscriptions).insert(pair);
        }
        self.ensure_queue(&names.dead_letters).await?;
        Ok(queue)
    }

    /// The publish batcher of a topic, started on first use.
    pub(crate) fn publish_queue(self: &Arc<Self>, topic_arn: &str, fifo: bool) -> PublishQueue {
        lock(&self.publishers)
            .entry(topic_arn.to_owned())
            .or_insert_with(|| PublishQueue::start(self.clone(), topic_arn.to_owned(), fifo))
            .clone()
    }

    /// Remembers a consumer's poller, so that `close` waits for its last receive.
    pub(crate) fn register_poller(&self, task: JoinHandle<()>) {
        let mut pollers = lock(&self.pollers);
        pollers.retain(|poller| !poller.is_finished());
        pollers.push(task);
    }

    /// Remembers a consumer's settler, so that `close` sends what it holds.
    pub(crate) fn register_settler(
        &self,
        sender: &mpsc::UnboundedSender<Settle>,
        task: JoinHandle<()>,
    ) {
        let mut settlers = lock(&self.settlers);
        settlers.retain(|settler| !settler.task.is_finished());
        settlers.push(Settler {
            sender: sender.downgrade(),
            task,
        });
    }
}

/// The `Sid` of the queue policy statement that lets a group's topic send to its queue.
const TOPIC_STATEMENT_ID: &str = "event-binder-topic-sends";

/// The queue policy statement that lets a topic send to a queue.
fn topic_statement(topic_arn: &str, queue_arn: &str) -> serde_json::Value {
    serde_json::json!({
        "Sid": TOPIC_STATEMENT_ID,
        "Effect": "Allow",
        "Principal": { "Service": "sns.amazonaws.com" },
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } }
    })
}

/// The queue policy with [`topic_statement`] in it: `current` with its statements kept
/// (a single statement object becomes a list) and ours added, replacing any earlier one
/// of ours, or a new policy when there is none. `None` when `current` already holds
/// exactly our statement, once. An error when `current` is not a JSON object whose
/// `Statement` is an object or a list.
fn merge_policy(
    current: Option<&str>,
    topic_arn: &str,
    queue_arn: &str,
) -> std::result::Result<Option<String>, String> {
    let ours = topic_statement(topic_arn, queue_arn);
    let mut policy = match current {
        None => serde_json::json!({ "Version": "2012-10-17", "Statement": [] }),
        Some(text) => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or(
                "the queue's policy is not a JSON object; fix or remove it, it was left as it is",
            )?,
    };
    let statements = match policy.get_mut("Statement").map(serde_json::Value::take) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(statements)) => statements,
        Some(statement @ serde_json::Value::Object(_)) => vec![statement],
        Some(_) => {
            return Err(
                "the Statement of the queue's policy is neither a statement nor a list \
                 of them; fix it, it was left as it is"
                    .into(),
            )
        }
    };
    let is_ours = |statement: &serde_json::Value| {
        statement.get("Sid").and_then(serde_json::Value::as_str) == Some(TOPIC_STATEMENT_ID)
    };
    if statements.iter().filter(|s| is_ours(s)).count() == 1 && statements.contains(&ours) {
        return Ok(None);
    }
    let mut merged: Vec<serde_json::Value> =
        statements.into_iter().filter(|s| !is_ours(s)).collect();
    merged.push(ours);
    policy["Statement"] = serde_json::Value::Array(merged);
    if policy.get("Version").is_none() {
        policy["Version"] = "2012-10-17".into();
    }
    Ok(Some(policy.to_string()))
}

/// Resolves once the channel is closed (or dropped).
pub(crate) async fn until_closed(closed: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across the caller's awaits.
    let _ = closed.wait_for(|closed| *closed).await.map(drop);
}

/// A consumer's settler task, and the way to reach it while its consumer lives.
struct Settler {
    sender: mpsc::WeakUnboundedSender<Settle>,
    task: JoinHandle<()>,
}

impl Settler {
    /// Waits until what the settler was given is sent: flushed while its consumer lives,
    /// or drained to its end once the consumer and its deliveries are gone.
    async fn finish(self) {
        match self.sender.upgrade() {
            Some(sender) => flush(&sender).await,
            None => {
                if let Err(err) = self.task.await {
                    tracing::warn!(%err, "the settler of an SQS queue failed");
                }
            }
        }
    }
}

/// Locks one of the channel's tables. They are only inserted into and read: a panic
/// elsewhere leaves them consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SnsSqsChannel {
    /// Connects to `sns-sqs://<region>`, with the query parameters of [`SnsSqsConfig`].
    ///
    /// Fails with [`Error::Connection`] if the first request (listing one queue) fails
    /// within the [`connect_timeout`](SnsSqsConfig::connect_timeout): an unreachable
    /// endpoint, a wrong region, missing or refused credentials. The message never holds
    /// a secret.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_config(SnsSqsConfig::new(url)?).await
    }

    /// Like [`connect`](Self::connect), from a parsed URL (what the `event-binder` facade
    /// calls for `sns-sqs://`).
    pub async fn from_url(url: &ChannelUrl) -> Result<Self> {
        Self::with_config(SnsSqsConfig::from_url(url)?).await
    }

    /// Connects with a configuration.
    pub async fn with_config(config: SnsSqsConfig) -> Result<Self> {
        config.validate()?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_attempt_timeout(config.attempt_timeout)
            .operation_timeout(config.operation_timeout)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()))
            .http_client(http)
            .timeout_config(timeouts);
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = config.static_credentials() {
            loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
                &credentials.access_key_id,
                &credentials.secret_access_key,
                None,
                None,
                "event-binder configuration",
            ));
        }
        let shared = loader.load().await;
        let requests = RequestCounter::default();
        let sns = aws_sdk_sns::Client::from_conf(
            aws_sdk_sns::config::Builder::from(&shared)
                .interceptor(requests.clone())
                .build(),
        );
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&shared)
                .interceptor(requests.clone())
                .build(),
        );
        let url = config.url();
        let probe = sqs.list_queues().max_results(1).send();
        match tokio::time::timeout(config.connect_timeout, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(error::connection(&url, err)),
            Err(_) => {
                return Err(Error::Connection {
                    backend: BACKEND,
                    message: format!(
                        "no answer from {url} within {:?}; is the endpoint reachable?",
                        config.connect_timeout
                    ),
                    source: None,
                })
            }
        }
        let (closed, _) = watch::channel(false);
        Ok(SnsSqsChannel {
            inner: Arc::new(Inner {
                config,
                sns,
                sqs,
                requests,
                topics: Mutex::new(HashMap::new()),
                queues: Mutex::new(HashMap::new()),
                subscriptions: Mutex::new(HashSet::new()),
                publishers: Mutex::new(HashMap::new()),
                settlers: Mutex::new(Vec::new()),
                pollers: Mutex::new(Vec::new()),
                closed,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &SnsSqsConfig {
        &self.inner.config
    }

    /// The requests this channel has sent so far, per operation.
    pub fn requests(&self) -> RequestCounts {
        self.inner.requests.snapshot()
    }

    /// The SNS topic of a destination: `{prefix}{destination}` (escaped, see the crate
    /// documentation), plus `.fifo` for a FIFO destination.
    pub fn topic_name(&self, destination: &str) -> Result<String> {
        Ok(self.inner.names(destination, None)?.topic)
    }

    /// The SQS queue of a group: `{prefix}{destination}__{group}`.
    pub fn queue_name(&self, destination: &str, group: &str) -> Result<String> {
        Ok(self
            .inner
            .names(destination, Some(group))?
            .queue
            .unwrap_or_default())
    }

    /// The dead-letter queue of a group, `{prefix}{destination}__{group}__dlq`, or of the
    /// anonymous subscriptions of a destination, `{prefix}{destination}____dlq`.
    pub fn dead_letter_queue_name(&self, destination: &str, group: Option<&str>) -> Result<String> {
        Ok(self.inner.names(destination, group)?.dead_letters)
    }
}

impl fmt::Debug for SnsSqsChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnsSqsChannel")
            .field("config", &self.inner.config)
            .field("closed", &*self.inner.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl Channel for SnsSqsChannel {
    type Producer = SnsProducer;
    type Consumer = SqsConsumer;

    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Durable groups (queues keep what the topic sends them) and SNS's 256 KiB limit. No
    /// ordering by key: standard topics and queues do not keep order (FIFO destinations
    /// do, per key; see the crate documentation).
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .durable_groups(true)
            .max_message_size(MAX_MESSAGE_SIZE)
            .counts_deliveries(true)
            .delayed_redelivery(true)
            // A topic with no queue subscribed accepts a publish and delivers it to nobody.
            .keeps_messages_without_groups(false)
    }

    /// FIFO destinations keep the order of each key; standard ones keep none.
    fn orders_by_key(&self, destination: &str) -> bool {
        self.inner.config.is_fifo(destination)
    }

    /// Creates the topic and, with a group, the group's queue (subscribed to the topic)
    /// and its dead-letter queue.
    async fn provision(&self, destination: &str, group: Option<&str>) -> Result<()> {
        let names = self.inner.names(destination, group)?;
        match &names.queue {
            Some(queue) => self.inner.ensure_group(&names, queue).await.map(drop),
            None => self.inner.ensure_topic(&names.topic).await.map(drop),
        }
    }

    async fn producer(&self, destination: &str) -> Result<SnsProducer> {
        let names = self.inner.names(destination, None)?;
        let topic_arn = self.inner.ensure_topic(&names.topic).await?;
        let fifo = self.inner.config.is_fifo(destination);
        let queue = self.inner.publish_queue(&topic_arn, fifo);
        Ok(SnsProducer::new(
            self.inner.clone(),
            destination.to_owned(),
            queue,
            fifo,
        ))
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<SqsConsumer> {
        let names = self
            .inner
            .names(subscription.destination(), subscription.group_name())?;
        let kind = match &names.queue {
            Some(queue) => QueueKind::Group(queue.clone()),
            None => QueueKind::Anonymous,
        };
        let consumer =
            SqsConsumer::open(self.inner.clone(), subscription.clone(), names, kind).await?;
        Ok(consumer)
    }

    /// Reads the dead-letter queue. Dead-lettering one of its deliveries puts it back at
    /// the end of the same queue.
    async fn dead_letters(&self, destination: &str, group: Option<&str>) -> Result<SqsConsumer> {
        let names = self.inner.names(destination, group)?;
        let subscription = Subscription::new(destination).optional_group(group.map(str::to_owned));
        let consumer = SqsConsumer::open(
            self.inner.clone(),
            subscription,
            names,
            QueueKind::DeadLetters,
        )
        .await?;
        Ok(consumer)
    }

    /// Sends straight to the group's SQS queue (SendMessageBatch, up to 10 messages and
    /// 256 KiB a request), bypassing the topic, so the other groups and the anonymous
    /// subscriptions never see the messages. They are encoded as a publish encodes them,
    /// and the queue gets publishes with raw message delivery: its consumers cannot tell
    /// the two apart. The group's queue is provisioned first, as
    /// [`provision`](Channel::provision) does, so a group never consumed still gets them.
    /// On a FIFO destination the key is the message group id, as for a publish, and the
    /// deduplication id is the message id plus its redrive count, if any (SQS would take a
    /// redrive soon after the publish for a repeat, and drop it). Every message is checked
    /// before any is sent; a request that fails or has an entry refused ends the send with
    /// an error, the messages after it unsent.
    async fn send_to_group(
        &self,
        destination: &str,
        group: &str,
        messages: Vec<Message>,
    ) -> Result<()> {
        self.inner.check_open()?;
        let names = self.inner.names(destination, Some(group))?;
        let fifo = self.inner.config.is_fifo(destination);
        let outgoing = messages
            .iter()
            .map(|message| Outgoing::direct(message, fifo))
            .collect::<Result<Vec<_>>>()?;
        if outgoing.is_empty() {
            return Ok(());
        }
        let queue_name = names.queue.clone().unwrap_or_default();
        let queue = self.inner.ensure_group(&names, &queue_name).await?;
        send_to_queue(&self.inner, &queue.url, outgoing).await
    }

    /// Closes the channel: queued publishes are sent and pending acknowledgements
    /// (deletes, visibility changes) flushed; sends and receives fail with
    /// [`Error::ShutDown`] from then on. Messages a consumer has received and not handed
    /// out are released when it is dropped; what a receive in flight brings is released
    /// before this returns, which can take the receive's wait time.
    async fn close(&self) -> Result<()> {
        self.inner.closed.send_replace(true);
        let publishers: Vec<PublishQueue> = lock(&self.inner.publishers)
            .drain()
            .map(|(_, q)| q)
            .collect();
        for publisher in publishers {
            publisher.finish().await;
        }
        // A receive in flight brings messages that nobody will take: its poller releases
        // them (through the settler) before the settlers are flushed, or they would stay
        // invisible for a visibility timeout after this process is gone. It takes at most
        // the receive's wait time.
        let pollers: Vec<JoinHandle<()>> = lock(&self.inner.pollers).drain(..).collect();
        for poller in pollers {
            if let Err(err) = poller.await {
                tracing::warn!(%err, "the poller of an SQS queue failed");
            }
        }
        let settlers: Vec<Settler> = lock(&self.inner.settlers).drain(..).collect();
        for settler in settlers {
            settler.finish().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:orders";
    const QUEUE: &str = "arn:aws:sqs:us-east-1:123456789012:orders__billing";

    fn statements(policy: &str) -> Vec<serde_json::Value> {
        let policy: serde_json::Value = serde_json::from_str(policy).unwrap();
        policy["Statement"].as_array().unwrap().clone()
    }

    #[test]
    fn a_queue_without_a_policy_gets_ours() {
        let policy = merge_policy(None, TOPIC, QUEUE).unwrap().unwrap();
        assert_eq!(statements(&policy), [topic_statement(TOPIC, QUEUE)]);
    }

    #[test]
    fn other_statements_are_kept_and_ours_is_added_once() {
        let foreign = serde_json::json!({
            "Sid": "operator", "Effect": "Allow", "Principal": "*",
            "Action": "sqs:ReceiveMessage", "Resource": QUEUE
        });
        // A single statement object, as AWS also allows.
        let current =
            serde_json::json!({ "Version": "2012-10-17", "Id": "p", "Statement": foreign });
        let merged = merge_policy(Some(&current.to_string()), TOPIC, QUEUE)
            .unwrap()
            .unwrap();
        assert_eq!(
            statements(&merged),
            [foreign.clone(), topic_statement(TOPIC, QUEUE)]
        );
        assert!(merged.contains(r#""Id":"p""#), "{merged}");
        assert_eq!(merge_policy(Some(&merged), TOPIC, QUEUE).unwrap(), None);
        // An outdated statement of ours (another topic) is replaced, not doubled.
        let other = merge_policy(Some(&merged), "arn:aws:sns:us-east-1:1:other", QUEUE)
            .unwrap()
            .unwrap();
        let kept = statements(&other);
        assert_eq!(kept.len(), 2, "{other}");
        assert_eq!(kept[0], foreign);
    }

    #[test]
    fn a_policy_that_cannot_be_read_is_not_overwritten() {
        for broken in ["not json", "[1]", r#"{"Statement": 3}"#] {
            let err = merge_policy(Some(broken), TOPIC, QUEUE).unwrap_err();
            assert!(err.contains("left as it is"), "{broken}: {err}");
        }
    }
}
