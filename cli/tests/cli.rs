//! Every command of the `event-binder` binary, run as a process against RabbitMQ, Kafka and
//! SNS+SQS (the brokers `scripts/test.sh` starts): a user's session on each, and the errors
//! a user meets. Each session uses a destination no other run uses.

use event_binder::{AnyChannel, Channel, Consumer, Subscription};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SNS_SQS: &str = "sns-sqs://us-east-1?endpoint=http://127.0.0.1:4566&wait_time_s=1";

fn kafka() -> String {
    let broker = std::env::var("EVENT_BINDER_KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    format!("kafka://{broker}")
}

/// How long one command may take: a Kafka consumer joins its group, SQS polls.
const PATIENCE: Duration = Duration::from_secs(120);

fn unique() -> String {
    let id = event_binder::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

fn command(url: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_event-binder"));
    command
        .args(args)
        .env_remove("EVENT_BINDER_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(url) = url {
        command.env("EVENT_BINDER_URL", url);
    }
    command
}

/// Runs the binary to its end, `input` on its stdin.
async fn run_with(url: Option<&str>, args: &[&str], input: &str) -> Output {
    let mut child = command(url, args).spawn().expect("starting event-binder");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("writing stdin");
    drop(stdin);
    timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("event-binder {args:?} did not end within {PATIENCE:?}"))
        .expect("waiting for event-binder")
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the binary and insists it succeeds; returns its stdout.
async fn succeeds(url: &str, args: &[&str], input: &str) -> String {
    let output = run_with(Some(url), args, input).await;
    assert!(
        output.status.success(),
        "event-binder {args:?} failed ({}): {}",
        output.status,
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Runs the binary and insists it fails with one line on stderr; returns that line.
async fn fails(url: Option<&str>, args: &[&str], input: &str) -> String {
    let output = run_with(url, args, input).await;
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "event-binder {args:?} succeeded: {}",
        text(&output.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

/// Waits until a running tail says it reads, so what is published next reaches it.
async fn reading(tail: &mut Child) {
    let stderr = tail.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let said = timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("reading stderr") {
            if line.starts_with("tailing ") {
                return line;
            }
        }
        panic!("tail ended before it said it reads");
    })
    .await
    .expect("tail said it reads");
    assert!(said.contains("anonymous"), "{said}");
}

/// A whole session on one broker: provision, publish, tail as a group and anonymously,
/// then dead letters listed, shown, redriven and purged.
async fn session(url: &str, idle: &str) {
    let destination = format!("cli-{}", unique());
    let dest = destination.as_str();
    succeeds(url, &["provision", dest, "billing"], "").await;

    let input = "{\"order_id\":1}\n\n{\"order_id\":2}\n{\"order_id\":3}\n";
    let published = succeeds(
        url,
        &[
            "publish",
            dest,
            "--key",
            "order-7",
            "--header",
            "tenant=acme",
        ],
        input,
    )
    .await;
    let ids: Vec<&str> = published.lines().collect();
    assert_eq!(ids.len(), 3, "one id per JSON line: {published}");

    let tailed = succeeds(
        url,
        &["tail", dest, "--group", "billing", "--count", "3"],
        "",
    )
    .await;
    for (id, order) in ids.iter().zip(1..) {
        let shown = format!("--- id={id} key=order-7 attempt=1 ");
        assert!(tailed.contains(&shown), "{shown:?} in {tailed}");
        assert!(
            tailed.contains(&format!("\"order_id\": {order}")),
            "{tailed}"
        );
    }
    assert_eq!(tailed.matches("tenant: acme").count(), 3, "{tailed}");

    // Anonymous: sees what is published once it reads (on a destination of its own, which
    // has seen nothing before).
    let live = format!("{dest}-live");
    let mut tail = command(Some(url), &["tail", &live, "--count", "1"])
        .spawn()
        .expect("starting tail");
    reading(&mut tail).await;
    let late = succeeds(url, &["publish", &live], "{\"late\":true}\n").await;
    let output = timeout(PATIENCE, tail.wait_with_output())
        .await
        .expect("the anonymous tail ended")
        .expect("waiting for tail");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let tailed = text(&output.stdout);
    assert!(tailed.contains(late.trim()), "{tailed}");

    dead_letters(url, &format!("{dest}-dl"), idle).await;
}

/// Three messages dead-lettered by the group's handler (the test's own consumer), then
/// every dead-letters command on them.
async fn dead_letters(url: &str, dest: &str, idle: &str) {
    // Every dead-letters command, with how long the dead letters may bring nothing before
    // all count as seen.
    let dl = |args: &[&str]| -> Vec<String> {
        ["dead-letters"]
            .iter()
            .chain(args)
            .chain(&["--idle", idle])
            .map(|arg| (*arg).to_owned())
            .collect()
    };
    succeeds(url, &["provision", dest, "billing"], "").await;
    let published = succeeds(url, &["publish", dest], "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n").await;
    let ids: Vec<&str> = published.lines().collect();
    let channel = AnyChannel::connect(url).await.expect("connecting");
    let mut consumer = channel
        .consumer(&Subscription::new(dest).group("billing"))
        .await
        .expect("a consumer of the group");
    for _ in 0..ids.len() {
        let delivery = timeout(PATIENCE, consumer.receive())
            .await
            .expect("a delivery in time")
            .expect("a delivery");
        delivery
            .dead_letter("boom: the handler failed", 3)
            .await
            .expect("dead-lettering");
    }

    let listed = succeeds(url, &strs(&dl(&["list", dest, "billing"])), "").await;
    let rows: Vec<&str> = listed.lines().collect();
    assert!(rows[0].starts_with("ID "), "{listed}");
    assert_eq!(rows.len(), 4, "a header and three rows: {listed}");
    for id in &ids {
        let row = rows
            .iter()
            .find(|row| row.starts_with(id))
            .unwrap_or_else(|| panic!("{id} listed in {listed}"));
        assert!(row.contains("boom: the handler failed"), "{row}");
    }

    let shown = succeeds(url, &strs(&dl(&["show", dest, "billing", ids[1]])), "").await;
    assert!(
        shown.starts_with(&format!("id:       {}\n", ids[1])),
        "{shown}"
    );
    assert!(
        shown.contains("error:    boom: the handler failed"),
        "{shown}"
    );
    assert!(shown.contains("attempts: 3"), "{shown}");
    assert!(shown.contains("\"n\": 2"), "{shown}");
    let unknown = fails(
        Some(url),
        &strs(&dl(&["show", dest, "billing", "no-such-id"])),
        "",
    )
    .await;
    assert!(unknown.contains("no dead letter"), "{unknown}");

    let redriven = succeeds(
        url,
        &strs(&dl(&["redrive", dest, "billing", "--id", ids[0]])),
        "",
    )
    .await;
    assert_eq!(redriven.trim(), ids[0]);
    let delivery = timeout(PATIENCE, consumer.receive())
        .await
        .expect("the redriven message in time")
        .expect("the redriven message");
    assert_eq!(delivery.message().id(), ids[0]);
    assert_eq!(
        delivery.message().headers().get("redrive-count"),
        Some("1"),
        "{:?}",
        delivery.message().headers()
    );
    delivery.ack().await.expect("ack");
    drop(consumer);

    let refused = fails(Some(url), &strs(&dl(&["purge", dest, "billing"])), "").await;
    assert!(refused.contains("--yes"), "{refused}");
    let would = succeeds(
        url,
        &strs(&dl(&["purge", dest, "billing", "--dry-run"])),
        "",
    )
    .await;
    assert_eq!(
        would.lines().count(),
        3,
        "the two left, in a table: {would}"
    );
    let purged = succeeds(url, &strs(&dl(&["purge", dest, "billing", "--yes"])), "").await;
    let mut purged: Vec<&str> = purged.lines().collect();
    purged.sort_unstable();
    let mut left = vec![ids[1], ids[2]];
    left.sort_unstable();
    assert_eq!(purged, left);
    let listed = succeeds(url, &strs(&dl(&["list", dest, "billing"])), "").await;
    assert_eq!(listed.lines().count(), 1, "only the table's head: {listed}");
    channel.close().await.expect("closing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_session() {
    session(RABBITMQ, "2s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_session() {
    session(&kafka(), "2s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_sqs_session() {
    // Moto, shared with the other SNS+SQS tests, can take seconds to answer a receive.
    session(SNS_SQS, "6s").await;
}

/// A line of stdin that is not JSON publishes nothing, not even the lines before it: the
/// group's first message afterwards is the next good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_that_is_not_json_publishes_nothing() {
    let destination = format!("cli-{}", unique());
    let dest = destination.as_str();
    succeeds(RABBITMQ, &["provision", dest, "g"], "").await;
    let refused = fails(Some(RABBITMQ), &["publish", dest], "{\"n\":1}\nnot json\n").await;
    assert!(refused.contains("stdin line 2: not JSON"), "{refused}");
    assert!(refused.contains("nothing was published"), "{refused}");
    let good = succeeds(RABBITMQ, &["publish", dest], "{\"n\":2}\n").await;
    let tailed = succeeds(
        RABBITMQ,
        &["tail", dest, "--group", "g", "--count", "1"],
        "",
    )
    .await;
    assert!(
        tailed.starts_with(&format!("--- id={} ", good.trim())),
        "{tailed}"
    );
}

/// A broker that cannot be reached: one line, a failing exit, and the URL's secret nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_fail_in_one_line_without_their_secrets() {
    const SECRET: &str = "hunter2-secret";
    let urls = [
        format!("amqp://guest:{SECRET}@127.0.0.1:1/%2f"),
        format!("kafka://127.0.0.1:1?connect_timeout_ms=500&sasl.password={SECRET}"),
        format!("sns-sqs://us-east-1?endpoint=http://127.0.0.1:9&connect_timeout_ms=2000&aws_access_key_id=test&aws_secret_access_key={SECRET}"),
    ];
    for url in &urls {
        let line = fails(Some(url), &["provision", "orders"], "").await;
        assert!(line.starts_with("event-binder: error: "), "{line}");
        assert!(!line.contains(SECRET), "the secret shows: {line}");
        let line = fails(
            None,
            &["--url", url, "dead-letters", "list", "orders", "g"],
            "",
        )
        .await;
        assert!(!line.contains(SECRET), "the secret shows: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_mistakes_are_errors_that_say_what_to_do() {
    let no_url = fails(None, &["provision", "orders"], "").await;
    assert!(
        no_url.contains("--url") && no_url.contains("EVENT_BINDER_URL"),
        "{no_url}"
    );
    let output = run_with(
        Some(RABBITMQ),
        &["publish", "orders", "--header", "novalue"],
        "",
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "a usage error");
    assert!(text(&output.stderr).contains("expected NAME=VALUE"));
    let no_handlers = fails(None, &["asyncapi"], "").await;
    assert!(no_handlers.contains("knows no handlers"), "{no_handlers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_help() {
    let commands: [&[&str]; 9] = [
        &[],
        &["publish"],
        &["tail"],
        &["dead-letters"],
        &["dead-letters", "list"],
        &["dead-letters", "show"],
        &["dead-letters", "redrive"],
        &["dead-letters", "purge"],
        &["provision"],
    ];
    for command in commands {
        let args: Vec<&str> = command.iter().copied().chain(["--help"]).collect();
        let output = run_with(None, &args, "").await;
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        assert!(
            text(&output.stdout).contains("Usage: event-binder"),
            "{args:?}"
        );
    }
}
