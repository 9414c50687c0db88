//! The little HTTP both servers (relay, store service) need before a
//! WebSocket upgrade: read a bounded request head, parse it with `httparse`,
//! answer plain GETs, and hand the already-read bytes to tungstenite.
//!
//! Architecture invariant: knows nothing of relay frames, the app protocol or storage.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Most headers parsed from one request head.
pub const MAX_HEADERS: usize = 32;

/// A parsed request head.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// The raw bytes read (replayed to tungstenite on upgrade).
    pub raw: Vec<u8>,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target, with its query.
    pub target: String,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header (name in lower case), in order. A check that
    /// must not be fooled by a repeated header (the store's `Host` check)
    /// looks at all of them, not at the first.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter, decoded as a form (`%XX` and `+`; a malformed
    /// escape is kept as it is).
    pub fn query(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Whether this asks for a WebSocket upgrade.
    pub fn is_websocket(&self) -> bool {
        self.header("upgrade")
            .map(|v| v.eq_ignore_ascii_case("websocket"))
            .unwrap_or(false)
    }
}

/// Reads and parses a request head of at most `max_bytes` within `timeout`.
/// `None` if the peer closed, was too slow, sent too much or sent garbage.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
    timeout: Duration,
) -> Option<Head> {
    let mut raw = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            if raw.len() > max_bytes {
                return false;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(tokio::time::timeout(timeout, read).await, Ok(true)) {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let head = Head {
        method: req.method.unwrap_or("").to_string(),
        target: req.path.unwrap_or("").to_string(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        raw: Vec::new(),
    };
    Some(Head { raw, ..head })
}

/// Writes a complete response and closes the connection.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n{extra_headers}connection: close\r\n\r\n",
        body.len()
    );
    // One write: with TCP_NODELAY, a separate body write can arrive after the
    // client has parsed the head and given up reading (refusal messages lost).
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    let _ = stream.write_all(&all).await;
    let _ = stream.shutdown().await;
}

/// A stream that first replays bytes already read (the HTTP head we parsed).
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` to be read first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether an `accept` error means the process or the system is out of a
/// resource (descriptors, memory, buffers), so an accept loop must pause
/// before trying again instead of spinning (see
/// [`service::ACCEPT_ERROR_BACKOFF`](crate::service::ACCEPT_ERROR_BACKOFF)).
pub fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_percent_decoding() {
        let h = Head {
            target: "/ws?app=notes&token=a%2Fb+c&x&bad=%zz%4".into(),
            ..Head::default()
        };
        assert_eq!(h.path(), "/ws");
        assert_eq!(h.query("app").as_deref(), Some("notes"));
        assert_eq!(h.query("token").as_deref(), Some("a/b c"));
        assert_eq!(h.query("x").as_deref(), Some(""));
        assert_eq!(h.query("y"), None);
        assert_eq!(h.query("bad").as_deref(), Some("%zz%4"));
    }
}
