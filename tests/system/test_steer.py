"""Steering the queue in bulk: several ids, ALL, ids on stdin, selectors,
flush of one message, and what `queue list` / `queue summary` say about
next attempts, ages and held mail. Every message here is deferred by the
sink (local part tempfail*) and retried only after an hour, so the queue
stays as the test left it until the test changes it."""

import json
import re
import socket
import time

from conftest import binary
from sysutil import SLOW, holds_for, message, uid, wait_for

UNKNOWN = "0123456789abcdef"


def deferred_tern(make_tern):
    return make_tern(retry_initial="1h", retry_max="1h")


def queue_one(tern, sender, rcpt):
    """Send one message that the sink defers; its qid once deferred."""
    tern.send(sender, [rcpt], message(f"steer {sender}", sender=sender, to=rcpt))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    return qid


def listing(tern):
    p = tern.ctl("queue", "list", "--json")
    assert p.returncode == 0, p.stderr
    return {e["id"]: e for e in map(json.loads, p.stdout.decode().splitlines())}


def held(tern):
    return sorted(q for q, e in listing(tern).items() if e["held"])


def ctl_in(tern, stdin, *args):
    return tern._run([binary("ternctl"), "-c", str(tern.conf), *args], input=stdin)


def out_lines(p):
    return p.stdout.decode().splitlines()


def test_several_ids_unknown_and_stdin(make_tern, sink):
    tern = deferred_tern(make_tern)
    u = uid()
    q = [queue_one(tern, f"s{i}-{u}@src.test", f"tempfail-{i}-{u}@example.org") for i in range(3)]

    # Several ids, one unknown: the others are acted on, exit 1.
    p = tern.ctl("queue", "hold", q[0], UNKNOWN, q[1])
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert out_lines(p) == [f"{q[0]}: held", f"{q[1]}: held", "2 messages held"], p.stdout
    assert UNKNOWN in p.stderr.decode() and "unknown" in p.stderr.decode()
    assert held(tern) == sorted(q[:2])

    # All found: exit 0.
    p = tern.ctl("queue", "release", q[0], q[1])
    assert p.returncode == 0, p.stderr
    assert out_lines(p)[-1] == "2 messages released"
    assert held(tern) == []

    # Ids on stdin: whitespace trimmed, blank lines skipped.
    p = ctl_in(tern, f"  {q[2]} \n\n\t{q[0]}\r\n".encode(), "queue", "hold", "-")
    assert p.returncode == 0, p.stderr
    assert out_lines(p) == [f"{q[2]}: held", f"{q[0]}: held", "2 messages held"], p.stdout
    assert held(tern) == sorted([q[0], q[2]])

    # A line that is no id (or too long) is reported, the rest still done.
    junk = "x" * 5000
    p = ctl_in(tern, f"{q[0]}\nnot-an-id\n{junk}\n{q[2]}\n".encode(), "queue", "release", "-")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert out_lines(p)[-1] == "2 messages released", p.stdout
    assert p.stderr.decode().count("not a queue id") == 2, p.stderr
    assert held(tern) == []

    # Many ids from stdin go in several batches over one connection.
    ids = "".join(f"{q[1]}\n" for _ in range(150))
    p = ctl_in(tern, ids.encode(), "queue", "hold", "-")
    assert p.returncode == 0, p.stderr
    assert out_lines(p)[-1] == "150 messages held", p.stdout[-200:]
    assert held(tern) == [q[1]]

    # Usage errors: exit 2.
    for args in (("hold",), ("hold", "ALL", q[0]), ("hold", q[0], "--sender", "a@b.test"),
                 ("hold", "--bogus", q[0]), ("hold", "--older-than", "soon")):
        p = tern.ctl("queue", *args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
    assert held(tern) == [q[1]]


def test_all_and_delete_all_needs_yes(make_tern, sink):
    tern = deferred_tern(make_tern)
    u = uid()
    q = sorted(queue_one(tern, f"a{i}-{u}@src.test", f"tempfail-a{i}-{u}@example.org")
               for i in range(3))

    p = tern.ctl("queue", "hold", "ALL")
    assert p.returncode == 0, p.stderr
    assert sorted(out_lines(p)[:-1]) == [f"{x}: held" for x in q], p.stdout
    assert out_lines(p)[-1] == "3 messages held"
    assert held(tern) == q
    # Already held: nothing more to hold.
    p = tern.ctl("queue", "hold", "ALL")
    assert p.returncode == 0 and out_lines(p) == ["0 messages held"], p.stdout

    p = tern.ctl("queue", "release", "ALL")
    assert p.returncode == 0 and out_lines(p)[-1] == "3 messages released", p.stdout
    assert held(tern) == []

    # A slip of the fingers must not empty the queue.
    p = tern.ctl("queue", "delete", "ALL")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "--yes" in p.stderr.decode()
    assert sorted(listing(tern)) == q

    p = tern.ctl("queue", "delete", "ALL", "--yes")
    assert p.returncode == 0, p.stderr
    assert out_lines(p)[-1] == "3 messages deleted", p.stdout
    assert listing(tern) == {}
    p = tern.ctl("queue", "delete", "-y", "ALL")
    assert p.returncode == 0 and out_lines(p) == ["0 messages deleted"], p.stdout


def test_selectors(make_tern, sink):
    tern = deferred_tern(make_tern)
    u = uid()
    a1 = queue_one(tern, f"a-{u}@src.test", f"tempfail-1-{u}@example.org")
    a2 = queue_one(tern, f"a2-{u}@src.test", f"tempfail-2-{u}@example.net")
    b1 = queue_one(tern, f"b-{u}@other.test", f"tempfail-3-{u}@example.net")

    p = tern.ctl("queue", "hold", "--sender", f"A-{u}@SRC.test")
    assert p.returncode == 0, p.stderr
    assert out_lines(p) == [f"{a1}: held", "1 message held"], p.stdout
    assert held(tern) == [a1]

    p = tern.ctl("queue", "hold", "ALL", "--recipient-domain", "example.net")
    assert p.returncode == 0, p.stderr
    assert held(tern) == sorted([a1, a2, b1])

    # Combined: every condition must hold.
    p = tern.ctl("queue", "release", "--recipient-domain", "example.net",
                 "--sender", f"b-{u}@other.test")
    assert p.returncode == 0 and out_lines(p) == [f"{b1}: released", "1 message released"], p.stdout
    assert held(tern) == sorted([a1, a2])

    # Nothing here is an hour old; a second old, every message is, once the
    # clock has moved past the last arrival.
    p = tern.ctl("queue", "release", "--older-than", "1h")
    assert p.returncode == 0 and out_lines(p) == ["0 messages released"], p.stdout
    newest = max(e["arrival"] for e in listing(tern).values())
    wait_for(lambda: time.time() >= newest + 2, desc="a second past the last arrival")
    p = tern.ctl("queue", "release", "ALL", "--older-than", "1s")
    assert p.returncode == 0 and out_lines(p)[-1] == "2 messages released", p.stdout
    assert held(tern) == []

    # Delete by selector needs no --yes (it is not ALL); the others stay.
    p = tern.ctl("queue", "delete", "--sender", f"b-{u}@other.test")
    assert p.returncode == 0 and out_lines(p)[-1] == "1 message deleted", p.stdout
    assert sorted(listing(tern)) == sorted([a1, a2])
    p = tern.ctl("queue", "hold", "--sender", "nobody")
    assert p.returncode == 2


def test_flush_id_delivers_only_that(make_tern, sink):
    tern = deferred_tern(make_tern)
    u = uid()
    r1, r2 = f"tempfail-f1-{u}@example.org", f"tempfail-f2-{u}@example.org"
    q1 = queue_one(tern, f"f1-{u}@src.test", r1)
    q2 = queue_one(tern, f"f2-{u}@src.test", r2)
    sink.accept_all()
    p = tern.ctl("queue", "flush", q1, UNKNOWN)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert out_lines(p) == [f"{q1}: flushed", "1 message flushed"], p.stdout
    sink.wait_to(r1, timeout=10 * SLOW)
    tern.wait_event("delivered", qid=q1)
    assert holds_for(lambda: not sink.to(r2), 3.0), "flush of one id delivered another"
    assert sorted(listing(tern)) == [q2]
    # Bare flush still retries everything.
    p = tern.ctl("queue", "flush")
    assert p.returncode == 0 and out_lines(p) == ["queue flush requested"], p.stdout
    sink.wait_to(r2, timeout=10 * SLOW)


def test_list_next_attempt_and_age(make_tern, sink):
    tern = deferred_tern(make_tern)
    u = uid()
    t0 = int(time.time())
    q1 = queue_one(tern, f"l1-{u}@src.test", f"tempfail-l1-{u}@example.org")
    q2 = queue_one(tern, f"l2-{u}@src.test", f"tempfail-l2-{u}@example.org")
    assert tern.ctl("queue", "hold", q2).returncode == 0
    now = int(time.time())
    e = listing(tern)
    # The keys of CONTRACT.md stay as they were.
    for k in ("id", "sender", "arrival", "held", "recipients"):
        assert k in e[q1], e[q1]
    assert isinstance(e[q1]["next_attempt"], int), e[q1]
    # An hour from the attempt, give or take retry's jitter (0.8 to 1.2).
    assert t0 + 2800 <= e[q1]["next_attempt"] <= now + 4400, (e[q1], now)
    assert isinstance(e[q1]["age"], int) and 0 <= e[q1]["age"] <= now - t0 + 2, e[q1]
    assert e[q2]["next_attempt"] is None and e[q2]["held"] is True, e[q2]

    p = tern.ctl("queue", "list")
    assert p.returncode == 0, p.stderr
    rows = {ln.split()[0]: ln for ln in out_lines(p)}
    assert re.search(r" in (4\dm\d\ds|5\dm\d\ds|1h[0-2]\dm) ", rows[q1]), rows[q1]
    assert rows[q2].split()[2] == "held", rows[q2]


def test_summary_held_and_age_buckets(make_tern, sink):
    tern = deferred_tern(make_tern)
    u = uid()
    queue_one(tern, f"m1-{u}@src.test", f"tempfail-m1-{u}@example.org")
    q2 = queue_one(tern, f"m2-{u}@src.test", f"tempfail-m2-{u}@example.org")
    q3 = queue_one(tern, f"m3-{u}@src.test", f"tempfail-m3-{u}@example.org")
    assert tern.ctl("queue", "hold", q2, q3).returncode == 0

    p = tern.ctl("queue", "summary", "--json")
    assert p.returncode == 0, p.stderr
    objs = [json.loads(ln) for ln in out_lines(p)]
    dests = [o for o in objs if "destination" in o]
    held_lines = [o for o in objs if o.get("held") is True]
    assert len(dests) == 1 and len(held_lines) == 1, objs
    d, h = dests[0], held_lines[0]
    assert d["messages"] == 1 and d["recipients"] == 1, d
    assert d["ages"] == {"<5m": 1, "5-10m": 0, "10-20m": 0, "20-40m": 0, "40-80m": 0,
                         "80-160m": 0, ">160m": 0}, d
    assert h["messages"] == 2 and h["recipients"] == 2 and h["ages"]["<5m"] == 2, h

    p = tern.ctl("queue", "summary")
    assert p.returncode == 0, p.stderr
    lines = out_lines(p)
    assert "<5m" in lines[0] and ">160m" in lines[0], lines
    assert any(ln.startswith("(held)") and ln.split()[1] == "2" for ln in lines), lines


def ctl_socket(tern):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10 * SLOW)
    s.connect(str(tern.spool / "ctl.sock"))
    return s


def read_until_final(s):
    data = b""
    while not (data.endswith(b"OK\n") or b"ERR" in data):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def test_control_protocol_bounds(make_tern, sink):
    tern = deferred_tern(make_tern)
    u = uid()
    q = [queue_one(tern, f"p{i}-{u}@src.test", f"tempfail-p{i}-{u}@example.org")
         for i in range(3)]

    with ctl_socket(tern) as s:
        # An unknown id is an answer; the connection takes the next request.
        s.sendall(f"HOLD {UNKNOWN} {q[0]}\n".encode())
        assert read_until_final(s) == f"unknown {UNKNOWN}\ndone {q[0]}\nOK\n"
        s.sendall(f"RELEASE {q[0]}\n".encode())
        assert read_until_final(s) == f"done {q[0]}\nOK\n"
        s.sendall(b"HOLD nonsense\n")
        assert read_until_final(s).startswith("ERR bad queue id")
        s.sendall(b"HOLD ALL colour=red\n")
        assert read_until_final(s).startswith("ERR bad selection")

    # Every request is bounded.
    with ctl_socket(tern) as s:
        s.sendall(b"HOLD " + b" ".join([q[0].encode()] * 100) + b"\n")
        assert read_until_final(s).startswith("ERR request too long")

    # A client that goes away in the middle of an action on ALL.
    for _ in range(5):
        with ctl_socket(tern) as s:
            s.sendall(b"HOLD ALL\n")
    wait_for(lambda: tern.ctl("queue", "list").returncode == 0, desc="daemon still answers")
    p = tern.ctl("queue", "release", "ALL")
    assert p.returncode == 0, p.stderr
    assert held(tern) == []
    assert sorted(listing(tern)) == sorted(q)
    assert tern.running()
