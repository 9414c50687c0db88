//! Accepting sockets: the accept loop (with its back-off when the process
//! runs out of descriptors or memory), the TLS handshake when the relay has
//! TLS, then one request head read to tell plain HTTP (`/healthz`,
//! `/metrics`) from a WebSocket upgrade, which becomes a connection.
//!
//! Knows nothing of frames or what a connection does once upgraded.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::connection;
use super::hub::Hub;
use super::metrics::METRICS_CONTENT_TYPE;
use crate::config::{ACCEPT_ERROR_BACKOFF, CONNECTIONS_CLOSE_WAIT, MAX_HTTP_HEAD_BYTES};
use crate::http_head::{read_head, respond, Prefixed};

/// Accepts sockets until the relay shuts down, then gives their handlers
/// [`CONNECTIONS_CLOSE_WAIT`] to send their close frames.
pub(super) async fn accept_loop(listener: TcpListener, hub: Arc<Hub>) {
    let shutdown = hub.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) if crate::http_head::is_resource_exhaustion(&e) => {
                        tracing::warn!("relay accept failed ({e}); pausing {:?}", ACCEPT_ERROR_BACKOFF);
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                        }
                        continue;
                    }
                    // A connection that died before we took it: nothing to do.
                    Err(_) => continue,
                };
                spawn_socket(&mut conns, stream, hub.clone());
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Let connections send their close frames.
    let _ = tokio::time::timeout(CONNECTIONS_CLOSE_WAIT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// Handles an accepted socket in a task of `conns`, after the TLS
/// handshake (within the handshake timeout) if the relay has TLS.
fn spawn_socket(conns: &mut JoinSet<()>, stream: TcpStream, hub: Arc<Hub>) {
    let _ = stream.set_nodelay(true);
    match hub.config.tls.clone() {
        None => {
            conns.spawn(async move { handle_socket(stream, hub).await });
        }
        Some(tls) => {
            conns.spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                let handshake =
                    tokio::time::timeout(hub.config.handshake_timeout, acceptor.accept(stream));
                if let Ok(Ok(tls_stream)) = handshake.await {
                    handle_socket(tls_stream, hub).await;
                }
            });
        }
    }
}

/// Decrements the open-socket count when a socket's handler ends.
struct SocketGuard(Arc<Hub>);
impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.open_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads the request head: answers plain HTTP GETs, refuses the upgrade
/// past `max_connections` (503), else upgrades and serves the connection.
async fn handle_socket<S>(mut stream: S, hub: Arc<Hub>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = hub.open_sockets.fetch_add(1, Ordering::Relaxed) + 1;
    let _guard = SocketGuard(hub.clone());
    // Read the request head (bounded, with the handshake timeout).
    let Some(head) = read_head(
        &mut stream,
        MAX_HTTP_HEAD_BYTES,
        hub.config.handshake_timeout,
    )
    .await
    else {
        return;
    };
    if head.method == "GET" && !head.is_websocket() {
        let (status, body, ctype) = match head.path() {
            "/healthz" => ("200 OK", "ok\n".to_string(), "text/plain"),
            "/metrics" => ("200 OK", hub.metrics.render(), METRICS_CONTENT_TYPE),
            _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
        };
        respond(&mut stream, status, ctype, "", body.as_bytes()).await;
        return;
    }
    if open > hub.config.max_connections {
        respond(
            &mut stream,
            "503 Service Unavailable",
            "text/plain",
            "",
            b"",
        )
        .await;
        return;
    }
    let prefixed = Prefixed::new(head.raw, stream);
    let ws =
        match tokio_tungstenite::accept_async_with_config(prefixed, Some(hub.config.websocket()))
            .await
        {
            Ok(ws) => ws,
            Err(_) => return,
        };
    hub.metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    connection::serve(ws, hub).await;
}
