//! Crypto errors: one variant per way an input can be bad. None of them
//! changes any session state.

/// Why a handshake message or envelope was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Input ended before a complete header.
    #[error("truncated input")]
    Truncated,
    /// Unknown format version.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// The envelope is addressed to another device.
    #[error("envelope is for another device")]
    WrongRecipient,
    /// The envelope's sender is not the peer of this session.
    #[error("envelope from an unknown sender")]
    UnknownSender,
    /// Authentication failed: tampered, or sealed under other keys.
    #[error("authentication failed (tampered or wrong key)")]
    AuthFailed,
    /// The message's key was already used (or its chain is gone): a replay.
    #[error("replayed or too old message")]
    Replay,
    /// The message is further ahead than the skipped-key bound allows.
    #[error("too many skipped messages")]
    TooManySkipped,
    /// Decrypted plaintext has invalid padding.
    #[error("bad padding")]
    BadPadding,
    /// A handshake message failed to verify.
    #[error("handshake failed: {0}")]
    Handshake(&'static str),
    /// This side cannot send yet (the responder waits for the first message).
    #[error("session cannot send before the peer's first message")]
    NotReady,
    /// Serialized session state is malformed.
    #[error("corrupt session state")]
    BadState,
}
