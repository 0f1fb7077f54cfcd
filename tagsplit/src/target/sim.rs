//! The in-process simulator backend (placeholder until the simulator lands).

use super::{BoxedTarget, OpenError};

/// Opens `sim:NAME` or `sim:FILE.toml`.
pub(crate) fn open(_rest: &str) -> Result<BoxedTarget, OpenError> {
    Err(OpenError::NotBuilt("sim"))
}
