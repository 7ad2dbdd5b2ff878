"""What ternd trusts in its spool: a spool directory (or log/, corrupt/)
that others could write to, or that belongs to another user, is refused at
start and by --check; entries of log/ that are not regular files of the
spool's owner (planted segments, FIFOs, symbolic links) are ignored with a
log line, never delivered from, and never hang the start. The tests run as
root and make another owner with os.chown (uid 65534, nobody)."""

import os
import pwd
import signal
import stat

import pytest

from conftest import TEST_USER
from sysutil import SLOW, message, uid, wait_for

NOBODY = 65534


def refused(t, needle):
    """--check exits 2 and ternd does not start, both saying needle."""
    p = t.ternd("-c", str(t.conf), "--check")
    err = p.stderr.decode()
    assert p.returncode == 2, (p.stdout, err)
    assert needle in err, err
    t.start(wait=False)
    assert t.proc.wait(timeout=30 * SLOW) != 0, "ternd started on an untrusted spool"
    t.expect_dead = True
    assert needle in t.log_text(), t.log_tail()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_spool_writable_by_others_refused(make_tern, mode):
    t = make_tern(start=False)
    t.spool.mkdir()
    os.chmod(t.spool, mode)
    refused(t, f"spool directory {t.spool}: writable by group or others")


@pytest.mark.parametrize("sub", ["log", "corrupt"])
def test_spool_subdirectory_writable_by_others_refused(make_tern, sub):
    t = make_tern(start=False)
    t.spool.mkdir(mode=0o700)
    for name in ("log", "corrupt"):
        (t.spool / name).mkdir(mode=0o700)
    os.chmod(t.spool / sub, 0o777)
    refused(t, f"spool directory {t.spool / sub}: writable by group or others")


def test_spool_owned_by_another_user_refused(make_tern):
    t = make_tern(start=False)
    t.spool.mkdir(mode=0o700)
    os.chown(t.spool, NOBODY, NOBODY)
    refused(t, f"spool directory {t.spool}: owned by uid {NOBODY}")


def test_spool_subdirectory_symlink_refused(make_tern, tmp_path):
    t = make_tern(start=False)
    t.spool.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (t.spool / "log").symlink_to(elsewhere)
    refused(t, f"spool directory {t.spool / 'log'}:")


def test_missing_spool_created_private_and_check_passes(make_tern):
    t = make_tern(start=False)
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 0, p.stderr
    assert not t.spool.exists(), "--check must not create the spool"
    t.start()
    # Made by the root parent, then handed to the user the relay runs as.
    owner = pwd.getpwnam(TEST_USER).pw_uid if TEST_USER else os.geteuid()
    for d in (t.spool, t.spool / "log", t.spool / "corrupt"):
        st = os.stat(d)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == owner, (d, oct(st.st_mode))
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 0, p.stderr


def queue_one(t, sink):
    """One message queued (the sink defers it), ternd stopped; returns the
    recipient and the one segment file holding it."""
    sink.rcpt_rule = lambda a: "451 4.3.0 not now"
    t.start()
    u = uid()
    r = f"queued-{u}@example.org"
    t.send(f"s-{u}@src.test", [r], message(f"{r} {u}", to=r))
    wait_for(lambda: len(t.queued()) == 1, desc="a queued message")
    rc, _ = t.stop()
    assert rc == 0
    (seg,) = [p for p in (t.spool / "log").glob("*.seg") if r.encode() in p.read_bytes()]
    return r, seg


def test_segment_of_another_owner_not_delivered(make_tern, sink):
    t = make_tern(start=False)
    rcpt, seg = queue_one(t, sink)
    # As if user nobody had planted it (valid checksums and all).
    os.chown(seg, NOBODY, NOBODY)
    sink.accept_all()
    mark = t.log_mark()
    t.start()
    ev = t.wait_event("segment_ignored", since=mark)
    assert "owned" in ev["reason"] and seg.name in ev["segment"], ev
    u = uid()
    after = f"after-{u}@example.org"
    t.send(f"s-{u}@src.test", [after], message("after " + u, to=after))
    assert sink.wait_to(after)
    assert sink.to(rcpt) == []
    assert t.queued() == []


def test_fifo_in_log_does_not_hang_start(make_tern, sink):
    t = make_tern(start=False)
    t.spool.mkdir(mode=0o700)
    (t.spool / "log").mkdir(mode=0o700)
    fifo = t.spool / "log" / "0000000000000fff.seg"
    os.mkfifo(fifo, 0o600)
    t.start()  # serves: the FIFO was not waited on
    u = uid()
    r = f"after-fifo-{u}@example.org"
    t.send(f"s-{u}@src.test", [r], message("after " + u, to=r))
    assert sink.wait_to(r)
    ev = t.wait_event("segment_ignored")
    assert "not a regular file" in ev["reason"], ev
    rc, took = t.stop()
    assert rc == 0


def test_symlink_in_log_not_followed(make_tern, sink):
    t = make_tern(start=False)
    rcpt, seg = queue_one(t, sink)
    # A valid segment moved out of the spool, reached through a symbolic
    # link with its own name.
    outside = t.workdir / "outside-segment"
    os.rename(seg, outside)
    os.symlink(outside, seg)
    idx = seg.with_suffix(".idx")
    if idx.exists():
        idx.unlink()
    sink.accept_all()
    mark = t.log_mark()
    t.start()
    ev = t.wait_event("segment_ignored", since=mark)
    assert seg.name in ev["segment"], ev
    u = uid()
    after = f"after-{u}@example.org"
    t.send(f"s-{u}@src.test", [after], message("after " + u, to=after))
    assert sink.wait_to(after)
    assert sink.to(rcpt) == []
    assert outside.is_file()
    rc, _ = t.stop(signal.SIGTERM)
    assert rc == 0
