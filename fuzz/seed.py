#!/usr/bin/env python3
"""Seed the fuzz corpora from the reference material beside the project.

    python3 fuzz/seed.py [--shared ../shared]

Writes two kinds of seed:

* ``fuzz/corpus/<target>/seed-*``: derived from the gdb 13.1 packet transcripts in
  ``../shared/reference/gdb-transcripts`` and from our own scenario file and command lists.
  These are committed.
* ``fuzz/seeds/<target>/*``: derived from the real captures in ``../shared/captures``. Those
  captures must never be copied into the project, so these seeds stay out of git
  (``fuzz/seeds`` is ignored); pass the directory as a second corpus to ``cargo fuzz run``,
  which reads it but writes new inputs only to the first.

Every seed is at most 8192 bytes, the ``-max_len`` the fuzz runs use.
"""

import argparse
import gzip
import hashlib
import os
import re
import struct
import sys

MAX_LEN = 8192
HERE = os.path.dirname(os.path.abspath(__file__))


def frame(payload: bytes) -> bytes:
    """An RSP packet: `$`, the escaped payload, `#`, two hex digits of checksum."""
    body = bytearray()
    for b in payload:
        if b in b"#$}*":
            body += bytes([0x7D, b ^ 0x20])
        else:
            body.append(b)
    return b"$" + bytes(body) + b"#" + b"%02x" % (sum(body) & 0xFF)


LINE = re.compile(rb"^\s*\d+\s+(<-|->)\s?(.*)$")


def transcript(path):
    """(direction, payload) pairs, skipping payloads the log truncated."""
    out = []
    with open(path, "rb") as f:
        for raw in f:
            m = LINE.match(raw.rstrip(b"\n"))
            if not m:
                continue
            payload = m.group(2)
            if re.search(rb"\.\.\.\(\d+ bytes\)$", payload):
                continue
            out.append((m.group(1), payload))
    return out


class Writer:
    def __init__(self, root):
        self.root = root
        self.count = {}

    def put(self, target, data: bytes, name=None):
        data = data[:MAX_LEN]
        d = os.path.join(self.root, target)
        os.makedirs(d, exist_ok=True)
        name = name or "seed-" + hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        self.count[target] = self.count.get(target, 0) + 1


def stream(packets, with_acks):
    """Client packets as gdb sends them: acknowledged until QStartNoAckMode is accepted."""
    out = bytearray()
    acks = with_acks
    for p in packets:
        out += frame(p)
        if acks:
            out += b"+"
        if p == b"QStartNoAckMode":
            acks = False
        if len(out) > MAX_LEN - 1:
            break
    return bytes(out)


def seed_transcripts(w: Writer, shared):
    tdir = os.path.join(shared, "reference", "gdb-transcripts")
    commands, replies = set(), set()
    for name in sorted(os.listdir(tdir)):
        if not name.endswith(".log"):
            continue
        pairs = transcript(os.path.join(tdir, name))
        asks = [p for d, p in pairs if d == b"<-"]
        answers = [p for d, p in pairs if d == b"->"]
        commands.update(asks)
        replies.update(answers)
        client = stream(asks, with_acks=True)
        w.put("gdb_server_session", client)
        w.put("gdb_stub", client)
        # gdb_decoder's first byte is where it cuts the stream in two.
        w.put("gdb_decoder", bytes([len(client) % 251]) + client)
        w.put("gdb_client_session", b"+".join(frame(a) for a in answers)[:MAX_LEN])
    for c in sorted(commands):
        w.put("gdb_command", c)
    for r in sorted(replies):
        if r:
            w.put("gdb_command", r)


CONSOLE = [
    "lm",
    "lm m myfault*",
    "!poolused 2 Leak",
    "!poolused 4",
    "!for_each_module s -a @#Base @#End \"Leak\"",
    "s -a fffff880`0496d000 L2000 \"Leak\"",
    "s -b fffff880`0496d000 L?2000 4c 65 61 6b",
    "eb fffff880`0496e002 31",
    "ed fffff880`0496e002 3161654c",
    "ea fffff880`0496e002 \"Lea1\"",
    "dc fffff880`0496e000 L8",
    "db fffff880`0496e000",
    "dd fffff880`0496e000 L4",
    "dq fffffa80`01000000 L2",
    "u fffff880`0496e000",
    "!pool fffffa80`01000000",
    "!poolfind Leak",
    "g",
    "k",
    "? 0x10 + 0n16",
    ".reload",
    "x nt!PoolHitTag",
]

POOLTAG = """\
rem Pool tags, as pooltag.txt spells them
Leak - myfault.sys   - Leaking allocations
Lea1 - myfault.sys   - Split site 1
Afd1 - afd.sys - AFD objects
CM12 - nt!cm  - Configuration Manager Cache
Cc   - nt!cc  - Cache Manager allocations
 AfdX -  afd.sys  -  trailing spaces and odd spacing
//comment
"""


# gdb 13.1 loading a library through host I/O (`set sysroot target:`), and the answers.
HOST_IO = [
    b"vFile:setfs:0",
    b"vFile:open:2f3f3f2f433a2f57696e646f77732f73797374656d33322f647269766572732f6d796661756c742e737973,0,0",
    b"vFile:fstat:0",
    b"vFile:pread:0,4000,0",
    b"vFile:pread:0,4000,e00",
    b"vFile:pwrite:0,0,MZ",
    b"vFile:readlink:6d",
    b"vFile:unlink:6d",
    b"vFile:close:0",
]
HOST_IO_REPLIES = [b"F0", b"F-1,2", b"F0;", b"F2;MZ", b"F-1,1e"]


def seed_local(w: Writer):
    for c in HOST_IO + HOST_IO_REPLIES:
        w.put("gdb_command", c)
    w.put("gdb_stub", stream([b"vFile:open:6d,0,0"] + HOST_IO, with_acks=True))
    for c in CONSOLE:
        w.put("console_command", c.encode())
    w.put("pooltag_parse", POOLTAG.encode())
    for i, line in enumerate(POOLTAG.splitlines()):
        w.put("pooltag_parse", line.encode(), name="seed-line-%d" % i)
    scen = os.path.join(HERE, "..", "target-sim", "src", "scenarios", "part4.toml")
    with open(scen, "rb") as f:
        w.put("scenario_toml", f.read())
    # gdb's own session logs (`set remotelogfile`) that real gdb wrote against our stub:
    # the start, the middle and the end of each, and two small ones with every marker.
    data_dir = os.path.join(HERE, "..", "protocol", "tests", "data")
    for name in sorted(os.listdir(data_dir)):
        if name.endswith(".remotelog"):
            with open(os.path.join(data_dir, name), "rb") as f:
                log = f.read()
            mid = len(log) // 2
            for part in (log[:MAX_LEN], log[mid : mid + MAX_LEN], log[-MAX_LEN:]):
                w.put("gdb_remotelog", part)
    w.put(
        "gdb_remotelog",
        b"\nw +$qSupported:a+#c9\nr +$OK#9a\nc info\nw \\x03\n"
        b"r <Timeout: 2 seconds><Eof>\nEnd of log\n",
    )
    w.put("gdb_remotelog", b"\nw $m0,1#fa$m1,1#fb\nr $00#60$01#61\nw -\nr -$O6869#e6\nEnd of log\n")


def pcapng_udp_payloads(data: bytes):
    """UDP payloads of the Ethernet/IPv4 packets in a little-endian pcapng file."""
    off = 0
    while off + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        if blen < 12 or off + blen > len(data):
            break
        if btype == 6:  # enhanced packet block
            cap = struct.unpack_from("<I", data, off + 20)[0]
            pkt = data[off + 28 : off + 28 + cap]
            if len(pkt) > 42 and pkt[12:14] == b"\x08\x00" and pkt[23] == 17:
                ihl = (pkt[14] & 0x0F) * 4
                yield pkt[14 + ihl + 8 :]
        off += blen


def seed_captures(w: Writer, shared):
    cdir = os.path.join(shared, "captures")
    with open(os.path.join(cdir, "kdcom-state-change-exception.bin"), "rb") as f:
        kdcom = f.read()
    packet = kdcom + b"\xaa"
    w.put("kd_stream", packet)
    w.put("kd_stream", b"\x00" * 7 + packet + b"ii\x00\x00" + packet[:40])
    w.put("kd_session", b"\x00" + packet)
    w.put("kd_session", b"\x01" + packet + b"\xfe\xfd\xfe" + packet)
    w.put("kd_stub", packet)
    w.put("kd_payload", kdcom[16:])
    w.put("capture_decode", kdcom)
    with gzip.open(os.path.join(cdir, "kdnet-win10-10586-key-8.8.8.8.pcapng.gz"), "rb") as f:
        pcap = f.read()
    # The first blocks of the capture (the control handshake) as a shorter capture.
    cut, off = 0, 0
    while off + 12 <= len(pcap):
        blen = struct.unpack_from("<I", pcap, off + 4)[0]
        if blen < 12 or off + blen > MAX_LEN:
            break
        off += blen
        cut = off
    w.put("capture_decode", pcap[:cut])
    for i, p in enumerate(pcapng_udp_payloads(pcap)):
        if i >= 40:
            break
        w.put("kdnet_open", p)
        w.put("kd_session", b"\x03" + p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    args = ap.parse_args()
    if not os.path.isdir(args.shared):
        sys.exit(f"{args.shared}: not found; pass --shared PATH to the shared reference directory")
    corpus = Writer(os.path.join(HERE, "corpus"))
    seed_transcripts(corpus, args.shared)
    seed_local(corpus)
    seeds = Writer(os.path.join(HERE, "seeds"))
    seed_captures(seeds, args.shared)
    for label, wr in (("fuzz/corpus", corpus), ("fuzz/seeds (not committed)", seeds)):
        print(label + ": " + ", ".join(f"{t} {n}" for t, n in sorted(wr.count.items())))


if __name__ == "__main__":
    main()
