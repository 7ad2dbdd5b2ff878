"""Spool robustness: I/O errors while receiving, damaged queue files."""

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
