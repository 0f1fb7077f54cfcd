//! Capture decoding: KDNET and KDCOM traffic in pcap/pcapng files, like a dissector.
