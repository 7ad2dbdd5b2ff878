#!/usr/bin/python3
"""Write the seed corpora of the structured fuzz targets into tests/fuzz/seeds/.

fuzz_session inputs are scripts (see the comment at the top of
fuzz_session.c): a mode byte, a seed byte, then ops named as in its op table.
fuzz_dns seeds are DNS answers, fuzz_reply seeds server replies.
fuzz_spool seeds are cut from a real spool written by tests/fuzz/spool_seeds
(segments, their .idx, record headers, MSG and STATE part A), plus a spilled
message and old-layout queue files made here. Run it after changing an op
table or the spool format, with the fuzz build (default build-fuzz) that
holds spool_seeds, and commit the result (the queue ids and times in the
spool seeds change on every run):

    /usr/bin/python3 tests/fuzz/mkseeds.py [BUILD_DIR]
"""
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- fuzz_session ----

OPS = ["ehlo", "helo", "mail", "rcpt", "data", "bdat", "rset", "quit", "starttls", "auth",
       "junk", "misc", "long", "sync", "flood", "eof", "raw", "conn"]

PEERS = {"127.0.0.1": 0, "192.0.2.7": 1, "::1": 2, "2001:db8::7": 3}
ROLES = {"relay": 0, "submission": 2, "smtps": 3}
CHUNKS = {"all": 0, 7: 1, 64: 2, 512: 3}


def mode(peer="127.0.0.1", role="relay", tight=False, reckless=False, chunk="all"):
    return (PEERS[peer] | ROLES[role] << 2 | (0x10 if tight else 0) |
            (0x20 if reckless else 0) | CHUNKS[chunk] << 6)


def script(m, seed, *ops):
    """ops: ("name", args...) tuples (an int is one byte, bytes go as they
    are), or bare bytes (raw op bytes, e.g. AUTH responses)."""
    out = bytearray([m, seed])
    for op in ops:
        if isinstance(op, bytes):
            out += op
            continue
        out.append(OPS.index(op[0]))
        for a in op[1:]:
            out += a if isinstance(a, (bytes, bytearray)) else bytes([a])
    return bytes(out)


def blob(b):
    """A length byte and the bytes (at most 255)."""
    assert len(b) < 256
    return bytes([len(b)]) + b


EHLO = ("ehlo", 0)
MAIL = ("mail", 1, 0)          # <a@example.com>
RCPT1 = ("rcpt", 0, 0)         # <r1@example.net>
RCPT2 = ("rcpt", 1, 1)         # <r2@example.net> NOTIFY=SUCCESS,FAILURE
DATA_HI = ("data", 1 | 1 << 2)  # template "Subject: hi"
DATA_SIGNED = ("data", 1 | 2 << 2)


def bdat(data, last):
    return ("bdat", 1 if last else 0, blob(data))


SESSION = {
    "relay_data": script(mode(), 1, EHLO, MAIL, RCPT1, RCPT2, DATA_HI, ("quit",)),
    "relay_signed": script(mode(), 2, EHLO, MAIL, RCPT1, DATA_SIGNED, ("sync",), ("rset",)),
    "bdat_chunks": script(mode(chunk=7), 3, EHLO, MAIL, RCPT1,
                          bdat(b"Subject: c\r\n\r\n", False), bdat(b"one\r\ntwo", True)),
    "bdat_zero_last": script(mode(), 4, EHLO, MAIL, RCPT1, bdat(b"x\r\n", False),
                             bdat(b"", True)),
    # After a BDAT chunk, DATA and RCPT get 503 (RFC 3030 3); a client that
    # stops reading is paused, its backlog bounded.
    "bdat_then_data": script(mode(), 5, EHLO, MAIL, RCPT1, bdat(b"a\r\n", False), DATA_HI),
    "rcpt_after_bdat": script(mode(), 6, EHLO, MAIL, RCPT1, bdat(b"a\r\n", False), RCPT2,
                              bdat(b"b\r\n", True)),
    "flood_unread": script(mode(), 7, EHLO, ("flood", 0x4e, 0x20, 0)),
    "starttls_auth": script(mode(peer="192.0.2.7", role="submission"), 8, EHLO,
                            ("starttls", 0), EHLO, ("auth", 2 | 0 << 2), MAIL, RCPT1,
                            DATA_HI, ("quit",)),
    "starttls_garbage": script(mode(peer="192.0.2.7"), 9, EHLO, ("starttls", 1)),
    # AUTH LOGIN on loopback without TLS: the next two ops are the responses
    # "alice" (op byte 6) and "secret" (7).
    "auth_login": script(mode(), 10, EHLO, ("auth", 1), bytes([6]), bytes([7]), MAIL, RCPT1,
                         bdat(b"m\r\n", True)),
    "auth_bad_smtps": script(mode(peer="2001:db8::7", role="smtps", tight=True), 11, EHLO,
                             ("auth", 2 | 1 << 2), ("auth", 2 | 2 << 2), ("auth", 2 | 0 << 2)),
    "outsider_relay": script(mode(peer="192.0.2.7"), 12, EHLO, ("mail", 2, 0), RCPT1,
                             ("rcpt", 3, 0), ("rcpt", 6, 0), DATA_HI),
    "tight_limits": script(mode(tight=True), 13, EHLO, MAIL, RCPT1, RCPT2, ("rcpt", 2, 0),
                           ("rcpt", 3, 0), ("data", 2, 120), ("mail", 0, 2)),
    "pipelined_bytes": script(mode(chunk=7), 14, ("helo", 1), MAIL, RCPT1, ("rset",), MAIL,
                              RCPT2, ("misc", 4), ("misc", 2), DATA_HI, ("quit",)),
    "reckless": script(mode(reckless=True, chunk=64), 15, EHLO, MAIL, RCPT1,
                       ("data", 3 | 1 << 2, blob(b"\r\n.\r\nRCPT TO:<x@y>")),
                       ("bdat", 4, 5, b"abcde", 3), ("raw", blob(b"NOOP"))),
    "long_lines": script(mode(), 16, EHLO, ("long", 0x05), ("long", 0x18), ("long", 0x2c),
                         ("long", 0x3b), ("long", 0x42)),
    "errors_421": script(mode(tight=True), 17, EHLO, ("junk", blob(b"one")),
                         ("misc", 5), ("junk", blob(b"\x00nul")), ("misc", 14),
                         ("misc", 15), ("misc", 1)),
    # Reckless: a chunk announced longer than sent, then end of input.
    "eof_mid_bdat": script(mode(reckless=True), 18, EHLO, MAIL, RCPT1,
                           ("bdat", 4, 5, b"abcde", 10), ("eof",)),
    "bdat_bad_syntax": script(mode(), 19, EHLO, MAIL, RCPT1, ("misc", 12)),
    "utf8": script(mode(), 20, ("ehlo", 4), ("mail", 6, 4), ("rcpt", 10, 0), DATA_HI),
    "data_line_too_long": script(mode(), 21, EHLO, MAIL, RCPT1, ("data", 2 | 4, 1), ("quit",)),
    "bdat_far_over_limit": script(mode(tight=True), 22, EHLO, MAIL, RCPT1, ("misc", 18)),
    # BDAT before EHLO (swallowed, 503), then a chunk over the roomy limit.
    "bdat_before_ehlo": script(mode(chunk=7), 16, ("bdat", 0, 0), MAIL, RCPT1, ("misc", 18)),
    # AUTH LOGIN, then a response longer than any AUTH line (op byte 0xf0).
    "auth_long_response": script(mode(), 23, EHLO, ("auth", 1), bytes([0xf0]), ("misc", 0)),
    "noop_too_long": script(mode(), 24, EHLO, ("long", 0x2d), ("misc", 0)),
    # Admission (tight: 4 sessions, 1 kept for relay_networks, 2 per outside
    # address): a second from the same outsider, a third refused, another
    # outsider, a trusted one, then one over max_sessions.
    "admission": script(mode(peer="192.0.2.7", tight=True), 25, EHLO, ("conn", 1), ("conn", 1),
                        ("conn", 3), ("conn", 0), ("conn", 2), MAIL, RCPT1, DATA_HI),
    # The reserved share: outsiders fill what is theirs, relay_networks
    # clients still get in.
    "reserved_share": script(mode(peer="2001:db8::7", tight=True), 26, ("conn", 1), ("conn", 1),
                             ("conn", 3), ("conn", 2), ("quit",)),
}

# ---- fuzz_dns: byte 0 (bit 0: also unpack as a cache blob), then the packet ----


def dname(name):
    out = b""
    for label in name.split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def packet(qname, qtype, answers, authority=(), flags=0x8180):
    """answers: (name bytes, type, ttl, rdata bytes)."""
    hdr = struct.pack(">HHHHHH", 0x1234, flags, 1, len(answers), len(authority), 0)
    out = hdr + dname(qname) + struct.pack(">HH", qtype, 1)
    for name, t, ttl, rdata in list(answers) + list(authority):
        out += name + struct.pack(">HHIH", t, 1, ttl, len(rdata)) + rdata
    return out


def wire(*labels):
    """A name from raw labels (which may hold dots or any byte)."""
    return b"".join(bytes([len(l)]) + l for l in labels) + b"\0"


PTR0 = b"\xc0\x0c"  # compression pointer to the question name


def mx(pref, host):
    return struct.pack(">H", pref) + dname(host)


SOA = dname("ns.example.com") + dname("hostmaster.example.com") + struct.pack(">IIIII", 1, 2, 3,
                                                                               4, 300)
DNS = {
    "mx_two": packet("example.com", 15, [(PTR0, 15, 300, mx(10, "mx1.example.com")),
                                        (PTR0, 15, 600, mx(5, "MX2.Example.COM."))]),
    "mx_compressed": packet("example.com", 15, [(PTR0, 15, 300, struct.pack(">H", 1) +
                                                 b"\x03mx1\xc0\x0c")]),
    "mx_null": packet("example.com", 15, [(PTR0, 15, 300, struct.pack(">H", 0) + b"\0")]),
    "mx_loop": packet("example.com", 15, [(PTR0, 15, 300, struct.pack(">H", 1) + b"\xc0\x2b")]),
    "nodata_soa": packet("example.com", 15, [], [(PTR0, 6, 900, SOA)]),
    "cname_a": packet("www.example.com", 1, [(PTR0, 5, 60, dname("web.example.com")),
                                            (dname("web.example.com"), 1, 60,
                                             bytes([192, 0, 2, 1]))]),
    "aaaa": packet("example.com", 28, [(PTR0, 28, 60, bytes(range(16)))]),
    "txt_strings": packet("example.com", 16, [(PTR0, 16, 60, b"\x0bv=spf1 -all\x00\x05 tail")]),
    "ptr": packet("1.2.0.192.in-addr.arpa", 12, [(PTR0, 12, 60, dname("Host.Example.com"))]),
    # A dot and a byte c-ares must escape inside labels: no host name.
    "ptr_escaped_labels": packet("1.2.0.192.in-addr.arpa", 12,
                                 [(PTR0, 12, 60, wire(b"x.victim", b"test")),
                                  (PTR0, 12, 60, wire(b"a\x01b", b"test")),
                                  (PTR0, 12, 60, dname("ok.test"))]),
    "truncated": packet("example.com", 15, [(PTR0, 15, 300, mx(10, "mx1.example.com"))])[:40],
    "ttl_top_bit": packet("example.com", 1, [(PTR0, 1, 0x80000001, bytes([192, 0, 2, 9]))]),
}
DNS = {k: b"\x00" + v for k, v in DNS.items()}
DNS["cache_blob"] = b"\x01" + b"\x00" + struct.pack(">HI", 10, 3) + b"a.b"

# ---- fuzz_spool: byte 0 = reader and flags (see fuzz_spool.c), then its input ----

SP_HDR, SP_ENV, SP_STATE, SP_SEG, SP_LEGACY = range(5)
SP_REPAIR, SP_OTHER_QID = 0x08, 0x10
QID = "0123456789abcdef"


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# The old one-file-per-message layout, read only to convert it (legacy.c).


def status(rec):
    return rec + b" %08x\n" % crc32c(rec)


def queue_file(records, body, statuses=b""):
    env = b"".join(r + b"\n" for r in records)
    off = 57 + len(env)
    hdr = b"TERN1 body=%020d len=%020d\n" % (off, len(body))
    assert len(hdr) == 57
    end = b"\nEND %08x %08x\n" % (crc32c(env), crc32c(body))
    return hdr + env + body + end + statuses


ENV = [b"Q " + QID.encode(), b"A 1700000000000", b"S a@example.com", b"E -", b"R 0", b"B 0",
       b"U 0", b"X 0", b"H client.example", b"C 127.0.0.1", b"T r1@example.net - 0",
       b"T r2@example.net rfc822;r2+40example.net 6"]
BODY = b"Received: from x\r\nSubject: hi\r\n\r\nhello\r\n"
LEG, LEG_FIX = bytes([SP_LEGACY]), bytes([SP_LEGACY | SP_REPAIR])
SPOOL = {
    "legacy_plain": LEG + queue_file(ENV, BODY),
    "legacy_statuses": LEG + queue_file(ENV, BODY, status(b"s 0 1 1 250%202.0.0%20ok") +
                                        status(b"s 1 0 2 -") + status(b"h 1") +
                                        status(b"d DKIM-Signature:%20v=1;%20a=ed25519-sha256"
                                               b"%0D%0A") + status(b"h 0")),
    "legacy_torn_tail": LEG + queue_file(ENV, BODY, status(b"h 1") + b"s 0 2 1 gone 1234"),
    "legacy_escapes": LEG + queue_file(
        [b"Q " + QID.encode(), b"A 0", b"S %2D", b"E QQ+2B", b"R 2", b"B 2", b"U 1", b"X 1",
         b"H -", b"C -", b"T %C3%BC@example.net - 15"], b""),
    "legacy_repair_me": LEG_FIX + queue_file(ENV, BODY, status(b"s 1 2 7 550%205.1.1")),
    "legacy_other_name": bytes([SP_LEGACY | SP_OTHER_QID]) + queue_file(ENV, BODY),
}

# Segments (spool_int.h): a 64-byte file header, then records, each a 48-byte
# header (u32 magic, u8 type, u8 version, u16 flags, u32 len_a, u32 len_b,
# u64 qid, u64 seg, u32 crc_a, u32 crc_b, u32 reserved, u32 crc_hdr) and its
# parts A and B.
REC = struct.Struct("<IBBHIIQQIIII")
REC_TYPES = {1: "msg", 2: "chunk", 3: "state", 4: "done"}


def records(seg):
    off = 64
    while off + REC.size <= len(seg):
        f = REC.unpack_from(seg, off)
        la, lb = f[4], f[5]
        yield f[1], seg[off:off + REC.size], seg[off + REC.size:off + REC.size + la]
        off += REC.size + la + lb


def seg_header(seq):
    h = b"TERNSEG1" + struct.pack("<QQ", seq, 0)
    h = h.ljust(60, b"\0")
    return h + struct.pack("<I", crc32c(h))


def record(typ, qid, seq, a, b=b""):
    h = REC.pack(0x31435254, typ, 1, 0, len(a), len(b), qid, seq, crc32c(a), crc32c(b), 0, 0)
    return h[:44] + struct.pack("<I", crc32c(h[:44])) + a + b


def seg_input(layout, *parts, repair=False):
    """parts: one segment, or (segment 1, .idx of 1 or b"", segment 2)."""
    out = bytes([SP_SEG | (SP_REPAIR if repair else 0), layout])
    lens = [len(parts[0]), len(parts[1]) if len(parts) > 1 else 0]
    return out + struct.pack("<HH", *lens) + b"".join(parts)


def spilled_message():
    """A message whose body was spilled ahead of its MSG record in a CHUNK
    (real ones are at least 256 KiB): its part A names the chunk's bytes."""
    chunk = b"Subject: big\r\n\r\n" + b"..spilled line\r\n" * 4
    tail = b"end\r\n"
    stored = len(chunk) + len(tail)
    qid = 0x1234
    a = (b"Q %016x\nA 1700000000000\nS s@example.com\nE -\nR 0\nB 0\nU 0\nX 0\n"
         b"H -\nC -\nT r@example.net - 0\nL %d %d\nx 1 %d %d\n"
         % (qid, stored - 4, stored, 64 + REC.size, len(chunk)))
    return (seg_header(1) + record(2, qid, 1, b"", chunk) + record(1, qid, 1, a, tail) +
            record(3, qid, 1, b"h 0\nr 0 0 1 0 1700000060000 -\n"))


def spool_seeds(build):
    """Seeds cut from a spool written by the spool itself (spool_seeds)."""
    prog = os.path.join(build, "tests", "fuzz", "spool_seeds")
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([prog, os.path.join(tmp, "spool")], check=True)
        log = os.path.join(tmp, "spool", "log")

        def read(name):
            with open(os.path.join(log, name), "rb") as f:
                return f.read()
        seg1, idx1, seg2 = read("%016x.seg" % 1), read("%016x.idx" % 1), read("%016x.seg" % 2)
    seeds["seg_real"] = seg_input(0, seg1)
    seeds["seg_real_repair"] = seg_input(0, seg1, repair=True)
    seeds["seg_two_idx"] = seg_input(3, seg1, idx1, seg2)
    seeds["seg_two_scanned"] = seg_input(1, seg1, b"", seg2)
    seeds["seg_torn"] = seg_input(0, seg1[:len(seg1) - 30])
    seeds["seg_spilled"] = seg_input(0, spilled_message(), repair=True)
    n = {}
    for seg in (seg1, seg2):
        for typ, hdr, a in records(seg):
            name = REC_TYPES.get(typ, "rec")
            n[name] = n.get(name, 0) + 1
            tag = "%s%d" % (name, n[name])
            seeds["hdr_" + tag] = bytes([SP_HDR]) + hdr
            if typ == 1:
                seeds["env_" + tag] = bytes([SP_ENV]) + a
            elif typ == 3:
                seeds["state_" + tag] = bytes([SP_STATE, 1]) + a
    return seeds


# ---- fuzz_reply: byte 0 (bit 0: enhanced code mode), then lines ----

REPLY = {
    "ehlo": b"\x00220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
            b"250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=LOGIN\r\n250-STARTTLS\r\n"
            b"250-CHUNKING\r\n250-SMTPUTF8\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n",
    "multiline_esc": b"\x00550-5.1.1 first\r\n550-5.1.1 second\r\n550 5.1.1 third\r\n",
    "bad_code_change": b"\x00250-ok\r\n251 other\r\n",
    "esc": b"\x012.0.0 ok\n5.7.1\n4.4.7x\n2.1234.5 no\n5.1.10 yes\n",
    "size_forms": b"\x00250-x\r\n250-SIZE\r\n250-SIZE 0\r\n250 SIZE abc\r\n",
}


def write(target, seeds):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        if old not in seeds:
            os.unlink(os.path.join(d, old))
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "build-fuzz")
    write("fuzz_session", SESSION)
    write("fuzz_dns", DNS)
    spool = dict(SPOOL)
    spool.update(spool_seeds(build))
    write("fuzz_spool", spool)
    write("fuzz_reply", REPLY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
