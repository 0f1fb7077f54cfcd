//! The Windows kernel-debugger (KD) protocol: KDCOM framing and x64 payloads.
