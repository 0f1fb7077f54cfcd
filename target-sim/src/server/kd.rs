//! The KD stub over KDNET (UDP) and KDCOM framing on a TCP stream.
