//! What the crash tests share: the services' URLs, unique names, randomness, the test
//! database, tables and Redis keys dropped when a test ends, and child processes to start
//! and kill.

#![allow(dead_code, unreachable_pub)]

use event_binder::postgres::sqlx::{self, Connection, PgConnection};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The test database: `EVENT_BINDER_POSTGRES_URL`, or the local server's database `test`
/// as user `postgres` (as the PostgreSQL store's tests use).
pub fn postgres_url() -> String {
    std::env::var("EVENT_BINDER_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The test Redis: `EVENT_BINDER_REDIS_URL`, or the local server's database 0 (as the Redis
/// store's tests use).
pub fn redis_url() -> String {
    std::env::var("EVENT_BINDER_REDIS_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned())
}

/// The Kafka bootstrap brokers: `EVENT_BINDER_KAFKA_BOOTSTRAP`, by default 127.0.0.1:9092
/// (as tests/it/kafka.rs finds them).
pub fn kafka_broker() -> String {
    std::env::var("EVENT_BINDER_KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned())
}

/// A random number below `bound` (not zero).
pub fn random_below(bound: u64) -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now()) % bound
}

/// Twelve random hex digits: a suffix no other run uses.
pub fn unique() -> String {
    let id = event_binder::new_message_id().replace('-', "");
    id[id.len() - 12..].to_owned()
}

/// The test's own connection to the test database. Reads ride out a database that goes
/// away for a while (another test restarting the server): they reconnect and try again,
/// for a minute at most.
#[derive(Debug)]
pub struct Db {
    conn: Option<PgConnection>,
}

/// How long reads try again while the database is away.
const DB_PATIENCE: Duration = Duration::from_secs(60);

impl Db {
    /// Connects to the test database.
    pub async fn connect() -> Db {
        let conn = PgConnection::connect(&postgres_url())
            .await
            .unwrap_or_else(|err| panic!("connecting to the test database failed: {err}"));
        Db { conn: Some(conn) }
    }

    /// Runs one statement (once), failing the test if it fails.
    pub async fn execute(&mut self, sql: &str) {
        let conn = self
            .connection()
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
        sqlx::query(sql)
            .execute(conn)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }

    /// One `bigint` (or `count(*)`) read by `sql`.
    pub async fn scalar(&mut self, sql: &str) -> i64 {
        let deadline = Instant::now() + DB_PATIENCE;
        loop {
            let read = match self.connection().await {
                Ok(conn) => sqlx::query_scalar(sql).fetch_one(conn).await,
                Err(err) => Err(err),
            };
            match read {
                Ok(value) => return value,
                Err(err) => self.failed(sql, err, deadline).await,
            }
        }
    }

    /// The `text` column read by `sql`, every row.
    pub async fn strings(&mut self, sql: &str) -> Vec<String> {
        let deadline = Instant::now() + DB_PATIENCE;
        loop {
            let read = match self.connection().await {
                Ok(conn) => sqlx::query_scalar(sql).fetch_all(conn).await,
                Err(err) => Err(err),
            };
            match read {
                Ok(values) => return values,
                Err(err) => self.failed(sql, err, deadline).await,
            }
        }
    }

    async fn connection(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(PgConnection::connect(&postgres_url()).await?);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// After `sql` failed with `err`: drops the connection and waits a moment before the
    /// next try, or fails the test past `deadline`.
    async fn failed(&mut self, sql: &str, err: sqlx::Error, deadline: Instant) {
        assert!(
            Instant::now() < deadline,
            "{sql}: {err} (for {DB_PATIENCE:?})"
        );
        self.conn = None;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Tables of one test, dropped when this is dropped (at the end of the test, or when it
/// panics), best effort.
#[derive(Debug, Default)]
pub struct Tables(pub Vec<String>);

impl Tables {
    /// Remembers `name` to drop, and returns it.
    pub fn add(&mut self, name: String) -> String {
        self.0.push(name.clone());
        name
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        // A thread of its own: this may run inside the test's runtime, which cannot block.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test tables");
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&postgres_url()).await?;
                for name in names {
                    sqlx::query(&format!("DROP TABLE IF EXISTS \"{name}\""))
                        .execute(&mut conn)
                        .await?;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("dropping the test tables: {err}"),
            Err(_) => eprintln!("dropping the test tables panicked"),
        }
    }
}

/// The Redis keys of one test, those under a prefix, deleted when this is dropped (at the
/// end of the test, or when it panics), best effort.
#[derive(Debug)]
pub struct RedisKeys {
    pub url: String,
    pub prefix: String,
}

impl RedisKeys {
    /// The keys under `prefix` in the Redis at `url`. The prefix must hold none of the
    /// pattern characters of `SCAN … MATCH` (`*?[]\`).
    pub fn new(url: String, prefix: String) -> RedisKeys {
        assert!(
            !prefix.contains(['*', '?', '[', ']', '\\']),
            "a Redis key prefix with pattern characters: {prefix:?}"
        );
        RedisKeys { url, prefix }
    }

    /// Deletes the keys, and says how many there were.
    fn delete(url: &str, prefix: &str) -> redis::RedisResult<usize> {
        let mut conn =
            redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?;
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)?;
            if !keys.is_empty() {
                deleted += keys.len();
                redis::cmd("DEL").arg(&keys).query::<()>(&mut conn)?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        // A thread of its own: this may run inside the test's runtime, which cannot block.
        match std::thread::spawn(move || RedisKeys::delete(&url, &prefix)).join() {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => eprintln!("deleting the test's Redis keys: {err}"),
            Err(_) => eprintln!("deleting the test's Redis keys panicked"),
        }
    }
}

/// What a `crash-consumer` last said about its calls (`stats` lines): see its docs for
/// what each count is with the inbox and with the Redis store (`held` only there).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub deliveries: u64,
    pub applied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub held: u64,
}

impl Stats {
    fn parse(line: &str) -> Option<Stats> {
        let mut stats = Stats::default();
        for field in line.strip_prefix("stats ")?.split_whitespace() {
            let (name, value) = field.split_once('=')?;
            let value = value.parse().ok()?;
            match name {
                "deliveries" => stats.deliveries = value,
                "applied" => stats.applied = value,
                "skipped" => stats.skipped = value,
                "failed" => stats.failed = value,
                "held" => stats.held = value,
                _ => return None,
            }
        }
        Some(stats)
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: Stats) {
        self.deliveries += other.deliveries;
        self.applied += other.applied;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.held += other.held;
    }
}

/// A child process (`crash-consumer` or `crash-relay`): killed when dropped, its stdout
/// read for `ready` and `stats` lines, its stderr kept for failure messages.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    ready: watch::Receiver<bool>,
    stats: Arc<Mutex<Stats>>,
    stderr: Arc<Mutex<String>>,
    /// The tasks reading its stdout and stderr: they end when it is gone.
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// Starts `program` with `args`; it stops gracefully when its stdin closes
    /// (`CRASH_STDIN_SHUTDOWN=1`).
    pub fn spawn(name: &str, program: &str, args: &[&str]) -> Process {
        Process::spawn_with_env(name, program, args, &[])
    }

    /// As [`spawn`](Self::spawn), with the environment variables `env` besides.
    pub fn spawn_with_env(
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Process {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .env("CRASH_STDIN_SHUTDOWN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name} ({program}): {err}"));
        let stdin = child.stdin.take();
        let (ready_tx, ready) = watch::channel(false);
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("the child's stdout");
        let seen = stats.clone();
        let mut readers = Vec::with_capacity(2);
        readers.push(tokio::spawn(each_line(stdout, move |line| {
            if line == "ready" {
                ready_tx.send_replace(true);
            } else if let Some(now) = Stats::parse(line) {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
            }
        })));
        let kept = stderr.clone();
        let errors = child.stderr.take().expect("the child's stderr");
        readers.push(tokio::spawn(each_line(errors, move |line| {
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.push_str(line);
            kept.push('\n');
        })));
        Process {
            name: name.to_owned(),
            child,
            stdin,
            ready,
            stats,
            stderr,
            readers,
        }
    }

    /// Its name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last stats it printed.
    pub fn stats(&self) -> Stats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until it printed `ready`, failing the test if it exits first or takes longer
    /// than `within`.
    pub async fn ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if *self.ready.borrow() {
                return;
            }
            self.check_running().await;
            assert!(
                Instant::now() < deadline,
                "{} was not ready within {within:?}; stderr: {}",
                self.name,
                self.stderr()
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), self.ready.changed()).await;
        }
    }

    /// Fails the test if the process has exited.
    pub async fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.read_to_end().await;
            panic!(
                "{} exited on its own ({status}); stderr: {}",
                self.name,
                self.stderr()
            );
        }
    }

    /// Kills it with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.check_running().await;
        self.child
            .kill()
            .await
            .unwrap_or_else(|err| panic!("killing {}: {err}", self.name));
        self.read_to_end().await;
    }

    /// Waits (a few seconds at most) until what the process wrote before it was gone has
    /// been read.
    async fn read_to_end(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
    }

    /// Stops it gracefully (closes its stdin) and waits up to `within` for a successful
    /// exit, failing the test otherwise.
    pub async fn stop(&mut self, within: Duration) {
        drop(self.stdin.take());
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => assert!(
                status.success(),
                "{} failed to stop ({status}); stderr: {}",
                self.name,
                self.stderr()
            ),
            Ok(Err(err)) => panic!("waiting for {}: {err}", self.name),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "{} did not stop within {within:?}; stderr: {}",
                    self.name,
                    self.stderr()
                );
            }
        }
        // The stats it printed last, on its way out.
        self.read_to_end().await;
    }
}

/// Calls `each` with every line `reader` yields, until its end.
async fn each_line(reader: impl AsyncRead + Unpin, mut each: impl FnMut(&str)) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        each(&line);
    }
}
