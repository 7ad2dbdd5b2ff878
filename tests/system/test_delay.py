"""Retry times across a restart."""

import json
import time

from sysutil import holds_for, message, uid, wait_for


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
