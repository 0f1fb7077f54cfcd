//! A `tokio_util::codec` adapter for KDCOM framing on a byte stream.
