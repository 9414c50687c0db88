//! TLS for the relay (`wss://`), on rustls with the ring provider: the
//! server's certificate chain and key from PEM files, and the device side's
//! trust roots (the webpki roots, plus the PEM file named by
//! `MASQ_RELAY_CA` for a relay with a private or self-signed certificate).

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Environment variable naming extra PEM roots a device trusts for `wss://` relays.
pub const RELAY_CA_ENV: &str = "MASQ_RELAY_CA";

fn io_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
}

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// The relay's TLS config from a PEM certificate chain and a PEM private key.
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> std::io::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| io_err("--tls-cert", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_err("--tls-cert", e))?;
    if certs.is_empty() {
        return Err(io_err("--tls-cert", "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| io_err("--tls-key", e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| io_err("tls", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io_err("--tls-cert/--tls-key", e))?;
    Ok(Arc::new(config))
}

/// The device side's TLS config: webpki roots plus `MASQ_RELAY_CA`, if set.
pub fn client_config() -> std::io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = std::env::var_os(RELAY_CA_ENV) {
        for cert in CertificateDer::pem_file_iter(&path).map_err(|e| io_err(RELAY_CA_ENV, e))? {
            roots
                .add(cert.map_err(|e| io_err(RELAY_CA_ENV, e))?)
                .map_err(|e| io_err(RELAY_CA_ENV, e))?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| io_err("tls", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A byte stream a WebSocket can run over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens the TCP (and, for `wss://`, TLS) stream for a relay URL.
pub async fn connect_stream(url: &str) -> std::io::Result<Box<dyn Io>> {
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        url.parse().map_err(|e| io_err("relay URL", e))?;
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => {
            return Err(io_err(
                "relay URL",
                format!("scheme {other:?}: use ws:// or wss://"),
            ))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| io_err("relay URL", "no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp =
        tokio::net::TcpStream::connect((host.trim_matches(|c| c == '[' || c == ']'), port)).await?;
    let _ = tcp.set_nodelay(true);
    if !secure {
        return Ok(Box::new(tcp));
    }
    let name = ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_string())
        .map_err(|e| io_err("relay host", e))?;
    let tls = tokio_rustls::TlsConnector::from(client_config()?)
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}
