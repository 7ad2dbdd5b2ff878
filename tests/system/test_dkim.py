"""DKIM signing: keys made with `ternctl dkim keygen`, mail signed
by ternd verified with dkimpy (python3-dkim; its DNS lookups answered from
the records keygen printed), mail that must not be signed, the signatures
stored in the spool, and `--check` on broken keys."""

import base64
import re
import struct
import stat

import dkim
import pytest

from sysutil import WAIT, message, split_received, uid, wait_for

QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


class Keys:
    """Records printed by keygen: name -> TXT value; the dnsfunc for dkimpy."""

    def __init__(self):
        self.records = {}
        self.entries = []

    def dnsfunc(self, name, timeout=5):
        return self.records.get(name.decode().lower().rstrip("."), "").encode() or None


def keygen(tern, keys, domain, selector, *args):
    """Run ternctl dkim keygen in tern's directory; record what it printed."""
    p = tern.ctl("dkim", "keygen", domain, selector, *args)
    out = p.stdout.decode()
    assert p.returncode == 0, (p.returncode, out, p.stderr.decode())
    rec = [ln for ln in out.splitlines() if not ln.startswith("#") and "._domainkey." in ln]
    assert len(rec) == 1, out
    name, rtype, strings = rec[0].split(" ", 2)
    assert name == f"{selector}._domainkey.{domain.lower()}" and rtype == "TXT", rec[0]
    parts = QUOTED.findall(strings)
    assert parts and all(1 <= len(s) <= 255 for s in parts), parts
    assert " ".join(f'"{s}"' for s in parts) == strings, "strings separated by one space"
    value = "".join(parts)
    keys.records[name] = value
    entry = [ln for ln in out.splitlines() if ln.startswith("dkim_sign = ")]
    assert len(entry) == 1, out
    keys.entries.append(entry[0][len("dkim_sign = "):])
    return value, out, p


def verify_all(data, keys, want):
    """Every DKIM-Signature of data verifies; there are want of them;
    returns their tag dicts."""
    head = data.split(b"\r\n\r\n", 1)[0]
    n = len(re.findall(rb"(?im)^dkim-signature:", head))
    assert n == want, f"{n} DKIM-Signature fields, want {want}:\n{head[:3000]!r}"
    v = dkim.DKIM(data, minkey=1024)
    tags = []
    for i in range(n):
        assert v.verify(idx=i, dnsfunc=keys.dnsfunc), f"signature {i} does not verify"
        tags.append({k.decode(): re.sub(r"\s", "", val.decode())
                     for k, val in v.signature_fields.items()})
    for ln in head.split(b"\r\n"):
        assert len(ln) <= 78 or not ln.lower().startswith((b"dkim", b"\t")), ln
    return tags


def dual_tern(make_tern, **settings):
    """ternd signing a.test (RSA-2048 + Ed25519) and b.test (RSA-1024)."""
    t = make_tern(start=False, **settings)
    keys = Keys()
    keygen(t, keys, "a.test", "rsa1")
    keygen(t, keys, "a.test", "ed1", "--algorithm", "ed25519")
    keygen(t, keys, "b.test", "old", "--bits", "1024")
    t.update(dkim_sign=" ".join(keys.entries))
    t.start()
    return t, keys


def test_keygen_output(make_tern):
    t = make_tern(start=False)
    keys = Keys()
    # RSA 2048 by default: the key file, its mode, the split TXT record
    value, out, _ = keygen(t, keys, "Example.COM", "s2024")
    path = t.workdir / "example.com.s2024.key"
    assert path.is_file(), out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    assert value.startswith("v=DKIM1; k=rsa; p=")
    der = base64.b64decode(value.split("p=", 1)[1])
    assert 290 <= len(der) <= 300, len(der)  # SubjectPublicKeyInfo of RSA-2048
    assert keys.entries[-1] == f"example.com:s2024:{path}"
    assert len(QUOTED.findall(out)) == 2, "a 2048-bit key needs two strings"
    # the printed record verifies a signature made with the written key
    msg = message("keygen check", sender="a@example.com")
    sig = dkim.sign(msg, b"s2024", b"example.com", path.read_bytes(), include_headers=[b"from"])
    assert dkim.verify(sig + msg, dnsfunc=lambda n, timeout=5: keys.dnsfunc(n))
    # refuses to overwrite: exit 1, the key unchanged
    before = path.read_bytes()
    p = t.ctl("dkim", "keygen", "example.com", "s2024")
    assert p.returncode == 1, p.stderr
    assert b"exists" in p.stderr and path.read_bytes() == before
    # Ed25519 (RFC 8463 §4.2): the raw 32-byte key, one string
    kf = t.workdir / "keys" / "ed.key"
    kf.parent.mkdir()
    value, out, _ = keygen(t, keys, "example.com", "ed", "--algorithm", "ed25519",
                           "--key-file", str(kf))
    assert value.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(value.split("p=", 1)[1])) == 32
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600
    assert keys.entries[-1] == f"example.com:ed:{kf}"
    seed = base64.b64encode(base64.b64decode(b"".join(kf.read_bytes().split(b"\n")[1:-2]))[-32:])
    sig = dkim.sign(msg, b"ed", b"example.com", seed, signature_algorithm=b"ed25519-sha256",
                    include_headers=[b"from"])
    assert dkim.verify(sig + msg, dnsfunc=lambda n, timeout=5: keys.dnsfunc(n))
    # RSA 4096: three strings; 1024 warns
    value, out, _ = keygen(t, keys, "example.com", "big", "--bits", "4096")
    assert len(QUOTED.findall(out)) == 3
    _, _, p = keygen(t, keys, "example.com", "small", "--bits=1024")
    assert b"warning" in p.stderr
    # usage errors: exit 2, nothing written
    for args in (["example.com"], ["example.com", "x", "--algorithm", "dsa"],
                 ["example.com", "y", "--bits", "512"], ["bad_domain!", "z"],
                 ["example.com", "w", "--algorithm", "ed25519", "--bits", "2048"],
                 ["example.com", "v", "--key-file"]):
        p = t.ctl("dkim", "keygen", *args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
    assert sorted(f.name for f in t.workdir.glob("*.key")) == [
        "example.com.big.key", "example.com.s2024.key", "example.com.small.key"]


def test_relayed_mail_verifies(make_tern, sink):
    t, keys = dual_tern(make_tern)
    u = uid()
    cases = [  # sender, rcpt, sigs, d=
        (f"alice-{u}@a.test", f"r1-{u}@example.org", 2, "a.test"),
        (f"bob-{u}@b.test", f"r2-{u}@example.org", 1, "b.test"),
        (f"carol-{u}@mail.a.test", f"r3-{u}@example.org", 2, "a.test"),  # parent domain entry
        (f"dave-{u}@c.test", f"r4-{u}@example.org", 0, None),  # no key: not signed
    ]
    for sender, rcpt, _, _ in cases:
        body = "Hi,\r\n\r\n.a line with a dot\r\nUTF-8: Gr\u00fc\u00dfe \U0001F426\r\n\r\n\r\n"
        data = message(f"dkim {u}", body.encode(), sender=f"Someone <{sender}>",
                       extra=b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
                             b"MIME-Version: 1.0\r\n"
                             b"Content-Type: text/plain; charset=utf-8\r\n")
        t.send(sender, [rcpt], data)
    for sender, rcpt, n, d in cases:
        tx = sink.wait_to(rcpt)[0]
        tags = verify_all(tx.data, keys, n)
        assert all(tg["d"] == d for tg in tags), tags
        assert sorted(tg["a"] for tg in tags) == (
            ["ed25519-sha256", "rsa-sha256"] if n == 2 else ["rsa-sha256"] * n)
        if n:
            assert all(tg["c"] == "relaxed/relaxed" and "x" not in tg for tg in tags)
            assert all(tg["h"].startswith("from:from:") for tg in tags)
            qid = t.qid_of(sender)
            ev = t.wait_event("signed", qid=qid)
            assert ev["domain"] == d, ev["_raw"]
            assert sorted(ev["selectors"].split(",")) == sorted(
                {"a.test": ["rsa1", "ed1"], "b.test": ["old"]}[d])
        # the rest of the message is unchanged after our fields
        assert tx.data.split(b"\r\nReceived: ", 1)[0].count(b"DKIM-Signature") == n


def test_dot_stuffed_and_bdat_verify(make_tern, sink):
    t, keys = dual_tern(make_tern)
    u = uid()
    a, b = f"dot-{u}@example.org", f"bdat-{u}@example.org"
    lines = [b"From: <x@a.test>", b"Subject: dots " + u.encode(), b"", b".", b"..",
             b".hidden", b"..double", b" .", b"end", b"", b""]
    stuffed = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    chunks = [b"From: y@b.test\r\nSubject: bdat " + u.encode() + b"\r\n\r\n.starts with a dot\r\n",
              b"..two dots and a split li", b"ne\r\n.\r\n\r\n"]
    with t.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<d-{u}@a.test>").code == 250
        assert c.cmd(f"RCPT TO:<{a}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(stuffed + b".\r\n")
        assert c.reply().code == 250
        assert c.cmd(f"MAIL FROM:<b-{u}@b.test>").code == 250
        assert c.cmd(f"RCPT TO:<{b}>").code == 250
        for i, ch in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            c.send(f"BDAT {len(ch)}{last}\r\n".encode() + ch)
            assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    verify_all(sink.wait_to(a)[0].data, keys, 2)
    verify_all(sink.wait_to(b)[0].data, keys, 1)


def test_large_and_unstuffed_verify(make_tern, sink):
    """The signer reads the message at commit: a body of 1 MB (stored in
    pieces before its record) and one whose client did not stuff its dots
    (the dots dropped, RFC 5321 4.5.2) both verify."""
    t, keys = dual_tern(make_tern)
    u = uid()
    big, loose = f"big-{u}@example.org", f"loose-{u}@example.org"
    body = b"".join(b"..%d %s\r\n" % (i, b"y" * (i % 120)) for i in range(16000))
    with t.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<g-{u}@a.test>").code == 250
        assert c.cmd(f"RCPT TO:<{big}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"From: <g@a.test>\r\nSubject: big " + u.encode() + b"\r\n\r\n" + body
               + b".\r\n")
        assert c.reply().code == 250
        assert c.cmd(f"MAIL FROM:<l-{u}@a.test>").code == 250
        assert c.cmd(f"RCPT TO:<{loose}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"From: <l@a.test>\r\nSubject: loose " + u.encode()
               + b"\r\n\r\n.not stuffed\r\n..stuffed\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    got = sink.wait_to(big)[0].data
    assert got.endswith(body.replace(b"\r\n..", b"\r\n.")[1:])
    verify_all(got, keys, 2)
    got = sink.wait_to(loose)[0].data
    assert got.endswith(b"\r\n\r\nnot stuffed\r\n.stuffed\r\n")
    verify_all(got, keys, 2)


def test_not_signed_for_outside_clients(make_tern, sink):
    """Mail from outside relay_networks (to a relay_domains recipient) is
    not signed even with one of our From domains."""
    t, keys = dual_tern(make_tern)
    u = uid()
    rcpt = f"in-{u}@inbound.test"
    t.send(f"x-{u}@a.test", [rcpt], message("outside", sender=f"x-{u}@a.test"),
           source="127.0.0.2")
    verify_all(sink.wait_to(rcpt)[0].data, keys, 0)


def test_simple_canonicalization(make_tern, sink):
    t, keys = dual_tern(make_tern, dkim_canonicalization="simple/simple")
    u = uid()
    rcpt = f"s-{u}@example.org"
    data = message(f"simple {u}", b"trailing  \r\n\tspace\r\n\r\n\r\n", sender=f"s-{u}@a.test",
                   extra=b"X-Folded: one\r\n  two \r\n")
    t.send(f"s-{u}@a.test", [rcpt], data)
    tags = verify_all(sink.wait_to(rcpt)[0].data, keys, 2)
    assert all(tg["c"] == "simple/simple" for tg in tags)


def spool_message(spool, qid):
    """(prefix or None, message content) of a queued message, read from the
    spool's segments with an independent reader of the record format
    (src/spool/spool_int.h): 48-byte little-endian headers, part A text
    lines, part B the stored body (dot-stuffed), spilled chunks named by
    "x SEG OFF LEN" lines."""
    segs = {int(p.stem, 16): p.read_bytes() for p in (spool / "log").glob("*.seg")}
    found = None
    for seq in sorted(segs):
        data, off = segs[seq], 64
        while off + 48 <= len(data):
            magic, typ, _v, _f, la, lb, q, _s, _ca, _cb, _r, _ch = struct.unpack_from(
                "<IBBHIIQQIIII", data, off)
            if magic != 0x31435254:
                break
            if typ == 1 and q == int(qid, 16):
                found = (seq, data[off + 48:off + 48 + la], data[off + 48 + la:off + 48 + la + lb])
            off += 48 + la + lb
    assert found, f"no MSG record for {qid}"
    _seq, part_a, part_b = found
    unesc = lambda v: re.sub(rb"%([0-9A-F]{2})", lambda x: bytes([int(x.group(1), 16)]), v)
    prefix, stored = None, b""
    for ln in part_a.split(b"\n"):
        if ln.startswith(b"p "):
            prefix = unesc(ln[2:])
        elif ln.startswith(b"x "):
            seg, o, n = (int(x) for x in ln[2:].split())
            stored += segs[seg][o:o + n]
    stored += part_b
    content = re.sub(rb"(^|\r\n)\.", rb"\1", stored)  # undo the dot-stuffing
    return prefix, content


def test_signatures_stored_in_spool(make_tern, sink):
    """The signatures are made once, at commit, and kept in the queue file:
    prefix + stored message verifies, and survives a restart."""
    t, keys = dual_tern(make_tern, smarthost="127.0.0.1:1", retry_initial="1h", retry_max="1h")
    u = uid()
    sender = f"q-{u}@a.test"
    t.send(sender, [f"q-{u}@example.org"], message("queued", sender=sender))
    qid = t.qid_of(sender)
    t.wait_event("signed", qid=qid)
    prefix, msg = spool_message(t.spool, qid)
    assert prefix is not None and prefix.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    fields, _ = split_received(msg)
    assert fields, "the stored message starts with our Received field"
    verify_all(prefix + msg, keys, 2)
    rc, _ = t.stop()
    assert rc == 0
    t.start()
    assert spool_message(t.spool, qid)[0] == prefix
    # The queue is read in the background once ternd listens (and with
    # several receive loops the greeting that start() waits for may come
    # before the main loop has begun reading it).
    wait_for(lambda: qid in t.ctl("queue", "list", "--json").stdout.decode(), WAIT,
             desc="the message listed after the restart")


def test_check_rejects_bad_keys(make_tern):
    t = make_tern(start=False)
    keys = Keys()
    keygen(t, keys, "a.test", "good")
    good = t.workdir / "a.test.good.key"
    bad = t.workdir / "bad.key"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    bad.chmod(0o600)
    t.update(dkim_sign=f"a.test:good:{good} b.test:bad:{bad}")
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 2, p.stdout
    assert re.search(r"tern\.conf:\d+: dkim_sign key file \".*bad\.key\": not a PEM private key",
                     p.stderr.decode()), p.stderr
    t.update(dkim_sign=f"a.test:good:{good}")
    good.chmod(0o640)
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 2 and b"readable by group or others" in p.stderr, p.stderr
    good.chmod(0o600)
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple", "relaxed/simple",
                                   "simple/relaxed"])
def test_headers_only_message_verifies(make_tern, sink, canon):
    """A message that is only a header section (no empty line, no body; by
    BDAT even without a final CRLF) is sent with its last line ended and
    the empty line that ends a header section, and that is what is signed:
    it verifies under every canonicalization pair."""
    t, keys = dual_tern(make_tern, dkim_canonicalization=canon)
    u = uid()
    r1, r2 = f"h1-{u}@example.org", f"h2-{u}@example.org"
    head = f"From: h-{u}@a.test\r\nTo: {r1}\r\nSubject: headers only {u}\r\n"
    t.send(f"h-{u}@a.test", [r1], (head + "X-Folded: one\r\n  two \r\n").encode())
    chunk = (head + "Message-ID: <" + u + "@a.test>").encode()  # no CRLF at the end
    with t.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<h-{u}@a.test>").code == 250
        assert c.cmd(f"RCPT TO:<{r2}>").code == 250
        c.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk)
        assert c.reply().code == 250
    got1, got2 = sink.wait_to(r1)[0].data, sink.wait_to(r2)[0].data
    for got in (got1, got2):
        tags = verify_all(got, keys, 2)
        assert all(tg["c"] == canon for tg in tags)
    assert got1.endswith(b"X-Folded: one\r\n  two \r\n\r\n"), got1[-60:]
    assert got2.endswith(f"Message-ID: <{u}@a.test>\r\n\r\n".encode()), got2[-60:]
