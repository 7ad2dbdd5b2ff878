"""ternctl queue commands and tern-sendmail."""

import json
import re
import time

from sysutil import SLOW, holds_for, message, split_received, uid, wait_for


def queue_json(tern):
    p = tern.ctl("queue", "list", "--json")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = []
    for ln in p.stdout.decode().splitlines():
        if ln.strip():
            out.append(json.loads(ln))
    return out


def entry(tern, qid):
    got = [e for e in queue_json(tern) if e.get("id") == qid]
    assert len(got) <= 1, got
    return got[0] if got else None


def test_queue_commands(tern, sink):
    u = uid()
    sender = f"ctl-{u}@src.test"
    rcpt = f"tempfail-q-{u}@example.org"
    t0 = time.time()
    tern.send(sender, [rcpt], message(f"ctl {u}", sender=sender))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)

    p = tern.ctl("queue", "list")
    assert p.returncode == 0, p.stderr
    text = p.stdout.decode()
    lines = [ln for ln in text.splitlines() if ln.startswith(qid)]
    assert len(lines) == 1, f"text list has one line starting with {qid}:\n{text}"
    assert sender in lines[0] and rcpt in lines[0], lines[0]

    e = entry(tern, qid)
    assert e is not None
    assert e["sender"] == sender
    assert isinstance(e["arrival"], int) and abs(e["arrival"] - t0) < 120, e
    assert e["held"] is False
    assert isinstance(e["recipients"], list) and len(e["recipients"]) == 1, e
    r = e["recipients"][0]
    assert r["address"] == rcpt
    assert r["status"] in ("queued", "deferred", "delivering"), r
    assert isinstance(r["attempts"], int) and r["attempts"] >= 1, r
    assert "4.3.0" in str(r["last_error"]) or "try again later" in str(r["last_error"]), r

    # hold: no more attempts, and flush does not deliver
    p = tern.ctl("queue", "hold", qid)
    assert p.returncode == 0, p.stderr
    wait_for(lambda: entry(tern, qid)["held"] is True, desc="held true")
    n = sink.rcpt_attempt_count(rcpt)
    assert holds_for(lambda: sink.rcpt_attempt_count(rcpt) <= n + 1, 3.0)
    n = sink.rcpt_attempt_count(rcpt)
    assert holds_for(lambda: sink.rcpt_attempt_count(rcpt) == n, 3.0), "held mail was retried"
    sink.rcpt_rule = None  # the sink accepts from now on
    p = tern.ctl("queue", "flush")
    assert p.returncode == 0, p.stderr
    assert holds_for(lambda: not sink.to(rcpt), 3.0), "flush delivered a held message"
    assert entry(tern, qid)["held"] is True

    # release: delivered at once
    p = tern.ctl("queue", "release", qid)
    assert p.returncode == 0, p.stderr
    sink.wait_to(rcpt, timeout=10 * SLOW)
    wait_for(lambda: entry(tern, qid) is None, desc="delivered message gone from the list")

    # delete
    sender2 = f"ctl2-{u}@src.test"
    rcpt2 = f"del-{u}@example.org"
    sink.rcpt_replies[rcpt2] = "451 4.3.0 not yet"
    tern.send(sender2, [rcpt2], message(f"ctl del {u}", sender=sender2))
    qid2 = tern.qid_of(sender2)
    tern.wait_event("deferred", qid=qid2)
    assert qid2 in tern.queued()
    p = tern.ctl("queue", "delete", qid2)
    assert p.returncode == 0, p.stderr
    wait_for(lambda: qid2 not in tern.queued(), desc="queue file removed")
    assert entry(tern, qid2) is None
    sink.rcpt_replies.clear()
    n = sink.rcpt_attempt_count(rcpt2)
    assert holds_for(lambda: sink.rcpt_attempt_count(rcpt2) == n, 3.0), "deleted mail was retried"
    assert sink.to(rcpt2) == [] and sink.from_null_to(sender2) == [], "delete makes no DSN"

    # unknown ids
    for verb in ("delete", "hold", "release"):
        p = tern.ctl("queue", verb, "0123456789abcdef")
        assert p.returncode == 1, (verb, p.returncode, p.stdout, p.stderr)
        assert (p.stderr + p.stdout).strip(), f"queue {verb} of an unknown id says why"
    p = tern.ctl("queue", "frobnicate")
    assert p.returncode == 2, p.returncode
    assert queue_json(tern) == []


def test_queue_list_empty_and_flush(make_tern, sink):
    tern = make_tern(retry_initial="1h", retry_max="1h")
    assert queue_json(tern) == []
    p = tern.ctl("queue", "list")
    assert p.returncode == 0, p.stderr
    assert not re.search(rb"^[0-9a-f]{16}\b", p.stdout, re.M), p.stdout
    # flush makes a deferred message go now, long before its retry time
    u = uid()
    rcpt = f"flush-{u}@example.org"
    sink.rcpt_replies[rcpt] = "451 4.3.0 later"
    sender = f"flush-{u}@src.test"
    tern.send(sender, [rcpt], message(f"flush {u}", sender=sender))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    sink.rcpt_replies.clear()
    p = tern.ctl("queue", "flush")
    assert p.returncode == 0, p.stderr
    sink.wait_to(rcpt, timeout=10 * SLOW)
    tern.wait_event("delivered", qid=qid)


def test_sendmail_t_with_bcc(tern, sink):
    u = uid()
    msg = (
        f"From: Alice <alice-{u}@src.test>\n"
        f"To: to1-{u}@example.org, Someone <to2-{u}@example.org>\n"
        f"Cc: cc1-{u}@example.org\n"
        f"Bcc: secret-{u}@example.org\n"
        f"Subject: sendmail {u}\n"
        "\n"
        "body\n"
        ".\n"
        "..two\n"
        "more\n"
    ).encode()
    p = tern.sendmail(["-t", "-i", "-f", f"bounce-{u}@src.test"], msg)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    rcpts = [f"to1-{u}@example.org", f"to2-{u}@example.org", f"cc1-{u}@example.org", f"secret-{u}@example.org"]
    for r in rcpts:
        sink.wait_to(r)
    txs = {id(t): t for r in rcpts for t in sink.to(r)}.values()
    got = sorted(r for t in txs for r in t.rcpt_tos)
    assert got == sorted(rcpts), got
    for t in txs:
        assert t.mail_from == f"bounce-{u}@src.test"
        _, rest = split_received(t.data)
        head, _, body = rest.partition(b"\r\n\r\n")
        assert b"\nbcc:" not in b"\n" + head.lower(), f"Bcc header must be removed:\n{head!r}"
        assert f"Subject: sendmail {u}".encode() in head
        assert body == b"body\r\n.\r\n..two\r\nmore\r\n", body
        assert b"\n" not in rest.replace(b"\r\n", b""), "bare LF must become CRLF"


def test_sendmail_args_and_dot(tern, sink):
    u = uid()
    rcpt = f"arg-{u}@example.org"
    msg = f"Subject: args {u}\n\nbefore\n.\nafter\n".encode()
    p = tern.sendmail(["-f", f"a-{u}@src.test", rcpt], msg)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    t = sink.wait_to(rcpt)[0]
    assert t.rcpt_tos == [rcpt] and t.mail_from == f"a-{u}@src.test"
    rest = split_received(t.data)[1]
    assert rest.endswith(b"\r\n\r\nbefore\r\n"), f"without -i a lone dot ends the input: {rest!r}"
    assert b"after" not in rest
    # -oi is the same as -i
    rcpt2 = f"oi-{u}@example.org"
    p = tern.sendmail(["-oi", "-f", f"a-{u}@src.test", rcpt2], msg)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    rest = split_received(sink.wait_to(rcpt2)[0].data)[1]
    assert rest.endswith(b"before\r\n.\r\nafter\r\n"), rest
