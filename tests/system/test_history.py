"""The history of every message: `ternctl queue show ID` (envelope, live
recipient state, every attempt) and `ternctl trace QUERY` (the timeline of
messages by queue id, Message-ID or address), with ternd running and after
it stopped, for mail deferred then delivered and for mail bounced."""

import json
import os
import stat

from sysutil import uid, wait_for

SHOW_KEYS = {"id", "sender", "arrival", "size", "message_id", "recipients"}
RCPT_KEYS = {"address", "status", "next_attempt", "attempts"}
ATTEMPT_KEYS = {"time", "host", "reply"}
TRACE_KEYS = {"time", "id", "event", "recipient", "relay", "reply"}


def mail(sender, to, mid):
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: history\r\n"
        f"Message-ID: <{mid}>\r\n\r\nhello\r\n"
    ).encode()


def show(tern, qid):
    p = tern.ctl("queue", "show", qid, "--json")
    assert p.returncode == 0, p.stderr.decode()
    lines = p.stdout.decode().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def trace(tern, query, want_rc=0):
    p = tern.ctl("trace", query, "--json")
    assert p.returncode == want_rc, (p.returncode, p.stderr.decode())
    return [json.loads(ln) for ln in p.stdout.decode().splitlines() if ln.strip()]


def events_of(evs, qid):
    return [e["event"] for e in evs if e["id"] == qid]


def test_deferred_then_delivered(tern, sink):
    u = uid()
    sender = f"h-{u}@src.test"
    rcpt = f"grey-{u}@example.org"
    stuck = f"tempfail-{u}@example.org"
    mid = f"{u}.hist@src.test"
    sink.rcpt_replies[rcpt] = "451 4.7.1 greylisted, come back later"
    tern.send(sender, [rcpt], mail(sender, rcpt, mid))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)

    # While queued: the envelope, the live state and the attempt with its reply.
    def attempted():
        s = show(tern, qid)
        r = s["recipients"]
        return s if r and r[0]["attempts"] else None

    s = wait_for(attempted, desc="queue show with an attempt")
    assert set(s) >= SHOW_KEYS, s
    assert s["id"] == qid and s["sender"] == sender
    assert s["message_id"] == f"<{mid}>"
    assert s["size"] > 0 and isinstance(s["arrival"], int)
    r = s["recipients"][0]
    assert set(r) >= RCPT_KEYS, r
    assert r["address"] == rcpt and r["status"] in ("deferred", "delivering")
    assert r["next_attempt"] is None or isinstance(r["next_attempt"], int)
    a = r["attempts"][0]
    assert set(a) == ATTEMPT_KEYS, a
    assert "451 4.7.1 greylisted" in a["reply"]
    assert f"127.0.0.1]:{sink.port}" in a["host"], a
    assert isinstance(a["time"], int)

    # The text form names the same things.
    p = tern.ctl("queue", "show", qid)
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    assert qid in out and rcpt in out and "greylisted" in out and mid in out

    # Then the sink takes it.
    del sink.rcpt_replies[rcpt]
    tern.wait_event("delivered", qid=qid)
    evs = wait_for(lambda: [e for e in trace(tern, qid) if e["event"] == "delivered"] and trace(tern, qid),
                   desc="delivered in trace")
    for e in evs:
        assert set(e) == TRACE_KEYS, e
    names = events_of(evs, qid)
    assert names[0] == "received" and "deferred" in names and names[-1] == "delivered", names
    d = [e for e in evs if e["event"] == "delivered"][0]
    assert d["recipient"] == rcpt and d["reply"].startswith("250") and d["relay"]
    assert [e for e in evs if e["event"] == "deferred"][0]["reply"].startswith("451 4.7.1")

    # A message that stays queued, for the offline queue show below.
    sender2 = f"h2-{u}@src.test"
    tern.send(sender2, [stuck], mail(sender2, stuck, f"{u}.stuck@src.test"))
    qid2 = tern.qid_of(sender2)
    tern.wait_event("deferred", qid=qid2)
    wait_for(lambda: show(tern, qid2)["recipients"][0]["attempts"], desc="stuck attempt journaled")

    def same_message(query):
        got = trace(tern, query)
        assert events_of(got, qid) == names, (query, got)
        assert not events_of(got, qid2), (query, got)

    for running in (True, False):
        same_message(qid)
        same_message(f"<{mid}>")
        same_message(mid)
        same_message(rcpt.replace("example.org", "EXAMPLE.Org"))
        by_sender = trace(tern, sender)
        assert events_of(by_sender, qid) == names
        p = tern.ctl("trace", qid)
        assert p.returncode == 0 and qid in p.stdout.decode() and "delivered" in p.stdout.decode()
        # Delivered: no longer in the queue.
        p = tern.ctl("queue", "show", qid)
        assert p.returncode == 1 and b"unknown queue id" in p.stderr
        s2 = show(tern, qid2)
        assert s2["message_id"] == f"<{u}.stuck@src.test>"
        assert s2["recipients"][0]["address"] == stuck
        assert s2["recipients"][0]["status"] in ("deferred", "delivering", "queued")
        assert "451 4.3.0" in s2["recipients"][0]["attempts"][0]["reply"]
        if running:
            tern.stop()

    # The journal is the relay's own: private directory, private files.
    hdir = tern.spool / "history"
    assert stat.S_IMODE(os.stat(hdir).st_mode) == 0o700
    for f in os.listdir(hdir):
        assert stat.S_IMODE(os.stat(hdir / f).st_mode) == 0o600

    # Without the journal (its files expired, or lost), the attempts kept
    # with the message still answer.
    for f in os.listdir(hdir):
        os.unlink(hdir / f)
    s2 = show(tern, qid2)
    att = s2["recipients"][0]["attempts"]
    assert att and "451 4.3.0" in att[0]["reply"], s2
    assert f"127.0.0.1]:{sink.port}" in att[0]["host"], s2


def test_bounced_and_dsn(tern, sink):
    u = uid()
    sender = f"b-{u}@src.test"
    rcpt = f"permfail-{u}@example.org"
    tern.send(sender, [rcpt], mail(sender, rcpt, f"{u}.bounce@src.test"))
    qid = tern.qid_of(sender)
    tern.wait_event("bounced", qid=qid)
    evs = wait_for(lambda: "dsn" in events_of(trace(tern, qid), qid) and trace(tern, qid),
                   desc="dsn event in trace")
    names = events_of(evs, qid)
    assert names[:2] == ["received", "bounced"], names
    b = [e for e in evs if e["event"] == "bounced"][0]
    assert b["recipient"] == rcpt and b["reply"].startswith("550 5.1.1")
    dsn = [e for e in evs if e["event"] == "dsn"][0]
    assert dsn["recipient"] == sender
    # By the bounced address, after the daemon stopped.
    tern.stop()
    assert "bounced" in events_of(trace(tern, rcpt), qid)


def test_trace_nothing_and_usage(tern):
    p = tern.ctl("trace", "nobody-here@nowhere.test")
    assert p.returncode == 1 and b"no message" in p.stderr and p.stdout == b""
    p = tern.ctl("trace", "0123456789abcdef", "--json")
    assert p.returncode == 1 and p.stdout == b""
    assert tern.ctl("trace").returncode == 2
    assert tern.ctl("trace", "a", "b").returncode == 2
    assert tern.ctl("queue", "show").returncode == 2
    p = tern.ctl("queue", "show", "0123456789abcdef")
    assert p.returncode == 1 and b"unknown queue id" in p.stderr


def test_operator_actions_in_trace(tern, sink):
    u = uid()
    sender = f"op-{u}@src.test"
    rcpt = f"tempfail-{u}@example.org"
    tern.send(sender, [rcpt], mail(sender, rcpt, f"{u}.op@src.test"))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    for action in ("hold", "release", "delete"):
        p = tern.ctl("queue", action, qid)
        assert p.returncode == 0, p.stderr.decode()
    evs = wait_for(lambda: "deleted" in events_of(trace(tern, qid), qid) and trace(tern, qid),
                   desc="deleted in trace")
    names = [n for n in events_of(evs, qid) if n != "deferred"]
    assert names == ["received", "held", "released", "deleted"], names
    p = tern.ctl("queue", "show", qid)
    assert p.returncode == 1


def test_show_partly_delivered(tern, sink):
    """A recipient already delivered has left the queue's list; queue show
    still names it, with its status and its attempt, from the journal."""
    u = uid()
    sender = f"p-{u}@src.test"
    ok, later = f"ok-{u}@example.org", f"tempfail-{u}@example.org"
    tern.send(sender, [ok, later], mail(sender, ok, f"{u}.part@src.test"))
    qid = tern.qid_of(sender)
    tern.wait_event("delivered", qid=qid)
    tern.wait_event("deferred", qid=qid)

    def both():
        s = show(tern, qid)
        by = {r["address"]: r for r in s["recipients"]}
        return by if len(by) == 2 and by[later]["attempts"] and by[ok]["attempts"] else None

    by = wait_for(both, desc="both recipients in queue show")
    assert by[ok]["status"] == "delivered" and by[ok]["next_attempt"] is None
    assert by[ok]["attempts"][0]["reply"].startswith("250")
    assert by[later]["status"] in ("deferred", "delivering")
    assert by[later]["attempts"][0]["reply"].startswith("451 4.3.0")
    for r in by.values():
        assert set(r) == RCPT_KEYS, r
