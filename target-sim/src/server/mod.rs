//! The wire side of the simulated target: a GDB stub over TCP and a KD stub over KDNET/KDCOM.

pub mod gdb;
pub mod kd;
