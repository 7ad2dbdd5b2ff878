"""Relaying through the smarthost: content, headers, client-side protocol
features (PIPELINING, CHUNKING, dot-stuffing, 8BITMIME, SMTPUTF8)."""

import json
import re
import subprocess

from sysutil import SLOW, ehlo_keywords, message, split_received, uid, wait_for

QID_HEX = re.compile(r"^[0-9a-f]{16}$")


def check_relayed(tern, tx, original, qid):
    """tx.data is one or more Received fields naming the qid, then original
    byte for byte."""
    fields, rest = split_received(tx.data)
    assert fields, f"no Received header prepended: {tx.data[:200]!r}"
    assert rest == original, f"content changed:\n{rest!r}\n!=\n{original!r}"
    top = fields[0]
    assert re.search(r"\bid " + re.escape(qid) + r"\b", top), f"qid {qid} not in {top!r}"
    assert "tern.test" in top, f"hostname not in {top!r}"
    assert ";" in top, f"Received needs a date after ';': {top!r}"


def test_relay_smtplib_exact_content(tern, sink):
    u = uid()
    sender = f"s-{u}@src.test"
    body = (
        b"first line\r\n"
        b"  leading spaces and trailing space \r\n"
        b"\r\n"
        b"tab\there\r\n"
        b"From the start of a line\r\n"
        b"last line without anything special\r\n"
    )
    data = message(f"relay {u}", body, sender=sender, to="a@example.org, b@example.org")
    tern.send(sender, [f"a-{u}@example.org", f"b-{u}@example.org"], data)
    qid = tern.qid_of(sender)
    assert QID_HEX.match(qid), f"qid {qid!r} is not 16 hex characters"

    msgs = sink.wait_to(f"a-{u}@example.org")
    wait_for(lambda: sink.to(f"b-{u}@example.org"), desc="second recipient")
    tx = msgs[0]
    assert tx.mail_from == sender
    assert len(sink.to(f"a-{u}@example.org")) == 1 and len(sink.to(f"b-{u}@example.org")) == 1
    check_relayed(tern, tx, data, qid)

    rec = tern.events("received", qid=qid)
    assert len(rec) == 1, rec
    assert rec[0].get("from") == sender
    assert str(rec[0].get("nrcpt")) == "2", rec[0]["_raw"]
    size = int(rec[0].get("size"))
    assert len(data) <= size <= len(data) + 2048, (size, len(data))

    deliv = wait_for(lambda: (lambda d: d if len(d) == 2 else None)(tern.events("delivered", qid=qid)), desc="two delivered lines")
    assert sorted(d.get("to") for d in deliv) == sorted([f"a-{u}@example.org", f"b-{u}@example.org"])
    for d in deliv:
        assert "127.0.0.1" in str(d.get("relay")), d["_raw"]
        assert str(d.get("reply", "")).startswith("250"), d["_raw"]
        assert "delay" in d, d["_raw"]
    wait_for(lambda: not tern.queued(), desc="queue to empty")


def test_relay_swaks(tern, sink):
    u = uid()
    rcpt = f"swaks-{u}@example.org"
    p = subprocess.run(
        [
            "swaks", "--server", f"127.0.0.1:{tern.port}", "--to", rcpt,
            "--from", f"sw-{u}@src.test", "--helo", "client.test",
            "--header", f"Subject: swaks {u}", "--body", f"swaks body {u}",
            "--timeout", str(int(20 * SLOW)),
        ],
        capture_output=True, timeout=60 * SLOW,
    )
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out + p.stderr.decode(errors="replace")
    tx = sink.wait_to(rcpt)[0]
    assert tx.mail_from == f"sw-{u}@src.test"
    _, rest = split_received(tx.data)
    assert f"Subject: swaks {u}".encode() in rest
    assert f"swaks body {u}".encode() in rest
    # swaks pipelining and CHUNKING-free DATA path also works with --pipeline
    rcpt2 = f"swaks2-{u}@example.org"
    p = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{tern.port}", "--to", rcpt2, "--from", f"sw2-{u}@src.test",
         "--pipeline", "--body", f"pipelined {u}", "--timeout", str(int(20 * SLOW))],
        capture_output=True, timeout=60 * SLOW,
    )
    assert p.returncode == 0, p.stdout.decode(errors="replace")
    assert f"pipelined {u}".encode() in sink.wait_to(rcpt2)[0].data


def test_ehlo_advertises_extensions(tern):
    with tern.raw() as c:
        r = c.ehlo()
        kw = ehlo_keywords(r)
        for k in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES", "CHUNKING"):
            assert k in kw, f"{k} not advertised: {r}"
        assert kw["SIZE"].strip() == "52428800", f"default max_message_size: {r}"
        assert r.lines[0].startswith("tern.test"), f"EHLO greeting names the hostname: {r}"


def test_dot_stuffing(tern, sink):
    u = uid()
    rcpt = f"dots-{u}@example.org"
    lines = [b"Subject: dots " + u.encode(), b"", b".", b"..", b"...", b".hidden", b"..double",
             b"x.", b" .", b"end"]
    original = b"".join(ln + b"\r\n" for ln in lines)
    stuffed = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    # the data starts with a stuffed line too
    rcpt2 = f"dots2-{u}@example.org"
    original2 = b".leading: first line of the data\r\n\r\nbody\r\n"
    stuffed2 = b"." + original2
    with tern.raw() as c:
        c.ehlo()
        for r, st in ((rcpt, stuffed), (rcpt2, stuffed2)):
            assert c.cmd(f"MAIL FROM:<d-{u}@src.test>").code == 250
            assert c.cmd(f"RCPT TO:<{r}>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(st + b".\r\n")
            rep = c.reply()
            assert rep.code == 250, str(rep)
        assert c.cmd("QUIT").code == 221
    _, rest = split_received(sink.wait_to(rcpt)[0].data)
    assert rest == original, rest
    _, rest2 = split_received(sink.wait_to(rcpt2)[0].data)
    assert rest2 == original2, rest2


def test_unstuffed_dot_lines(tern, sink):
    """A client that does not stuff its dots: a line of "." and more is
    stored and relayed without that dot (RFC 5321 4.5.2), and the stuffed
    lines after it still come out right."""
    u = uid()
    rcpt = f"nodots-{u}@example.org"
    sent = (b"Subject: unstuffed " + u.encode() + b"\r\n\r\n.hidden\r\nplain\r\n"
            b"..stuffed\r\n.x\r\n..\r\nend\r\n")
    relayed = (b"Subject: unstuffed " + u.encode() + b"\r\n\r\nhidden\r\nplain\r\n"
               b".stuffed\r\nx\r\n.\r\nend\r\n")
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<n-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(sent + b".\r\n")
        rep = c.reply()
        assert rep.code == 250, str(rep)
        assert c.cmd("QUIT").code == 221
    assert split_received(sink.wait_to(rcpt)[0].data)[1] == relayed


def test_large_message_exact(tern, sink):
    """A 1.5 MB message (stored in several pieces before its record) sent in
    writes of odd sizes comes out byte for byte, dots and all."""
    u = uid()
    rcpt = f"big-{u}@example.org"
    lines = [b"Subject: big " + u.encode(), b""]
    for i in range(20000):
        lines.append((b"." if i % 7 == 0 else b"") + b"line %d " % i + b"x" * (i % 90))
    original = b"".join(ln + b"\r\n" for ln in lines)
    stuffed = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<big-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert c.cmd("DATA").code == 354
        data, off, step = stuffed + b".\r\n", 0, 1
        while off < len(data):
            c.send(data[off:off + step])
            off += step
            step = step * 7 % 100003 + 1
        rep = c.reply()
        assert rep.code == 250, str(rep)
        assert c.cmd("QUIT").code == 221
    qid = rep.text.split()[-1]
    check_relayed(tern, sink.wait_to(rcpt)[0], original, qid)


def test_pipelining(tern, sink):
    u = uid()
    a, b = f"p1-{u}@example.org", f"p2-{u}@example.org"
    with tern.raw() as c:
        assert "PIPELINING" in ehlo_keywords(c.ehlo())
        c.send(
            f"MAIL FROM:<pipe-{u}@src.test>\r\nRCPT TO:<{a}>\r\nRCPT TO:<bad syntax\r\n"
            f"RCPT TO:<{b}>\r\nDATA\r\n"
        )
        replies = [c.reply() for _ in range(5)]
        codes = [r.code for r in replies]
        assert codes[0] == 250 and codes[1] == 250 and codes[3] == 250, [str(r) for r in replies]
        assert 500 <= codes[2] < 600, f"a malformed RCPT gets a 5xx: {replies[2]}"
        assert codes[4] == 354, [str(r) for r in replies]
        body = message(f"pipelined {u}")
        # end of data and the next commands in one write as well
        c.send(body + b".\r\nNOOP\r\nQUIT\r\n")
        r1, r2, r3 = c.reply(), c.reply(), c.reply()
        assert (r1.code, r2.code, r3.code) == (250, 250, 221), (str(r1), str(r2), str(r3))
        assert c.wait_closed()
    m = sink.wait_to(a)[0]
    wait_for(lambda: sink.to(b), desc="second pipelined rcpt")
    assert split_received(m.data)[1] == body
    allr = {r.lower() for t in sink.snapshot() for r in t.rcpt_tos}
    # (not just "bad": a hex uid() may spell it)
    assert not any("bad syntax" in r for r in allr)


def test_bdat(tern, sink):
    u = uid()
    a, b = f"bdat1-{u}@example.org", f"bdat2-{u}@example.org"
    chunks = [
        b"Subject: bdat " + u.encode() + b"\r\nFrom: x@src.test\r\n\r\n.starts with a dot\r\n",
        b"..two dots and a split li",
        b"ne\r\n.\r\nthe line above is a single dot\r\n",
    ]
    whole = b"".join(chunks)
    with tern.raw() as c:
        assert "CHUNKING" in ehlo_keywords(c.ehlo())
        assert c.cmd(f"MAIL FROM:<bd-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<{a}>").code == 250
        for i, ch in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            c.send(f"BDAT {len(ch)}{last}\r\n".encode() + ch)
            r = c.reply()
            assert r.code == 250, f"chunk {i}: {r}"
        # second transaction: chunks pipelined in one write, then a 0-length LAST
        second = b"Subject: bdat zero " + u.encode() + b"\r\n\r\nbody\r\n"
        c.send(
            f"MAIL FROM:<bd2-{u}@src.test>\r\nRCPT TO:<{b}>\r\n".encode()
            + f"BDAT {len(second)}\r\n".encode() + second + b"BDAT 0 LAST\r\n"
        )
        rs = [c.reply() for _ in range(4)]
        assert [r.code for r in rs] == [250, 250, 250, 250], [str(r) for r in rs]
        assert c.cmd("QUIT").code == 221
    assert split_received(sink.wait_to(a)[0].data)[1] == whole
    assert split_received(sink.wait_to(b)[0].data)[1] == second


def test_8bitmime_and_smtputf8(tern, sink):
    u = uid()
    sender = f"jörg-{u}@src.test"
    rcpt = f"δοκιμή-{u}@example.org"
    body = ("Subject: 8bit " + u + "\r\n\r\nGrüße aus Köln, Ελληνικά, 日本語\r\n").encode()
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{sender}> BODY=8BITMIME SMTPUTF8".encode()).code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>".encode()).code == 250
        assert c.cmd("DATA").code == 354
        c.send(body + b".\r\n")
        r = c.reply()
        assert r.code == 250, str(r)
    tx = sink.wait_to(rcpt)[0]
    assert tx.mail_from == sender
    assert "SMTPUTF8" in tx.mail_options, f"SMTPUTF8 must be passed on: {tx.mail_options}"
    assert split_received(tx.data)[1] == body


def test_enhanced_status_codes_everywhere(tern):
    u = uid()
    script = [
        ("NOOP", None),
        ("VRFY postmaster", None),
        ("FOOBAR", (500, 502)),
        ("RCPT TO:<x@example.org>", 503),
        ("DATA", 503),
        ("MAIL FROM:<broken", 501),
        (f"MAIL FROM:<e-{u}@src.test>", 250),
        (f"MAIL FROM:<e-{u}@src.test>", 503),
        ("RCPT TO:<>", None),
        (f"RCPT TO:<e-{u}@example.org> FOO=BAR", (501, 555)),
        (f"RCPT TO:<e-{u}@example.org>", 250),
        ("RSET", 250),
        (f"MAIL FROM:<e-{u}@src.test> SIZE=99999999999", 552),
        (f"MAIL FROM:<e-{u}@src.test>", 250),
        (f"RCPT TO:<e-{u}@example.org>", 250),
        ("DATA", 354),
        (b"Subject: esc\r\n\r\nx\r\n.", 250),
        ("QUIT", 221),
    ]
    with tern.raw() as c:
        c.ehlo()
        seen = []
        for line, want in script:
            r = c.cmd(line)
            seen.append(f"{line!r} -> {r}")
            if isinstance(want, int):
                assert r.code == want, "\n".join(seen)
            elif want is not None:
                assert r.code in want, "\n".join(seen)
            if r.code == 354:
                continue
            for ln in r.lines:
                code = ln.split(" ", 1)[0]
                assert re.match(r"^[245]\.\d{1,3}\.\d{1,3}$", code), "no enhanced code:\n" + "\n".join(seen)
                assert code[0] == str(r.code)[0], "class of enhanced code differs:\n" + "\n".join(seen)


def test_json_log_format(make_tern, sink):
    tern = make_tern(log_format="json")
    u = uid()
    sender = f"j-{u}@src.test"
    rcpt = f"j-{u}@example.org"
    tern.send(sender, [rcpt], message(f"json {u}", sender=sender))
    sink.wait_to(rcpt)
    wait_for(lambda: tern.events("delivered", to=rcpt), desc="delivered line")
    lines = [ln for ln in tern.log_text().splitlines() if ln and not ln.startswith("=== ")]
    assert lines
    objs = []
    for ln in lines:
        obj = json.loads(ln)  # every line is one JSON object
        for k in ("level", "qid", "subsystem", "event"):
            assert k in obj, f"key {k} missing: {ln}"
        objs.append(obj)
    rec = [o for o in objs if o["event"] == "received" and o.get("from") == sender]
    assert len(rec) == 1, lines
    qid = rec[0]["qid"]
    assert QID_HEX.match(qid)
    assert int(rec[0]["nrcpt"]) == 1 and int(rec[0]["size"]) > 0
    d = [o for o in objs if o["event"] == "delivered" and o.get("to") == rcpt]
    assert d and d[0]["qid"] == qid and d[0]["subsystem"] == "delivery"
    for k in ("relay", "reply", "delay"):
        assert k in d[0], d[0]


def test_message_events_carry_qid(tern, sink):
    u = uid()
    sender = f"q-{u}@src.test"
    sink.rcpt_replies[f"retry-{u}@example.org"] = "451 4.3.0 later"
    tern.send(sender, [f"ok-{u}@example.org", f"retry-{u}@example.org", f"permfail-{u}@example.org"],
              message(f"qid {u}", sender=sender))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    tern.wait_event("bounced", qid=qid)
    tern.wait_event("delivered", qid=qid)
    for rec in tern.events():
        about_msg = rec.get("event") in ("received", "delivered", "deferred", "bounced", "expired")
        if about_msg or rec.get("subsystem") == "delivery" and f"-{u}@" in rec["_raw"]:
            q = rec.get("qid")
            assert q and q != "-" and QID_HEX.match(q), f"line about a message without qid: {rec['_raw']}"
