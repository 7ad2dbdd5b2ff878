"""Spool robustness: I/O errors while receiving, damaged queue files."""

import re
import resource

from sysutil import WAIT, message, uid, wait_for


def test_write_error_gives_452_and_keeps_running(make_tern, sink):
    """An I/O error while storing (here EFBIG from a file-size limit, as a
    stand-in for a full disk) answers 452 4.3.1, leaves nothing behind, and
    neither the daemon nor previously accepted mail is harmed."""
    tern = make_tern(start=False)
    limit = 256 * 1024

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    tern.preexec = small_files
    tern.start()
    u = uid()
    first = f"before-{u}@example.org"
    tern.send(f"s-{u}@src.test", [first], message("before " + u, to=first))
    assert sink.wait_to(first)

    big = f"big-{u}@example.org"
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<s-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<{big}>").code == 250
        assert c.cmd("DATA").code == 354
        line = b"x" * 998 + b"\r\n"
        c.send(message("big " + u, to=big, body=line * (2 * limit // len(line))) + b".\r\n")
        r = c.reply()
        assert r.code == 452 and r.enh == "4.3.1", str(r)
        # the session goes on
        assert c.cmd("NOOP").code == 250
    assert tern.running()

    after = f"after-{u}@example.org"
    tern.send(f"s-{u}@src.test", [after], message("after " + u, to=after))
    assert sink.wait_to(after)
    assert sink.to(big) == []
    wait_for(lambda: tern.queued() == [], desc="queue drained")


def test_damaged_messages_are_set_aside(make_tern, sink):
    """A message whose stored bytes are damaged is never delivered: a log
    line names it, what is left of it goes to corrupt/, it leaves the queue;
    the daemon starts and delivers the intact mail. A file in log/ that is
    not a segment of this spool is ignored with a log line."""
    tern = make_tern(start=False)
    sink.rcpt_rule = lambda a: "451 4.3.0 not now"
    tern.start()
    u = uid()
    good, bad = f"good-{u}@example.org", f"bad-{u}@example.org"
    tern.send(f"s-{u}@src.test", [good], message("good " + u, to=good, body=b"intact\r\n" * 50))
    tern.send(f"s-{u}@src.test", [bad], message("bad " + u, to=bad, body=b"doomed\r\n" * 50))
    wait_for(lambda: len(tern.queued()) == 2, desc="two queued messages")
    tern.stop()

    logdir = tern.spool / "log"
    flipped = 0
    for seg in sorted(logdir.glob("*.seg")):
        data = seg.read_bytes()
        i = data.find(b"doomed")
        if i >= 0:
            seg.write_bytes(data[:i] + b"DOOMED" + data[i + 6 :])  # flip body bytes
            flipped += 1
    assert flipped == 1
    junk = logdir / "00000000deadbeef.seg"
    junk.write_bytes(b"this is not a spool segment\n")

    sink.accept_all()
    mark = tern.log_mark()
    tern.start()
    assert sink.wait_to(good)
    wait_for(lambda: "damaged_message" in tern.log_text()[mark:], desc="the damage is logged")
    log = tern.log_text()[mark:]
    assert "00000000deadbeef.seg" in log, log[-2000:]
    corrupt = tern.spool / "corrupt"
    wait_for(lambda: corrupt.is_dir() and any(corrupt.iterdir()), desc="the damaged message in corrupt/")
    (qid,) = [p.name for p in corrupt.iterdir()]
    assert qid in log
    assert b"doomed" in (corrupt / qid).read_bytes() or b"DOOMED" in (corrupt / qid).read_bytes()
    assert sink.to(bad) == [], "a damaged message is never delivered"
    wait_for(lambda: tern.queued() == [], WAIT, desc="queue drained")


# --------------------------------------------------------------------------
# A DSN that cannot be written (full disk) keeps the original until it is


LONG_REASON = "x" * 360  # makes the report longer than the original's records


def _bounce_blocked_by_fsize(tern, sink):
    """Queue a message whose recipient then fails for good while the file
    size limit (RLIMIT_FSIZE, a stand-in for a full disk) lets the spool
    append status records to the original but not write the DSN, which is
    a little larger. Returns (qid, sender, rcpt) once a DSN was tried."""
    u = uid()
    sender, rcpt = f"fs-{u}@src.test", f"permfail-{u}@example.org"
    sink.rcpt_rule = lambda a: "451 4.3.0 not yet"
    tern.send(sender, [rcpt], message("fsize " + u, sender=sender, to=rcpt,
                                      body=(b"0123456789abcdef" * 60 + b"\r\n") * 100))
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    path = max((tern.spool / "log").glob("*.seg"))  # the segment being written
    wait_for(lambda: b"\nr 0 0 1 0 " in path.read_bytes(), desc="the deferral recorded")
    size = path.stat().st_size
    # Room for the state records (each with the recipient's reply and the
    # attempts kept with the message), far from the DSN's copy of the body.
    tern.prlimit_relay(resource.RLIMIT_FSIZE, (size + 8000, resource.RLIM_INFINITY))
    sink.rcpt_rule = lambda a: f"550 5.1.1 {LONG_REASON}" if a.startswith("permfail") else None
    tern.wait_event("bounced", qid=qid)
    wait_for(lambda: [e for e in tern.events(qid=qid) if e.get("subsystem") == "dsn"],
             desc="a DSN attempt")
    return qid, sender, rcpt


def _dsn_failures(tern, qid):
    return [e for e in tern.events("failed", qid=qid) if e.get("subsystem") == "dsn"]


def test_dsn_retried_until_written(make_tern, sink):
    """A DSN that cannot be made (EFBIG here) does not lose the bounce: the
    original and its failed recipient stay queued, the DSN is tried again
    after the retry delay, and once it is written the sender gets it and
    only then is the original removed."""
    tern = make_tern()
    qid, sender, rcpt = _bounce_blocked_by_fsize(tern, sink)
    assert not tern.events("removed", qid=qid), "the original was removed without its DSN"
    assert qid in tern.queued()
    ev = _dsn_failures(tern, qid)[0]
    assert "File too large" in ev.get("error", ""), ev["_raw"]
    # tried again, and again failing while the limit holds
    wait_for(lambda: len(_dsn_failures(tern, qid)) >= 2, desc="a second DSN attempt")
    assert qid in tern.queued() and sink.from_null_to(sender) == []
    p = tern.ctl("queue", "list", "--json")
    assert p.returncode == 0 and '"status":"dsn_pending"' in p.stdout.decode(), p.stdout
    tern.prlimit_relay(resource.RLIMIT_FSIZE,
                       (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    dsn = sink.wait_dsn(sender)
    assert len(dsn) == 1 and rcpt.encode() in dsn[0].data and LONG_REASON.encode() in dsn[0].data
    tern.wait_event("removed", qid=qid, reason="done")
    wait_for(lambda: tern.queued() == [], desc="queue empty")
    assert len(sink.from_null_to(sender)) == 1
    assert sink.rcpt_attempt_count(rcpt) == 2, "the failed recipient is not tried again"


def test_dsn_pending_survives_restart(make_tern, sink):
    """The spool records a failed recipient whose DSN is not yet made in a
    state of its own, so a daemon stopped before the DSN could be written
    makes it at its next start."""
    tern = make_tern()
    qid, sender, rcpt = _bounce_blocked_by_fsize(tern, sink)
    assert not tern.events("removed", qid=qid), "the original was removed without its DSN"
    rc, _ = tern.stop()
    assert rc == 0
    raw = b"".join(p.read_bytes() for p in sorted((tern.spool / "log").glob("*.seg")))
    # the STATE record: recipient 0 in RCPT_FAILED_DSN (3), 2 attempts
    assert re.search(rb"\nr 0 3 2 0 \d+ 550%205\.1\.1%20", raw), raw[-400:]
    assert sink.from_null_to(sender) == []
    tern.start()  # no file size limit now
    dsn = sink.wait_dsn(sender)
    assert len(dsn) == 1 and rcpt.encode() in dsn[0].data
    wait_for(lambda: tern.queued() == [], desc="queue empty")
    assert sink.rcpt_attempt_count(rcpt) == 2, "the failed recipient is not tried again"
