//! KDNET: KD over UDP.
