//! The files the store serves over plain HTTP: the store manager page and the
//! browser client. All are compiled into the binary (`web/`), so a store needs
//! nothing on disk and no build step to serve them.
//!
//! Architecture invariant: this module only maps paths to bytes and headers;
//! it knows nothing of tokens or connections (the manager page authenticates
//! on its WebSocket like every other client).

/// One file the store serves.
pub struct Asset {
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// Extra response header lines, each ending in `\r\n`.
    pub headers: &'static str,
    /// The file.
    pub body: &'static [u8],
}

/// Headers of the manager's own files: nothing may frame them (clickjacking
/// of the approve buttons), scripts and styles come only from the store, and
/// the page may only talk to the store itself.
const MANAGER_HEADERS: &str = "content-security-policy: default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self' ws://127.0.0.1:* ws://localhost:*; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n\
x-frame-options: DENY\r\nreferrer-policy: no-referrer\r\n";

/// Headers of the client module: any web page may load it (it is public
/// code; what a page may do is decided when it connects, by origin).
const CLIENT_HEADERS: &str = "access-control-allow-origin: *\r\n";

/// The file served at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, headers, body): (&str, &str, &[u8]) = match path {
        "/" | "/manager.html" => (
            "text/html; charset=utf-8",
            MANAGER_HEADERS,
            include_bytes!("../../web/manager.html"),
        ),
        "/manager.js" => (
            "text/javascript; charset=utf-8",
            MANAGER_HEADERS,
            include_bytes!("../../web/manager.js"),
        ),
        "/manager.css" => (
            "text/css; charset=utf-8",
            MANAGER_HEADERS,
            include_bytes!("../../web/manager.css"),
        ),
        "/masq-client.js" => (
            "text/javascript; charset=utf-8",
            CLIENT_HEADERS,
            include_bytes!("../../web/client/masq-client.js"),
        ),
        "/masq-client.d.ts" => (
            "text/plain; charset=utf-8",
            CLIENT_HEADERS,
            include_bytes!("../../web/client/masq-client.d.ts"),
        ),
        _ => return None,
    };
    Some(Asset {
        content_type,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_manager_and_the_client() {
        let page = asset("/").expect("manager page");
        assert!(page.content_type.starts_with("text/html"));
        assert!(page.headers.contains("frame-ancestors 'none'"));
        let client = asset("/masq-client.js").expect("client");
        assert!(client.headers.contains("access-control-allow-origin: *"));
        assert!(std::str::from_utf8(client.body)
            .expect("utf-8")
            .contains("export async function connect"));
        assert!(asset("/../Cargo.toml").is_none());
        assert!(asset("/store.json").is_none());
    }
}
