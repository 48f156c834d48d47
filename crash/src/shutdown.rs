//! How the crash processes are told to stop gracefully: SIGTERM, ctrl-c, or (if asked) the
//! end of their stdin, which a test closes (and which closes when the test dies, so that a
//! process never outlives it).

use std::future::Future;

/// Waits for SIGTERM, ctrl-c or (if asked) the end of stdin.
pub(crate) async fn stopped(stdin_shutdown: bool) -> Result<(), String> {
    let stdin_closed = async move {
        if !stdin_shutdown {
            return std::future::pending().await;
        }
        let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            // Reads until end of file (or an error): the parent closed our stdin.
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed_tx.send(());
        });
        let _ = closed.await;
    };
    let terminate = terminated()?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
        () = stdin_closed => {}
    }
    Ok(())
}

/// A future that completes on SIGTERM (never, where there is none).
#[cfg(unix)]
fn terminated() -> Result<impl Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|err| format!("listening for SIGTERM: {err}"))?;
    Ok(async move {
        terminate.recv().await;
    })
}

/// A future that completes on SIGTERM (never, where there is none).
#[cfg(not(unix))]
fn terminated() -> Result<impl Future<Output = ()>, String> {
    Ok(std::future::pending())
}
