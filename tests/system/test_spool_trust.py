"""What ternd trusts in its spool: a spool directory (or tmp/, queue/,
corrupt/) that others could write to, or that belongs to another user, is
refused at start and by --check; queue entries that are not regular files
of the spool's owner (planted files, FIFOs, symbolic links) are set aside,
never delivered, and never hang the start. The tests run as root and make
another owner with os.chown (uid 65534, nobody)."""

import os
import signal
import stat

import pytest

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


@pytest.mark.parametrize("sub", ["tmp", "queue", "corrupt"])
def test_spool_subdirectory_writable_by_others_refused(make_tern, sub):
    t = make_tern(start=False)
    t.spool.mkdir(mode=0o700)
    for name in ("tmp", "queue", "corrupt"):
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
    (t.spool / "queue").symlink_to(elsewhere)
    refused(t, f"spool directory {t.spool / 'queue'}:")


def test_missing_spool_created_private_and_check_passes(make_tern):
    t = make_tern(start=False)
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 0, p.stderr
    assert not t.spool.exists(), "--check must not create the spool"
    t.start()
    for d in (t.spool, t.spool / "tmp", t.spool / "queue", t.spool / "corrupt"):
        st = os.stat(d)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid(), (d, oct(st.st_mode))
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 0, p.stderr


def queue_two(t, sink):
    """Two messages queued (the sink defers them), ternd stopped; returns
    {recipient: qid}."""
    sink.rcpt_rule = lambda a: "451 4.3.0 not now"
    t.start()
    u = uid()
    rcpts = [f"mine-{u}@example.org", f"other-{u}@example.org"]
    for r in rcpts:
        t.send(f"s-{u}@src.test", [r], message(f"{r} {u}", to=r))
    wait_for(lambda: len(t.queue_files()) == 2, desc="two queued messages")
    rc, _ = t.stop()
    assert rc == 0
    q = t.spool / "queue"
    by_rcpt = {}
    for name in t.queue_files():
        data = (q / name).read_bytes()
        for r in rcpts:
            if r.encode() in data:
                by_rcpt[r] = name
    assert len(by_rcpt) == 2, by_rcpt
    return rcpts, by_rcpt


def test_queue_file_of_another_owner_not_delivered(make_tern, sink):
    t = make_tern(start=False)
    (mine, planted), qid = queue_two(t, sink)
    # As if user nobody had planted it (valid checksums and all).
    os.chown(t.spool / "queue" / qid[planted], NOBODY, NOBODY)
    sink.accept_all()
    mark = t.log_mark()
    t.start()
    assert sink.wait_to(mine)
    corrupt = t.spool / "corrupt"
    wait_for(lambda: (corrupt / qid[planted]).exists(), desc="the planted file set aside")
    ev = t.wait_event("corrupt", since=mark, qid=qid[planted])
    assert "owned" in ev["reason"], ev
    assert sink.to(planted) == []
    assert qid[planted] not in t.queue_files()
    assert t.ctl("queue", "list").stdout.decode().strip() == ""


def test_fifo_in_queue_does_not_hang_start(make_tern, sink):
    t = make_tern(start=False)
    t.spool.mkdir(mode=0o700)
    (t.spool / "queue").mkdir(mode=0o700)
    fifo = t.spool / "queue" / "00000000000fff00"
    os.mkfifo(fifo, 0o600)
    t.start()  # serves: the FIFO was not waited on
    u = uid()
    r = f"after-fifo-{u}@example.org"
    t.send(f"s-{u}@src.test", [r], message("after " + u, to=r))
    assert sink.wait_to(r)
    ev = t.wait_event("corrupt", qid=fifo.name)
    assert "not a regular file" in ev["reason"], ev
    assert (t.spool / "corrupt" / fifo.name).exists() and not fifo.exists()
    rc, took = t.stop()
    assert rc == 0


def test_symlink_in_queue_not_followed(make_tern, sink):
    t = make_tern(start=False)
    (mine, linked), qid = queue_two(t, sink)
    # A valid message moved out of the spool, reached through a symbolic
    # link with its own queue id as the name.
    q = t.spool / "queue"
    outside = t.workdir / "outside-message"
    os.rename(q / qid[linked], outside)
    os.symlink(outside, q / qid[linked])
    sink.accept_all()
    mark = t.log_mark()
    t.start()
    assert sink.wait_to(mine)
    ev = t.wait_event("corrupt", since=mark, qid=qid[linked])
    assert "symbolic link" in ev["reason"], ev
    assert sink.to(linked) == []
    assert outside.is_file() and (t.spool / "corrupt" / qid[linked]).is_symlink()
    rc, _ = t.stop(signal.SIGTERM)
    assert rc == 0
