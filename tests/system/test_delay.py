"""Delay warnings (delay_warning_time) and retry times across a restart."""

import json
import time

from sysutil import (
    WAIT,
    dsn_field,
    dsn_recipient_block,
    holds_for,
    message,
    parse_dsn,
    split_received,
    uid,
    wait_for,
)


def test_delay_warning_once_then_delivered(make_tern, sink):
    """A recipient still deferred after delay_warning_time: its sender gets
    one "delayed" report, the recipient stays queued, is tried again and is
    delivered once the next hop takes it; no second warning."""
    tern = make_tern(delay_warning_time="2s", retry_initial="1s", retry_max="1s")
    u = uid()
    sender = f"dw-{u}@src.test"
    rcpt = f"slow-{u}@example.org"
    sink.rcpt_replies[rcpt] = "451 4.3.0 sink is busy, come back"
    tern.send(sender, [rcpt], message(f"delay {u}", sender=sender))
    qid = tern.qid_of(sender)
    dsn = sink.wait_dsn(sender, timeout=WAIT + 10)
    assert len(dsn) == 1
    msg, _, per_rcpt, _ = parse_dsn(split_received(dsn[0].data)[1])
    assert len(per_rcpt) == 1
    blk = dsn_recipient_block(per_rcpt, rcpt)
    assert dsn_field(blk, "Action").lower() == "delayed"
    assert dsn_field(blk, "Status").split()[0] == "4.3.0"
    assert "come back" in (dsn_field(blk, "Diagnostic-Code") or "")
    assert dsn_field(blk, "Will-Retry-Until"), "a delayed report says until when it retries"
    assert "Delayed" in msg["Subject"], msg["Subject"]
    ev = tern.wait_event("queued", qid=qid, action="delayed")
    assert ev.get("subsystem") == "dsn" and ev.get("to") == sender, ev["_raw"]
    assert str(ev.get("nrcpt")) == "1", ev["_raw"]

    # Still queued and retried, with no second warning.
    n = sink.rcpt_attempt_count(rcpt)
    wait_for(lambda: sink.rcpt_attempt_count(rcpt) >= n + 2, desc="two more attempts")
    assert qid in tern.queued()
    sink.rcpt_replies.clear()
    sink.wait_to(rcpt)
    tern.wait_event("delivered", qid=qid, to=rcpt)
    wait_for(lambda: tern.queued() == [], desc="queue empty after delivery")
    assert len(sink.to(rcpt)) == 1
    assert len(sink.from_null_to(sender)) == 1, "exactly one delay warning"
    assert len(tern.events("queued", action="delayed")) == 1


def test_restart_keeps_retry_time(make_tern, sink):
    """A deferred message is not tried again before its next attempt time
    when ternd restarts meanwhile; a flush still sends it at once."""
    tern = make_tern(retry_initial="30s", retry_max="1m")
    u = uid()
    sender = f"rs-{u}@src.test"
    rcpt = f"later-{u}@example.org"
    sink.rcpt_replies[rcpt] = "451 4.3.0 not yet"
    tern.send(sender, [rcpt], message(f"restart {u}", sender=sender))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    assert sink.rcpt_attempt_count(rcpt) == 1
    rc, _ = tern.stop()
    assert rc == 0
    # The sink would take it now: only the stored retry time holds it back.
    sink.rcpt_replies.clear()
    sessions = sink.sessions_total
    mark = tern.log_mark()
    tern.start()
    tern.wait_event("loaded", since=mark)
    p = tern.ctl("queue", "list", "--json")
    assert p.returncode == 0, p.stderr
    (entry,) = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    assert entry["id"] == qid, p.stdout
    nxt = entry["recipients"][0]["next_attempt"]
    assert nxt is not None and nxt >= time.time() + 10, p.stdout
    assert holds_for(lambda: sink.rcpt_attempt_count(rcpt) == 1, 3), (
        "retried before its next attempt time after a restart"
    )
    assert sink.sessions_total == sessions, "ternd connected to the sink after the restart"
    assert qid in tern.queued()

    p = tern.ctl("queue", "flush")
    assert p.returncode == 0, p.stderr
    sink.wait_to(rcpt)
    wait_for(lambda: tern.queued() == [], desc="queue empty after the flush")
    assert sink.rcpt_attempt_count(rcpt) == 2
    assert len(sink.to(rcpt)) == 1
