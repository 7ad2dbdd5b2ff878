"""Outbound delivery: retries, DSNs, expiry, concurrency limits."""

from sysutil import (
    WAIT,
    dsn_field,
    dsn_recipient_block,
    message,
    parse_dsn,
    split_received,
    uid,
    wait_for,
)


def test_retry_after_451(tern, sink):
    u = uid()
    sender = f"r-{u}@src.test"
    rcpt = f"retry-{u}@example.org"
    sink.rcpt_replies[rcpt] = "451 4.3.0 sink is busy, come back"
    data = message(f"retry {u}", sender=sender)
    tern.send(sender, [rcpt], data)
    qid = tern.qid_of(sender)
    d = tern.wait_event("deferred", qid=qid)
    assert d.get("to") == rcpt, d["_raw"]
    assert "4.3.0" in str(d.get("reason")) or "come back" in str(d.get("reason")), d["_raw"]
    assert str(d.get("attempts")) == "1", d["_raw"]
    assert sink.to(rcpt) == []
    assert qid in tern.queued(), "a deferred message stays in the queue"
    # the next attempt fails too, then the sink recovers
    wait_for(lambda: sink.rcpt_attempt_count(rcpt) >= 2, desc="a second attempt")
    sink.rcpt_replies.clear()
    tx = sink.wait_to(rcpt)[0]
    assert split_received(tx.data)[1] == data
    dl = tern.wait_event("delivered", qid=qid)
    assert dl.get("to") == rcpt
    evs = [r for r in tern.events(qid=qid) if r.get("event") in ("deferred", "delivered")]
    names = [r["event"] for r in evs]
    assert names[0] == "deferred" and names[-1] == "delivered" and names.count("delivered") == 1, names
    wait_for(lambda: qid not in tern.queued(), desc="queue file removed after delivery")
    assert len(sink.to(rcpt)) == 1
    assert sink.from_null_to(sender) == [], "no DSN for a delivered message"
    # the interface names the key of the next retry time "next"
    assert d.get("next"), d["_raw"]


def test_dsn_on_permanent_failure(tern, sink):
    u = uid()
    sender = f"dsn-{u}@src.test"
    ok, bad = f"ok-{u}@example.org", f"permfail-{u}@example.org"
    data = message(f"dsn subject {u}", b"original body\r\n", sender=sender)
    tern.send(sender, [ok, bad], data)
    qid = tern.qid_of(sender)
    dsn = sink.wait_dsn(sender)
    assert len(dsn) == 1
    tx = dsn[0]
    assert tx.mail_from == "" and [r.lower() for r in tx.rcpt_tos] == [sender]
    _, body = split_received(tx.data)
    msg, per_msg, per_rcpt, parts = parse_dsn(body)
    assert dsn_field(per_msg, "Reporting-MTA"), "Reporting-MTA is required"
    blk = dsn_recipient_block(per_rcpt, bad)
    assert dsn_field(blk, "Action").lower() == "failed"
    assert dsn_field(blk, "Status").split()[0] == "5.1.1"
    diag = dsn_field(blk, "Diagnostic-Code")
    assert diag and diag.lower().startswith("smtp;"), diag
    assert "no such user here (sink)" in diag, diag
    for b in per_rcpt:
        assert ok not in (dsn_field(b, "Final-Recipient") or ""), "the delivered rcpt is not reported"
    # the original comes back (whole or its headers)
    orig = [p for p in parts if p.get_content_type() in ("message/rfc822", "text/rfc822-headers")]
    assert orig, [p.get_content_type() for p in parts]
    assert f"dsn subject {u}" in orig[0].as_string()
    assert msg["To"] is None or sender in msg["To"]
    # the good recipient got it once; the bad one was tried once, not retried
    assert len(sink.wait_to(ok)) == 1
    b = tern.wait_event("bounced", qid=qid)
    assert b.get("to") == bad and "5.1.1" in str(b.get("reason")), b["_raw"]
    wait_for(lambda: tern.queued() == [], desc="queue empty after the DSN went out")
    assert len(sink.to(ok)) == 1
    assert sink.rcpt_attempt_count(bad) == 1, "a permanent failure is not retried"
    assert len(sink.from_null_to(sender)) == 1


def test_dsn_notify_never_and_null_sender(tern, sink):
    u = uid()
    s1, s2 = f"never-{u}@src.test", f"null-{u}@src.test"
    with tern.smtp() as s:
        s.ehlo("client.test")
        # NOTIFY=NEVER: no DSN
        assert s.mail(s1)[0] == 250
        assert s.rcpt(f"permfail-n-{u}@example.org", options=["NOTIFY=NEVER"])[0] == 250
        assert s.rcpt(f"ok-n-{u}@example.org")[0] == 250
        assert s.data(message(f"never {u}", sender=s1))[0] == 250
        # from the null sender: no bounce of a bounce
        assert s.mail("")[0] == 250
        assert s.rcpt(f"permfail-z-{u}@example.org")[0] == 250
        assert s.data(message(f"null {u}", sender=s2))[0] == 250
    q1 = tern.qid_of(s1)
    tern.wait_event("bounced", qid=q1, to=f"permfail-n-{u}@example.org")
    sink.wait_to(f"ok-n-{u}@example.org")
    recv = wait_for(lambda: [r for r in tern.events("received") if r.get("from") in ("", "<>")
                             and r.get("qid") != q1], desc="received line of the null-sender message")
    q2 = recv[0]["qid"]
    tern.wait_event("bounced", qid=q2)
    wait_for(lambda: tern.queued() == [], desc="queue empty")
    # barrier: a DSN that must be made, made after the two failures above
    s3 = f"barrier-{u}@src.test"
    tern.send(s3, [f"permfail-b-{u}@example.org"], message(f"barrier {u}", sender=s3))
    sink.wait_dsn(s3)
    wait_for(lambda: tern.queued() == [], desc="queue empty")
    assert sink.from_null_to(s1) == [], "DSN sent despite NOTIFY=NEVER"
    nulls = [t for t in sink.snapshot() if t.mail_from == ""]
    assert len(nulls) == 1 and [r.lower() for r in nulls[0].rcpt_tos] == [s3], [
        (t.mail_from, t.rcpt_tos) for t in nulls
    ]
    assert all(r for t in sink.snapshot() for r in t.rcpt_tos), "a message was sent to <>"


def test_expiry(make_tern, sink):
    tern = make_tern(max_queue_lifetime="3s", retry_initial="1s", retry_max="1s")
    u = uid()
    sender = f"exp-{u}@src.test"
    rcpt = f"tempfail-exp-{u}@example.org"
    tern.send(sender, [rcpt], message(f"expire {u}", sender=sender))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    dsn = sink.wait_dsn(sender, timeout=WAIT + 10)
    assert len(dsn) == 1
    _, per_msg, per_rcpt, _ = parse_dsn(split_received(dsn[0].data)[1])
    blk = dsn_recipient_block(per_rcpt, rcpt)
    assert dsn_field(blk, "Action").lower() == "failed"
    assert dsn_field(blk, "Status").split()[0] == "4.4.7"
    assert tern.events("expired", qid=qid), "an expired line with the qid"
    assert sink.rcpt_attempt_count(rcpt) >= 2, "retried before expiring"
    wait_for(lambda: tern.queued() == [], desc="queue empty after expiry")
    assert sink.to(rcpt) == []


def test_mail_and_data_failures(tern, sink):
    """Temporary failure at MAIL, then permanent failure at DATA."""
    u = uid()
    sender = f"md-{u}@src.test"
    rcpt = f"md-{u}@example.org"
    sink.mail_reply = lambda a: "451 4.3.2 not now" if a == sender else None
    tern.send(sender, [rcpt], message(f"mail fail {u}", sender=sender))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    sink.mail_reply = None
    sink.data_reply = lambda env: "554 5.6.0 content refused" if env.mail_from == sender else None
    dsn = sink.wait_dsn(sender)
    _, _, per_rcpt, _ = parse_dsn(split_received(dsn[0].data)[1])
    blk = dsn_recipient_block(per_rcpt, rcpt)
    assert dsn_field(blk, "Status").split()[0] == "5.6.0"
    assert "content refused" in (dsn_field(blk, "Diagnostic-Code") or "")
    assert sink.to(rcpt) == []


def test_delivery_concurrency_limit(make_tern, sink):
    tern = make_tern(delivery_concurrency=2)
    sink.data_delay = 0.4
    u = uid()
    n = 8
    for i in range(n):
        tern.send(f"c{i}-{u}@src.test", [f"c{i}-{u}@example.org"], message(f"conc {i} {u}"))
    for i in range(n):
        sink.wait_to(f"c{i}-{u}@example.org", timeout=WAIT + 10)
    assert 1 <= sink.sessions_peak <= 2, f"peak concurrent sessions to the smarthost: {sink.sessions_peak}"


def test_connection_refused_is_retried(make_tern, sink):
    """The smarthost is down: deferral, then delivery once it is up."""
    from sysutil import Sink, free_port

    dead = free_port()
    tern = make_tern(smarthost=f"127.0.0.1:{dead}", connect_timeout="2s")
    u = uid()
    sender = f"down-{u}@src.test"
    rcpt = f"down-{u}@example.org"
    tern.send(sender, [rcpt], message(f"down {u}", sender=sender))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    later = Sink(port=dead)
    later.start()
    try:
        tx = later.wait_to(rcpt, timeout=WAIT + 10)[0]
        assert tx.mail_from == sender
        tern.wait_event("delivered", qid=qid)
    finally:
        later.stop()


def test_relayed_dsn_when_next_hop_lacks_dsn(tern, sink):
    """NOTIFY=SUCCESS to a next hop that does not offer DSN (the aiosmtpd sink
    does not): tern itself reports Action: relayed (RFC 3461 §6.2.3), in a
    report of its own; a recipient without NOTIFY=SUCCESS gets no notice."""
    u = uid()
    sender = f"succ-{u}@src.test"
    asked, quiet = f"ok-s-{u}@example.org", f"ok-q-{u}@example.org"
    with tern.smtp() as s:
        s.ehlo("client.test")
        assert s.mail(sender, options=["RET=HDRS", f"ENVID=env{u}"])[0] == 250
        assert s.rcpt(asked, options=["NOTIFY=SUCCESS,FAILURE"])[0] == 250
        assert s.rcpt(quiet)[0] == 250
        assert s.data(message(f"success {u}", sender=sender))[0] == 250
    sink.wait_to(asked)
    dsn = sink.wait_dsn(sender)
    assert len(dsn) == 1, [t.rcpt_tos for t in dsn]
    _, per_msg, blocks, parts = parse_dsn(dsn[0].data)
    assert dsn_field(per_msg, "Original-Envelope-Id") == f"env{u}", per_msg
    b = dsn_recipient_block(blocks, asked)
    assert dsn_field(b, "Action").lower() == "relayed", b
    assert dsn_field(b, "Status").startswith("2."), b
    assert len(blocks) == 1, "only the recipient that asked is reported"
    # RET=HDRS: headers only, never the body
    assert parts[2].get_content_type() == "text/rfc822-headers", parts[2].get_content_type()


def _report_part(data, ctype):
    """The raw bytes of the DSN part of type ctype (header and content)."""
    start = data.index(b"Content-Type: " + ctype)
    end = data.index(b"\r\n--=_tern", start)
    return data[start:end]


def test_utf8_reply_kept_in_global_dsn(tern, sink):
    """A next hop's UTF-8 reply text stays UTF-8 in the DSN of an SMTPUTF8
    message (message/global-delivery-status, RFC 6533), and becomes ASCII
    in the plain message/delivery-status of an ordinary message (invalid
    UTF-8 and control characters: tests/unit/test_delivery.c)."""
    u = uid()
    text = "Empfänger unbekannt: 受信者 ✉"
    sink.rcpt_rule = lambda a: (f"550 5.1.1 {text} end" if a.startswith("permfail") else None)
    s8, s7 = f"jörg-{u}@src.test", f"plain-{u}@src.test"
    r8, r7 = f"permfail-ü-{u}@example.org", f"permfail-a-{u}@example.org"
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{s8}> BODY=8BITMIME SMTPUTF8".encode()).code == 250
        assert c.cmd(f"RCPT TO:<{r8}>".encode()).code == 250
        assert c.cmd("DATA").code == 354
        c.send(f"From: <{s8}>\r\nSubject: u8 {u}\r\n\r\nGrüße\r\n.\r\n".encode())
        assert c.reply().code == 250
        assert c.cmd(f"MAIL FROM:<{s7}>").code == 250
        assert c.cmd(f"RCPT TO:<{r7}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(f"From: <{s7}>\r\nSubject: a {u}\r\n\r\nhello\r\n.\r\n".encode())
        assert c.reply().code == 250
    d8 = sink.wait_dsn(s8)[0].data
    d7 = sink.wait_dsn(s7)[0].data
    part8 = _report_part(d8, b"message/global-delivery-status")
    assert f"smtp; 550 5.1.1 {text} end".encode() in b" ".join(part8.split()), part8
    part7 = _report_part(d7, b"message/delivery-status")
    assert all(b < 0x80 for b in part7), part7
    assert b"smtp; 550 5.1.1 Empf?nger unbekannt: ??? ? end" in b" ".join(part7.split()), part7
