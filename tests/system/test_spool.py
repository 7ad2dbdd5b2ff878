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
    assert tern.tmp_files() == [], "a failed message leaves no temporary file"

    after = f"after-{u}@example.org"
    tern.send(f"s-{u}@src.test", [after], message("after " + u, to=after))
    assert sink.wait_to(after)
    assert sink.to(big) == []
    wait_for(lambda: tern.queue_files() == [], desc="queue drained")


def test_damaged_queue_files_are_set_aside(make_tern, sink):
    """A damaged queue file is moved to corrupt/ with a log line naming it;
    the daemon starts and delivers the intact mail."""
    tern = make_tern(start=False)
    sink.rcpt_rule = lambda a: "451 4.3.0 not now"
    tern.start()
    u = uid()
    good, bad = f"good-{u}@example.org", f"bad-{u}@example.org"
    tern.send(f"s-{u}@src.test", [good], message("good " + u, to=good, body=b"intact\r\n" * 50))
    tern.send(f"s-{u}@src.test", [bad], message("bad " + u, to=bad, body=b"doomed\r\n" * 50))
    wait_for(lambda: len(tern.queue_files()) == 2, desc="two queued messages")
    tern.stop()

    qdir = tern.spool / "queue"
    bad_qid = None
    for name in tern.queue_files():
        data = (qdir / name).read_bytes()
        if bad.encode() in data:
            bad_qid = name
            i = data.index(b"doomed")
            (qdir / name).write_bytes(data[:i] + b"DOOMED" + data[i + 6 :])  # flip body bytes
    assert bad_qid is not None
    junk_qid = "00000000deadbeef"
    (qdir / junk_qid).write_bytes(b"this is not a spool file\n")

    sink.accept_all()
    mark = tern.log_mark()
    tern.start()
    assert sink.wait_to(good)
    corrupt = tern.spool / "corrupt"
    wait_for(lambda: corrupt.is_dir() and {bad_qid, junk_qid} <= {p.name for p in corrupt.iterdir()},
             desc="damaged files in corrupt/")
    log = tern.log_text()[mark:]
    assert bad_qid in log and junk_qid in log, log[-2000:]
    assert sink.to(bad) == [], "a damaged message is never delivered"
    wait_for(lambda: tern.queue_files() == [], WAIT, desc="queue drained")
