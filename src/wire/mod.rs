//! Wire formats: byte-level encoders and decoders. Knows nothing of tokio or fjall.

pub mod relay_frame;
