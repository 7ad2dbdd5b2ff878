"""Limits and refusals: message size, relay policy, line lengths, SMTP
smuggling, recipient count, timeouts and session limits."""

import time

import pytest

from sysutil import SLOW, RawSMTP, ehlo_keywords, message, split_received, uid, wait_for


def barrier(tern, sink, tag):
    """Relay one good message and wait for it: everything the daemon
    accepted before it has had the same chance to reach the sink."""
    rcpt = f"barrier-{tag}@example.org"
    tern.send(f"barrier-{tag}@src.test", [rcpt], message(f"barrier {tag}"))
    return sink.wait_to(rcpt)


def test_size_limit(make_tern, sink):
    tern = make_tern(max_message_size=10000)
    u = uid()
    big = message(f"big {u}", b"".join(b"%05d" % i + b"x" * 70 + b"\r\n" for i in range(200)))
    assert len(big) > 10000
    with tern.raw() as c:
        kw = ehlo_keywords(c.ehlo())
        assert kw.get("SIZE", "").strip() == "10000", kw
        r = c.cmd(f"MAIL FROM:<big-{u}@src.test> SIZE=20000")
        assert r.code == 552 and r.enh == "5.3.4", str(r)
        # declared small, actually big
        assert c.cmd(f"MAIL FROM:<big-{u}@src.test> SIZE=5000").code == 250
        assert c.cmd(f"RCPT TO:<big-{u}@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(big + b".\r\n")
        r = c.reply()
        assert r.code == 552 and r.enh == "5.3.4", str(r)
        assert tern.queued() == [], "a refused message must not be queued"
        # and the same with BDAT
        assert c.cmd(f"MAIL FROM:<big-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<bigb-{u}@example.org>").code == 250
        c.send(f"BDAT {len(big)} LAST\r\n".encode() + big)
        r = c.reply()
        assert r.code == 552 and r.enh == "5.3.4", str(r)
        # the session goes on
        r = c.cmd("NOOP")
        assert r.code == 250, str(r)
    assert tern.queued() == []
    barrier(tern, sink, u)
    assert sink.to(f"big-{u}@example.org") == [] and sink.to(f"bigb-{u}@example.org") == []
    assert len(sink.snapshot()) == 1


def test_bdat_chunk_over_limit_closes(make_tern, sink):
    """A BDAT chunk bigger than the whole size limit cannot be skipped
    usefully: 552 5.3.4 at once and the connection ends; nothing queued."""
    tern = make_tern(max_message_size=10000)
    u = uid()
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<bd-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<bd-{u}@example.org>").code == 250
        r = c.cmd("BDAT 1000000000 LAST")
        assert r.code == 552 and r.enh == "5.3.4", str(r)
        assert c.wait_closed(5 * SLOW)
    assert tern.queued() == []


def test_open_relay_refused(make_tern, sink):
    tern = make_tern(relay_networks="127.0.0.1/32", relay_domains="inbound.test")
    u = uid()
    with tern.raw(source="127.0.0.2") as c:
        c.ehlo("outsider.test")
        assert c.cmd(f"MAIL FROM:<out-{u}@elsewhere.test>").code == 250
        for victim in (
            f"victim-{u}@example.org",
            f"victim-{u}@sub.inbound.test",
            f"victim-{u}@inbound.test.example.org",
            f"victim-{u}@[127.0.0.1]",
        ):
            r = c.cmd(f"RCPT TO:<{victim}>")
            assert r.code in (554, 550) and r.enh == "5.7.1", f"{victim}: {r}"
        # a source route must not smuggle a foreign domain behind a listed one
        r = c.cmd(f"RCPT TO:<@inbound.test:victim-{u}@example.org>")
        assert r.code >= 500, f"source-routed rcpt accepted: {r}"
        r = c.cmd(f"RCPT TO:<in-{u}@inbound.test>")
        assert r.code == 250, str(r)
        r = c.cmd(f"RCPT TO:<in2-{u}@INBOUND.Test>")
        assert r.code == 250, str(r)
        assert c.cmd("DATA").code == 354
        body = message(f"inbound {u}")
        c.send(body + b".\r\n")
        assert c.reply().code == 250
    tx = sink.wait_to(f"in-{u}@inbound.test")[0]
    assert split_received(tx.data)[1] == body
    assert {r.lower() for r in tx.rcpt_tos} <= {f"in-{u}@inbound.test", f"in2-{u}@inbound.test"}
    for t in sink.snapshot():
        for r in t.rcpt_tos:
            assert "victim" not in r, f"relayed for an outsider: {t.rcpt_tos}"
    # the same recipient from inside relay_networks is fine
    with tern.raw(source="127.0.0.1") as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<in-{u}@src.test>").code == 250
        r = c.cmd(f"RCPT TO:<victim-{u}@example.org>")
        assert r.code == 250, str(r)


def test_command_line_limit(tern):
    with tern.raw() as c:
        c.ehlo()
        ok = "NOOP " + "a" * (512 - 2 - 5)
        assert len(ok) + 2 == 512
        r = c.cmd(ok)
        assert r.code == 250, f"a 512-octet command line is allowed: {r}"
        for n in (513, 600, 5000):
            r = c.cmd("NOOP " + "b" * (n - 2 - 5))
            assert r.code == 500 and r.enh and r.enh.startswith("5.5."), f"{n}: {r}"
            r = c.cmd("NOOP")
            assert r.code == 250, f"session goes on after a long line ({n}): {r}"


def test_text_line_limit(tern, sink):
    u = uid()
    long_line = message(f"long {u}", b"y" * 1200 + b"\r\nafter\r\n")
    ok_line = message(f"ok {u}", b"z" * 998 + b"\r\nafter\r\n")
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<l-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<long-{u}@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(long_line + b".\r\n")
        r = c.reply()
        assert r.code == 500 and r.enh and r.enh.startswith("5.5."), str(r)
        assert c.cmd("NOOP").code == 250
        assert c.cmd(f"MAIL FROM:<l-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<ok-{u}@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(ok_line + b".\r\n")
        r = c.reply()
        assert r.code == 250, f"a 1000-octet line (with CRLF) is allowed: {r}"
    assert split_received(sink.wait_to(f"ok-{u}@example.org")[0].data)[1] == ok_line
    assert sink.to(f"long-{u}@example.org") == []
    wait_for(lambda: tern.queued() == [], desc="queue empty")


SMUGGLE = ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r", "\n.\r"]


@pytest.mark.parametrize("variant", SMUGGLE, ids=[repr(v) for v in SMUGGLE])
def test_smtp_smuggling(tern, sink, variant):
    u = uid()
    smuggled_rcpt = f"smuggled-{u}@example.org"
    payload = (
        f"From: a@src.test\r\nSubject: smuggle {u}\r\n\r\nhello"
        + variant
        + f"MAIL FROM:<evil-{u}@x.test>\r\nRCPT TO:<{smuggled_rcpt}>\r\nDATA\r\nsmuggled\r\n"
        + "\r\n.\r\n"
    ).encode()
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<front-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<front-{u}@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(payload)
        r = c.reply()
        assert r.code == 550 and r.enh == "5.5.2", f"bare CR/LF must be refused with 550 5.5.2: {r}"
        # exactly one reply: the next one belongs to our NOOP
        r2 = c.cmd("NOOP")
        assert r2.code == 250 and r2.enh == "2.0.0", f"extra reply after the data: {r2}"
        assert c.buf == b"", f"unexpected bytes from the server: {c.buf!r}"
    barrier(tern, sink, u)
    assert sink.to(smuggled_rcpt) == [], "smuggled message was relayed"
    assert sink.to(f"front-{u}@example.org") == [], "message with bare CR/LF was relayed"
    assert not any(b"smuggled" in t.data for t in sink.snapshot())
    assert tern.queued() == [] or wait_for(lambda: tern.queued() == [], desc="queue empty")


def test_max_recipients(make_tern, sink):
    tern = make_tern(max_recipients=3)
    u = uid()
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<m-{u}@src.test>").code == 250
        for i in range(3):
            assert c.cmd(f"RCPT TO:<r{i}-{u}@example.org>").code == 250
        r = c.cmd(f"RCPT TO:<r3-{u}@example.org>")
        assert r.code == 452 and r.enh == "4.5.3", str(r)
        assert c.cmd("DATA").code == 354
        c.send(message(f"max rcpt {u}") + b".\r\n")
        assert c.reply().code == 250
    got = set()
    wait_for(lambda: len({r for t in sink.snapshot() for r in t.rcpt_tos}) >= 3, desc="3 recipients")
    for t in sink.snapshot():
        got.update(t.rcpt_tos)
    assert got == {f"r{i}-{u}@example.org" for i in range(3)}, got


def test_idle_timeout(make_tern):
    tern = make_tern(smtp_timeout="2s", data_timeout="2s")
    with tern.raw() as c:
        c.ehlo()
        t0 = time.monotonic()
        r = c.reply(timeout=15 * SLOW)
        took = time.monotonic() - t0
        assert r.code == 421 and r.enh == "4.4.2", str(r)
        assert 1.5 <= took <= 10 * SLOW, took
        assert c.wait_closed(5 * SLOW), "connection must be closed after 421"
    # also while waiting for message data
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<t@src.test>").code == 250
        assert c.cmd("RCPT TO:<t@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: partial\r\n")
        r = c.reply(timeout=15 * SLOW)
        assert r.code == 421 and r.enh and r.enh.startswith("4."), str(r)
        assert c.wait_closed(5 * SLOW)
    assert tern.queued() == []


def test_sessions_per_ip(make_tern):
    tern = make_tern(max_sessions_per_ip=2)
    a = tern.raw(source="127.0.0.3")
    b = tern.raw(source="127.0.0.3")
    try:
        with RawSMTP(tern.port, source="127.0.0.3") as c:
            r = c.reply()
            assert r.code == 421 and r.enh == "4.7.0", str(r)
            assert c.wait_closed(5 * SLOW)
        # another address is not affected
        with tern.raw(source="127.0.0.4") as d:
            assert d.cmd("NOOP").code == 250
        # and the first two still work
        assert a.cmd("NOOP").code == 250 and b.cmd("NOOP").code == 250
    finally:
        b.close()
    # once a session ends there is room again
    def third_ok():
        with RawSMTP(tern.port, source="127.0.0.3") as c:
            return c.reply().code == 220

    wait_for(third_ok, 10 * SLOW, interval=0.2, desc="a slot freed after a session closed")
    a.close()


def test_nul_in_data_refused(tern, sink):
    u = uid()
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<nul-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<nul-{u}@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: nul\r\n\r\nbefore\x00after\r\n.\r\n")
        r = c.reply()
        assert r.code == 550 and r.enh == "5.6.0", str(r)
        assert c.cmd("NOOP").code == 250
    barrier(tern, sink, u)
    assert sink.to(f"nul-{u}@example.org") == []


def test_too_many_errors(make_tern):
    tern = make_tern(max_errors=3)
    with tern.raw() as c:
        c.ehlo()
        codes = []
        closed = False
        for _ in range(6):
            try:
                r = c.cmd("BOGUS")
            except (EOFError, OSError):
                closed = True
                break
            codes.append((r.code, r.enh))
            if r.code == 421:
                break
        assert (421, "4.7.0") in codes, codes
        assert len(codes) <= 4, f"421 after max_errors=3 errors: {codes}"
        assert closed or c.wait_closed(5 * SLOW)
