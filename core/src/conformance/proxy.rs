//! A TCP proxy between a client and its broker that injects the faults networks really
//! have: connections cut at any point (mid-frame included), delays, and blackholes where
//! nothing flows but nothing closes either.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use event_binder_core::conformance::proxy::FaultProxy;
//! use std::time::Duration;
//!
//! let proxy = FaultProxy::start("127.0.0.1:5672").await?;
//! let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
//! // … connect to `url`, send and receive …
//! let faults = proxy.switch();
//! faults.cut(); // every open connection closes now
//! faults.delay(Duration::from_millis(50)); // each chunk of bytes waits 50 ms
//! faults.blackhole(true); // bytes stop flowing, connections stay open
//! faults.blackhole(false);
//! # Ok(()) }
//! ```

use super::switch::{FaultSwitch, Faults};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy listening on a port of its own on 127.0.0.1, forwarding to one upstream address.
/// Dropping it stops it and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    switch: FaultSwitch,
    accepted: Arc<AtomicUsize>,
    accepting: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding connections to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (switch, watching) = FaultSwitch::new();
        let accepted = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let count = accepted.clone();
        let accepting = tokio::spawn(async move {
            // Each connection's pumps end with the proxy: they hold the receiver, which
            // errors once the sender (the proxy) is dropped.
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward(client, upstream.clone(), watching.clone()));
            }
        });
        Ok(FaultProxy {
            addr,
            switch,
            accepted,
            accepting,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it has accepted so far: each reconnection counts.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// What cuts (every open connection closes, wherever its bytes are; new ones are
    /// accepted), delays (each chunk of bytes) and blackholes (no byte passes either way,
    /// and no connection closes) the proxy's connections.
    pub fn switch(&self) -> FaultSwitch {
        self.switch.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// How many bytes one read takes: small enough that a cut often lands mid-frame.
const CHUNK: usize = 4096;

async fn forward(client: TcpStream, upstream: String, faults: watch::Receiver<Faults>) {
    let cuts = faults.borrow().cuts;
    let Ok(server) = TcpStream::connect(&upstream).await else {
        // The client sees its connection close, as if the broker refused it.
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, faults.clone(), cuts);
    let down = pump(server_read, client_write, faults, cuts);
    // Either direction ending (a close, an error, a cut) ends both: dropping the halves
    // closes both sockets.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Copies `from` to `to` under the faults, until either side closes or a cut comes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
    cuts: u64,
) {
    let mut buffer = vec![0; CHUNK];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = faults.changed() => {
                if changed.is_err() || faults.borrow().cuts != cuts {
                    return;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Wait out a blackhole and the delay; a cut meanwhile ends the connection with
        // these bytes undelivered.
        loop {
            let now = *faults.borrow_and_update();
            if now.cuts != cuts {
                return;
            }
            if now.blackhole {
                if faults.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if !now.delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(now.delay) => {}
                    changed = faults.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            break;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that echoes what it reads.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut back = vec![0; text.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn forwards_cuts_and_reconnects() {
        let proxy = FaultProxy::start(&echo().await.to_string())
            .await
            .expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            round_trip(&mut stream, b"hello").await.expect("echo"),
            b"hello"
        );
        proxy.switch().cut();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the cut closes the connection");
        assert!(closed.is_ok_and(|n| n == 0) || rest.is_empty());
        let mut again = TcpStream::connect(proxy.addr()).await.expect("reconnect");
        assert_eq!(
            round_trip(&mut again, b"again").await.expect("echo"),
            b"again"
        );
        assert_eq!(proxy.connections(), 2);
    }

    #[tokio::test]
    async fn a_blackhole_holds_bytes_until_it_ends() {
        let proxy = FaultProxy::start(&echo().await.to_string())
            .await
            .expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            round_trip(&mut stream, b"warm").await.expect("echo"),
            b"warm"
        );
        proxy.switch().blackhole(true);
        stream.write_all(b"held").await.expect("write");
        let mut back = [0; 4];
        let held = tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut back));
        assert!(held.await.is_err(), "nothing passes a blackhole");
        proxy.switch().blackhole(false);
        stream.read_exact(&mut back).await.expect("the held bytes");
        assert_eq!(&back, b"held");
    }

    #[tokio::test]
    async fn a_delay_holds_each_chunk() {
        let proxy = FaultProxy::start(&echo().await.to_string())
            .await
            .expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.switch().delay(Duration::from_millis(100));
        let started = tokio::time::Instant::now();
        assert_eq!(
            round_trip(&mut stream, b"slow").await.expect("echo"),
            b"slow"
        );
        // Once on the way up, once on the way back.
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
