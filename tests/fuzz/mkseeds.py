#!/usr/bin/python3
"""Write the seed corpora of the structured fuzz targets into tests/fuzz/seeds/.

fuzz_dns seeds are DNS answers, fuzz_spool seeds queue files in the spool
format of src/spool/spool_int.h, fuzz_reply seeds server replies. Run it
after changing an op table or the spool format, and commit the result:

    /usr/bin/python3 tests/fuzz/mkseeds.py
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

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
    "truncated": packet("example.com", 15, [(PTR0, 15, 300, mx(10, "mx1.example.com"))])[:40],
    "ttl_top_bit": packet("example.com", 1, [(PTR0, 1, 0x80000001, bytes([192, 0, 2, 9]))]),
}
DNS = {k: b"\x00" + v for k, v in DNS.items()}
DNS["cache_blob"] = b"\x01" + b"\x00" + struct.pack(">HI", 10, 3) + b"a.b"

# ---- fuzz_spool: byte 0 = repair flags (see fuzz_spool.c), then the file ----

QID = "0123456789abcdef"


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


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
SPOOL = {
    "plain": b"\x08" + queue_file(ENV, BODY),
    "statuses": b"\x08" + queue_file(ENV, BODY, status(b"s 0 1 1 250%202.0.0%20ok") +
                                    status(b"s 1 0 2 -") + status(b"h 1") +
                                    status(b"d DKIM-Signature:%20v=1;%20a=ed25519-sha256\r\n"
                                           .replace(b"\r\n", b"%0D%0A")) + status(b"h 0")),
    "torn_tail": b"\x00" + queue_file(ENV, BODY, status(b"h 1") + b"s 0 2 1 gone 1234"),
    "escapes": b"\x08" + queue_file(
        [b"Q " + QID.encode(), b"A 0", b"S %2D", b"E QQ+2B", b"R 2", b"B 2", b"U 1", b"X 1",
         b"H -", b"C -", b"T %C3%BC@example.net - 15"], b""),
    "repair_me": b"\x03" + queue_file(ENV, BODY, status(b"s 1 2 7 550%205.1.1")),
    "uncommitted": b"\x00" + b"TERN1 uncommitted".ljust(56) + b"\n" + b"Q " + QID.encode() + b"\n",
}

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
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    write("fuzz_dns", DNS)
    write("fuzz_spool", SPOOL)
    write("fuzz_reply", REPLY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
