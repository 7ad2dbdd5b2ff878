"""8-bit mail to a next hop without 8BITMIME (RFC 6152 §3): tern converts it
to 7-bit MIME. The sink here does not advertise 8BITMIME; what it receives
must be 7-bit, parse as the same MIME structure, and every part must decode
(Python's email package) to the original bytes. Mail tern signed with DKIM
is signed again in its converted form (dkimpy verifies it); what cannot be
converted is bounced with 5.6.3."""

import email
import email.policy

import pytest

from sysutil import Sink, _SinkHandler, dsn_field, dsn_recipient_block, parse_dsn, uid, wait_for
from test_dkim import dual_tern, verify_all


class _No8BitHandler(_SinkHandler):
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [r for r in responses if r[4:].upper() != "8BITMIME"]


@pytest.fixture
def sink():
    """The smarthost sink of every ternd of these tests: no 8BITMIME."""
    s = Sink()
    s.controller.handler = _No8BitHandler(s)
    s.start()
    yield s
    s.stop()


def send_8bit(tern, sender, rcpt, data):
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{sender}> BODY=8BITMIME").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert c.cmd("DATA").code == 354
        stuffed = b"".join(b"." + ln if ln.startswith(b".") else ln
                           for ln in data.splitlines(keepends=True))
        c.send(stuffed + b".\r\n")
        r = c.reply()
        assert r.code == 250, str(r)


def leaves(msg):
    """(content type, decoded payload) of every leaf, depth first;
    message/rfc822 parts are walked into."""
    out = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_type() == "message/rfc822":
            continue
        out.append((part.get_content_type(), part.get_payload(decode=True)))
    return out


LATIN1 = ("Caf\u00e9 cr\u00e8me, na\u00efve. " * 8 + "\r\n").encode("latin-1") * 5
UTF8 = ("Gr\u00fc\u00dfe aus K\u00f6ln \u2014 \u65e5\u672c\u8a9e \U0001F426 =end= \r\n"
        "trailing space \r\n.dot line\r\n").encode() * 30
BINARY = (bytes(b for b in range(256) if b not in (0, 10, 13)) + b"\r\n") * 20


def mixed_message(u, sender, rcpt, inner_body=b"Inner 8-bit body: \xc3\xa9t\xc3\xa9\r\n"):
    inner = (b"From: x@inner.test\r\nSubject: inner\r\n\r\n" + inner_body)
    return (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: mixed {u}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"outer-b\"\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        "Preamble with \u00e9 in it\r\n"
        "--outer-b\r\nContent-Type: multipart/alternative; boundary=inner-b\r\n\r\n"
        "--inner-b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + LATIN1 + (
        "\r\n--inner-b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<p>").encode() + UTF8 + (
        b"</p>\r\n--inner-b--\r\n"
        b"--outer-b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=blob.bin\r\n\r\n") + BINARY + (
        b"\r\n--outer-b\r\nContent-Type: text/plain\r\n\r\nplain ascii part\r\n"
        b"--outer-b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ) + inner + b"--outer-b--\r\n"


def check_converted(orig, got):
    """got is 7-bit with the structure and decoded content of orig."""
    assert all(b < 0x80 for b in got), "8-bit octets sent to a 7-bit next hop"
    assert all(len(ln) <= 998 for ln in got.split(b"\r\n"))
    want = email.message_from_bytes(orig, policy=email.policy.compat32)
    have = email.message_from_bytes(got, policy=email.policy.compat32)
    assert [p.get_content_type() for p in have.walk()] == [
        p.get_content_type() for p in want.walk()]
    lw, lh = leaves(want), leaves(have)
    assert len(lw) == len(lh)
    for (tw, bw), (th, bh) in zip(lw, lh):
        assert tw == th
        assert bh == bw, f"{tw}: decoded content differs"
    return have


def test_8bit_message_converted_for_7bit_next_hop(make_tern, sink):
    t = make_tern()
    u = uid()
    sender = f"m-{u}@src.test"
    r1, r2 = f"mixed-{u}@example.org", f"plain-{u}@example.org"
    mixed = mixed_message(u, sender, r1)
    plain = (f"From: {sender}\r\nTo: {r2}\r\nSubject: no mime {u}\r\n\r\n").encode() + UTF8
    send_8bit(t, sender, r1, mixed)
    send_8bit(t, sender, r2, plain)
    tx1, tx2 = sink.wait_to(r1)[0], sink.wait_to(r2)[0]
    for tx in (tx1, tx2):
        assert not any(o.upper().startswith("BODY=") for o in tx.mail_options), tx.mail_options
    _, got1 = tx1.data.split(b"\r\n", 1)  # tern's Received field first
    got1 = got1[got1.index(b"From: "):]
    have = check_converted(mixed, got1)
    assert have["Content-Transfer-Encoding"] == "7bit"
    cte = [p["Content-Transfer-Encoding"] for p in have.walk() if not p.is_multipart()]
    assert "quoted-printable" in cte and "base64" in cte
    assert b"Preamble with ?? in it" in got1  # each 8-bit octet
    # the ASCII part is left as it was
    assert b"Content-Type: text/plain\r\n\r\nplain ascii part\r\n" in got1
    got2 = tx2.data[tx2.data.index(b"From: "):]
    have2 = check_converted(plain, got2)
    assert have2["MIME-Version"] == "1.0"
    assert have2.get_content_charset() == "utf-8"
    assert have2["Content-Transfer-Encoding"] == "quoted-printable"
    assert len(t.events("converted")) == 2, t.log_tail()


def test_8bit_message_still_plain_to_8bitmime_next_hop(make_tern, make_sink):
    """A next hop with 8BITMIME gets the message as it was."""
    s8 = make_sink("127.0.0.1")
    t = make_tern(smarthost=f"127.0.0.1:{s8.port}")
    u = uid()
    sender, rcpt = f"e-{u}@src.test", f"e-{u}@example.org"
    mixed = mixed_message(u, sender, rcpt)
    send_8bit(t, sender, rcpt, mixed)
    tx = s8.wait_to(rcpt)[0]
    assert "BODY=8BITMIME" in tx.mail_options
    assert tx.data.endswith(mixed)
    assert not t.events("converted")


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
def test_converted_message_is_signed_again(make_tern, sink, canon):
    t, keys = dual_tern(make_tern, dkim_canonicalization=canon)
    u = uid()
    sender, rcpt = f"d-{u}@a.test", f"d-{u}@example.org"
    mixed = mixed_message(u, sender, rcpt)
    send_8bit(t, sender, rcpt, mixed)
    got = sink.wait_to(rcpt)[0].data
    tags = verify_all(got, keys, 2)  # the converted form verifies
    assert all(tg["c"] == canon for tg in tags)
    body = got[got.index(b"\r\nFrom: ") + 2:]
    check_converted(mixed, body)
    ev = t.wait_event("converted")
    assert ev.get("dkim") == "resigned", ev["_raw"]


def test_unconvertible_message_bounces(make_tern, sink):
    """A multipart without a boundary holding 8-bit octets cannot be
    converted: a DSN with 5.6.3, never a broken 8-bit delivery. The DSN,
    which returns that message, goes through the same next hop: its
    returned copy loses the octets rather than the DSN being lost."""
    t = make_tern()
    u = uid()
    sender, rcpt = f"b-{u}@src.test", f"b-{u}@example.org"
    data = (f"From: {sender}\r\nSubject: broken {u}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed\r\n\r\n\u00e9t\u00e9\r\n").encode()
    send_8bit(t, sender, rcpt, data)
    dsn = sink.wait_dsn(sender)[0]
    _, _, blocks, _ = parse_dsn(dsn.data[dsn.data.index(b"From: "):])
    blk = dsn_recipient_block(blocks, rcpt)
    assert dsn_field(blk, "Status") == "5.6.3", blk
    assert "8BITMIME" in dsn_field(blk, "Diagnostic-Code")
    assert sink.to(rcpt) == []
    wait_for(lambda: t.queued() == [], desc="queue empty")
