"""Inbound checks (inbound_checks, dmarc_enforce): an external client (bound
to 127.0.0.2, outside relay_networks) sends to a relay_domains address;
dnsmasq publishes the SPF, DKIM and DMARC records; messages are signed with
dkimpy (python3-dkim). The sink must see exactly one Authentication-Results
field with the right results; DMARC p=reject is refused, p=quarantine held;
a forged field with our authserv-id is removed; a DNS server that never
answers gives temperror within inbound_check_timeout; trusted clients get
no field."""

import base64
import re
import socket
import subprocess
import time

import dkim
import pytest

from sysutil import WAIT, free_port, message, reject_count, wait_for

OUTSIDE = "127.0.0.2"  # not in relay_networks (127.0.0.1/32)
HOST = "tern.test"
RCPT = "user@inbound.test"


def genkey(path, alg):
    algo = ["-algorithm", "ED25519"] if alg == "ed25519" else [
        "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    subprocess.run(["openssl", "genpkey", *algo, "-out", str(path)], check=True,
                   capture_output=True)
    return path


def key_record(path, alg):
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    if alg == "ed25519":
        der = der[-32:]
    return f"v=DKIM1; k={alg}; p={base64.b64encode(der).decode()}"


def txt_strings(value):
    """dnsmasq splits --txt-record strings at commas: 255-byte pieces."""
    return ",".join(value[i:i + 255] for i in range(0, len(value), 255))


def sign(data, domain, selector, keypath, alg):
    if alg == "ed25519":
        # dkimpy wants the raw 32-byte Ed25519 seed, base64.
        der = subprocess.run(["openssl", "pkey", "-in", str(keypath), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        key = base64.b64encode(der[-32:])
        salg = b"ed25519-sha256"
    else:
        key = open(keypath, "rb").read()
        salg = b"rsa-sha256"
    sig = dkim.sign(data, selector.encode(), domain.encode(), key, signature_algorithm=salg,
                    include_headers=[b"from", b"to", b"subject", b"message-id"])
    return sig + data


@pytest.fixture
def world(dnsmasq, make_tern, tmp_path):
    keys = {}
    for alg in ("rsa", "ed25519"):
        keys[alg] = genkey(tmp_path / f"{alg}.key", alg)
    d = dnsmasq
    # good.test: SPF allows the client, DKIM keys, p=reject.
    d.txt("good.test", "v=spf1 ip4:127.0.0.2 -all")
    d.txt("rsa._domainkey.good.test", txt_strings(key_record(keys["rsa"], "rsa")))
    d.txt("ed._domainkey.good.test", txt_strings(key_record(keys["ed25519"], "ed25519")))
    d.txt("_dmarc.good.test", "v=DMARC1; p=reject")
    d.txt("client.test", "v=spf1 ip4:127.0.0.2 -all")
    # spf-fail.test: the client is not allowed, no DMARC record.
    d.txt("spf-fail.test", "v=spf1 ip4:192.0.2.1 -all")
    # rej.test / quar.test: SPF fails, unsigned, DMARC reject / quarantine.
    d.txt("rej.test", "v=spf1 -all")
    d.txt("_dmarc.rej.test", "v=DMARC1; p=reject")
    d.txt("quar.test", "v=spf1 -all")
    d.txt("_dmarc.quar.test", "v=DMARC1; p=quarantine")
    d.start()

    def make(**settings):
        conf = {"hostname": HOST, "dns_resolvers": f"127.0.0.1:{d.port}",
                "inbound_checks": "spf dkim dmarc", "smtpd_peername_lookup": "no"}
        conf.update(settings)
        return make_tern(**conf)

    class W:
        pass

    w = W()
    w.make = make
    w.keys = keys
    return w


def authres(data):
    """The unfolded Authentication-Results fields of a relayed message."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    fields = re.findall(r"(?im)^authentication-results:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", head)
    for f in fields:
        for ln in f.split("\r\n"):
            assert len(ln) <= 78, f"line over 78 characters: {ln!r}"
    return [" ".join(f.split()) for f in fields]


def relayed(sink, subject):
    msgs = wait_for(lambda: [m for m in sink.messages if subject.encode() in m.data],
                    WAIT, desc=f"message {subject} at the sink")
    assert len(msgs) == 1
    return msgs[0].data


def test_signed_aligned_pass(world, sink):
    t = world.make()
    data = message("signed-pass", sender="alice@good.test", to=RCPT)
    data = sign(data, "good.test", "rsa", world.keys["rsa"], "rsa")
    data = sign(data, "good.test", "ed", world.keys["ed25519"], "ed25519")
    t.send("alice@good.test", [RCPT], data, source=OUTSIDE)
    got = relayed(sink, "signed-pass")
    ar = authres(got)
    assert len(ar) == 1, ar
    a = ar[0]
    assert a.startswith(f"Authentication-Results: {HOST}; spf=pass smtp.mailfrom=alice@good.test;"), a
    assert "spf=pass smtp.helo=client.test" in a, a
    assert re.search(r"dkim=pass header.d=good.test header.s=ed header.b=\S{8};", a), a
    assert re.search(r"dkim=pass header.d=good.test header.s=rsa header.b=\S{8};", a), a
    assert a.endswith("dmarc=pass (p=reject dis=none) header.from=good.test"), a
    # The message itself is intact: both signatures still verify for the next hop.
    assert got.count(b"DKIM-Signature") == 2
    t.wait_event("result", dmarc="pass", from_domain="good.test")


def test_bad_signature(world, sink):
    t = world.make()
    data = message("bad-sig", sender="alice@good.test", to=RCPT)
    data = sign(data, "good.test", "rsa", world.keys["rsa"], "rsa")
    data = data.replace(b"hello\r\n", b"hellO\r\n")  # the body changed after signing
    # The HELO identity is outside too, so only the signature could pass DMARC.
    t.send("alice@good.test", [RCPT], data, source=OUTSIDE)
    a = authres(relayed(sink, "bad-sig"))
    assert len(a) == 1, a
    assert "dkim=fail (body hash mismatch) header.d=good.test header.s=rsa" in a[0], a
    # SPF still passes and is aligned: DMARC passes.
    assert "dmarc=pass" in a[0], a


def test_spf_fail(world, sink):
    t = world.make()
    t.send("bob@spf-fail.test", [RCPT], message("spf-fail", sender="bob@spf-fail.test", to=RCPT),
           source=OUTSIDE)
    a = authres(relayed(sink, "spf-fail"))
    assert len(a) == 1, a
    assert "spf=fail smtp.mailfrom=bob@spf-fail.test" in a[0], a
    assert "dkim=none" in a[0], a
    assert "dmarc=none header.from=spf-fail.test" in a[0], a


def dmarc_send(t, sender, subject):
    """One transaction from outside; the reply to the data."""
    with t.raw(source=OUTSIDE) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd(f"MAIL FROM:<{sender}>").code == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(message(subject, sender=sender, to=RCPT) + b".\r\n")
        r = c.reply()
        c.cmd("QUIT")
        return r


def test_dmarc_reject_enforced(world, sink):
    port = free_port()
    t = world.make(dmarc_enforce="yes", metrics_listen=f"127.0.0.1:{port}")
    r = dmarc_send(t, "mallory@rej.test", "dmarc-reject")
    assert r.code == 550 and r.enh == "5.7.1", str(r)
    assert reject_count(port, "dmarc") == 1
    assert "rej.test" in r.text
    t.wait_event("result", dmarc="fail", action="reject")
    assert t.queued() == []
    # Not enforced: the same message goes through, marked.
    t2 = world.make()
    r = dmarc_send(t2, "mallory@rej.test", "dmarc-reject-reported")
    assert r.code == 250, str(r)
    a = authres(relayed(sink, "dmarc-reject-reported"))
    assert "dmarc=fail (p=reject dis=none) header.from=rej.test" in a[0], a


def test_dmarc_quarantine_held(world, sink):
    t = world.make(dmarc_enforce="yes")
    r = dmarc_send(t, "mallory@quar.test", "dmarc-quarantine")
    assert r.code == 250, str(r)
    qid = t.qid_of("mallory@quar.test")
    p = t.ctl("queue", "list", "--json")
    rows = [ln for ln in p.stdout.decode().splitlines() if qid in ln]
    assert rows and '"held":true' in rows[0].replace(" ", ""), p.stdout.decode()
    t.wait_event("result", dmarc="fail", action="quarantine")
    assert not [m for m in sink.messages if b"dmarc-quarantine" in m.data]


def test_forged_authres_removed(world, sink):
    t = world.make()
    extra = (b"Authentication-Results: tern.test; spf=pass smtp.mailfrom=x@good.test;\r\n"
             b"\tdkim=pass header.d=good.test; dmarc=pass header.from=good.test\r\n"
             b"Authentication-Results: (comment) TERN.TEST; dkim=pass\r\n"
             b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@y.test\r\n")
    data = message("forged", sender="bob@spf-fail.test", to=RCPT, extra=extra)
    t.send("bob@spf-fail.test", [RCPT], data, source=OUTSIDE)
    got = relayed(sink, "forged")
    a = authres(got)
    assert len(a) == 2, a
    assert a[0].startswith("Authentication-Results: tern.test; spf=fail"), a
    assert a[1] == "Authentication-Results: other.example; spf=pass smtp.mailfrom=x@y.test", a
    t.wait_event("authres_removed", fields="2")


def test_dns_never_answers(world, sink):
    # A UDP socket that takes queries and never answers.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        t = world.make(dns_resolvers=f"127.0.0.1:{silent.getsockname()[1]}",
                       inbound_check_timeout="2s")
        data = message("dns-silent", sender="alice@good.test", to=RCPT)
        data = sign(data, "good.test", "rsa", world.keys["rsa"], "rsa")
        start = time.monotonic()
        r = dmarc_send_data(t, "alice@good.test", data)
        took = time.monotonic() - start
        assert r.code == 250, str(r)
        assert took < 10, f"the answer took {took:.1f}s"
        a = authres(relayed(sink, "dns-silent"))
        assert len(a) == 1, a
        assert "spf=temperror smtp.mailfrom=alice@good.test" in a[0], a
        assert "dkim=temperror" in a[0], a
        assert "dmarc=temperror header.from=good.test" in a[0], a
    finally:
        silent.close()


def dmarc_send_data(t, sender, data):
    with t.raw(source=OUTSIDE) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd(f"MAIL FROM:<{sender}>").code == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(data + b".\r\n")
        r = c.reply(timeout=30)
        c.cmd("QUIT")
        return r


def test_trusted_client_unchecked(world, sink):
    t = world.make()
    extra = b"Authentication-Results: tern.test; dkim=pass\r\n"
    t.send("alice@good.test", [RCPT],
           message("trusted", sender="alice@good.test", to=RCPT, extra=extra))
    a = authres(relayed(sink, "trusted"))
    # Nothing added, nothing removed: a trusted client's mail is left alone.
    assert a == ["Authentication-Results: tern.test; dkim=pass"], a
    assert not t.events("result")


def test_header_section_bound(world, sink):
    t = world.make()
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 900) for i in range(300))
    with t.raw(source=OUTSIDE) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@good.test>").code == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(message("big-header", sender="a@good.test", to=RCPT, extra=big) + b".\r\n")
        r = c.reply()
        assert r.code == 552 and r.enh == "5.3.4", str(r)
        # The session goes on.
        assert c.cmd("RSET").code == 250
    assert t.queued() == []


def test_bdat_and_dot_lines(world, sink):
    """BDAT (not stuffed) and DATA with lines starting with dots: the
    signature still verifies, the header section is held either way."""
    t = world.make()
    body = b"hello\r\n.one dot\r\n..two dots\r\n.\r\nend\r\n"
    extra = b"Authentication-Results: tern.test; dkim=pass\r\n"
    data = message("bdat-dots", sender="alice@good.test", to=RCPT, body=body, extra=extra)
    data = sign(data, "good.test", "rsa", world.keys["rsa"], "rsa")
    with t.raw(source=OUTSIDE) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<alice@good.test>").code == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        # Chunks that split the header section mid-line and mid-CRLF.
        cuts = [0, 7, 40, data.index(b"\r\n\r\n") + 1, data.index(b"\r\n\r\n") + 3, len(data)]
        for a, b in zip(cuts, cuts[1:]):
            last = b" LAST" if b == len(data) else b""
            c.send(b"BDAT %d%s\r\n" % (b - a, last) + data[a:b])
            assert c.reply().code == 250
        c.cmd("QUIT")
    got = relayed(sink, "bdat-dots")
    a = authres(got)
    assert len(a) == 1, a
    assert "dkim=pass header.d=good.test header.s=rsa" in a[0], a
    assert b"\r\n..two dots\r\n" in got  # stuffed again on the way out, as sent
    # The same by DATA (dot-stuffed by the client).
    stuffed = sign(message("data-dots", sender="alice@good.test", to=RCPT, body=body),
                   "good.test", "rsa", world.keys["rsa"], "rsa").replace(b"\r\n.", b"\r\n..")
    with t.raw(source=OUTSIDE) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<alice@good.test>").code == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(stuffed + b".\r\n")
        assert c.reply().code == 250
        c.cmd("QUIT")
    a = authres(relayed(sink, "data-dots"))
    assert "dkim=pass header.d=good.test header.s=rsa" in a[0], a


def test_no_from_permerror(world, sink):
    t = world.make()
    data = (b"To: " + RCPT.encode() + b"\r\nSubject: no-from\r\n\r\nhi\r\n")
    t.send("alice@good.test", [RCPT], data, source=OUTSIDE)
    a = authres(relayed(sink, "no-from"))
    assert a[0].endswith("dkim=none; dmarc=permerror"), a


def test_client_gone_while_checking(world, sink):
    """The client leaves while the checks wait for DNS: nothing is queued,
    ternd goes on (and ASan sees no use of the freed session)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        t = world.make(dns_resolvers=f"127.0.0.1:{silent.getsockname()[1]}",
                       inbound_check_timeout="30s")
        data = sign(message("gone", sender="alice@good.test", to=RCPT), "good.test", "rsa",
                    world.keys["rsa"], "rsa")
        c = t.raw(source=OUTSIDE)
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<alice@good.test>").code == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(data + b".\r\n")
        # The data is in once the silent server has been asked for the key.
        silent.settimeout(WAIT)
        while b"_domainkey" not in silent.recvfrom(4096)[0]:
            pass
        c.close()
        t.wait_event("disconnect")
        assert t.queued() == []
        assert not t.events("result")
        # Still serving.
        t.send("x@good.test", [RCPT], message("after-gone", sender="x@good.test", to=RCPT))
        relayed(sink, "after-gone")
    finally:
        silent.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_shutdown_while_checking(world, sink, workers):
    """SIGTERM while a message waits for its checks: the client is told 421,
    nothing is queued, ternd exits 0 (and ASan sees the lookups cancelled
    before their resolver goes)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        t = world.make(dns_resolvers=f"127.0.0.1:{silent.getsockname()[1]}",
                       inbound_check_timeout="60s", workers=workers)
        data = sign(message("shutdown", sender="alice@good.test", to=RCPT), "good.test", "rsa",
                    world.keys["rsa"], "rsa")
        with t.raw(source=OUTSIDE) as c:
            assert c.cmd("EHLO client.test").code == 250
            assert c.cmd("MAIL FROM:<alice@good.test>").code == 250
            assert c.cmd(f"RCPT TO:<{RCPT}>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(data + b".\r\n")
            silent.settimeout(WAIT)
            while b"_dmarc" not in silent.recvfrom(4096)[0]:
                pass
            rc, _ = t.stop()
            assert rc == 0
            r = c.reply()
            assert r.code == 421, str(r)
        assert not [m for m in sink.messages if b"shutdown" in m.data]
    finally:
        silent.close()


def test_malformed_header_ends_early(world, sink):
    """A message whose header section runs into a line that is no field
    (and never has an empty line) is not held whole: larger than the hold's
    bound, it is still taken, as from a trusted client."""
    t = world.make()
    extra = b"Authentication-Results: tern.test; dkim=pass\r\n"
    body = b"".join(b"line %d of a body with no empty line before it\r\n" % i
                    for i in range(8000))  # about 400 KB
    data = (b"From: bob@spf-fail.test\r\nSubject: malformed\r\n" + extra +
            b"this line is no header field\r\n" + body)
    t.send("bob@spf-fail.test", [RCPT], data, source=OUTSIDE)
    got = relayed(sink, "malformed")
    a = authres(got)
    assert len(a) == 1 and a[0].startswith("Authentication-Results: tern.test; spf=fail"), a
    assert b"this line is no header field\r\n" + body in got
