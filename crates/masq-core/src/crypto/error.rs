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
    /// An X25519 public key of small order (the all-zero point and the
    /// other low-order points): Diffie-Hellman with it gives an all-zero,
    /// non-contributory result that anyone can compute, so it is refused
    /// wherever a key comes from outside (relay auth, handshake, ratchet,
    /// pairing).
    #[error("low-order X25519 public key (non-contributory Diffie-Hellman)")]
    LowOrderKey,
}
