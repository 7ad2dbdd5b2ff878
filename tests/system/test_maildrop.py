"""Local submission while ternd is down: the maildrop, tern-drop, pickup, -bp and mailq.

Runs as root (make test): the non-root cases make a user and a group with
useradd/groupadd and remove them at the end, and install tern-drop setgid
into the test's directory.
"""

import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import binary, tool_env
from sysutil import SLOW, WAIT, holds_for, uid, wait_for

MAGIC = b"tern-maildrop 1\n"


def drop_dir(tern):
    return Path(str(tern.spool) + "-maildrop")


def drop_files(tern):
    d = drop_dir(tern)
    return sorted(p.name for p in d.iterdir() if p.name != "corrupt")


def corrupt_files(tern):
    return sorted(p.name for p in (drop_dir(tern) / "corrupt").iterdir())


def first_run(make_tern, **settings):
    """A ternd that ran once (it makes the maildrop) and is stopped."""
    tern = make_tern(**settings)
    rc, _ = tern.stop()
    assert rc == 0
    return tern


def drop_file(rcpts, body, sender=None, size=None, trailer=b"end\n"):
    head = MAGIC
    if sender is not None:
        head += b"sender " + (sender.encode() or b"<>") + b"\n"
    for r in rcpts:
        head += b"rcpt " + r.encode() + b"\n"
    head += b"size %d\n\n" % (len(body) if size is None else size)
    return head + body + trailer


def place(tern, name, data):
    """Write a drop file as tern-sendmail does: t. name, then renamed."""
    d = drop_dir(tern)
    (d / ("t." + name[2:])).write_bytes(data)
    os.rename(d / ("t." + name[2:]), d / name)


def hexname(n):
    return "d." + f"{n:032x}"


def subject_count(sink, rcpt, subject):
    return sum(1 for t in sink.to(rcpt) if subject.encode() in t.data)


# -- root, ternd down


def test_down_root_stores_and_start_delivers(make_tern, sink):
    tern = first_run(make_tern)
    u = uid()
    rcpt = f"down-{u}@example.org"
    p = tern.sendmail([rcpt], f"Subject: down {u}\n\nwhile ternd was down\n".encode())
    assert p.returncode == 0, p.stderr
    assert p.stderr == b"", "a message stored in the maildrop is reported as sent, silently"
    files = drop_files(tern)
    assert len(files) == 1 and re.fullmatch(r"d\.[0-9a-f]{32}", files[0]), files
    data = (drop_dir(tern) / files[0]).read_bytes()
    assert data.startswith(MAGIC) and data.endswith(b"\r\nend\n"), data[:200]
    assert holds_for(lambda: not sink.to(rcpt), 0.3)
    mark = tern.log_mark()
    tern.start()
    t = sink.wait_to(rcpt)[0]
    assert t.mail_from == "root@tern.test", "no -f: the file owner's login @ hostname"
    assert f"Subject: down {u}".encode() in t.data
    assert re.search(rb"^Received: by tern\.test \(tern, from userid 0\)\r\n\tid [0-9a-f]{16}; ",
        t.data, re.M), t.data[:300]
    rec = tern.wait_event("received", since=mark, uid="0")
    assert rec["subsystem"] == "pickup" and rec["file"] == files[0]
    wait_for(lambda: drop_files(tern) == [], desc="the drop file removed once queued")
    assert corrupt_files(tern) == []


def test_down_root_with_sender_and_null_sender(make_tern, sink):
    tern = first_run(make_tern)
    u = uid()
    r1, r2 = f"f1-{u}@example.org", f"f2-{u}@example.org"
    p = tern.sendmail(["-f", f"given-{u}@src.test", r1], b"Subject: f\n\nx\n")
    assert p.returncode == 0, p.stderr
    p = tern.sendmail(["-f", "<>", r2], b"Subject: null\n\nx\n")
    assert p.returncode == 0, p.stderr
    tern.start()
    assert sink.wait_to(r1)[0].mail_from == f"given-{u}@src.test"
    assert sink.wait_to(r2)[0].mail_from == ""


def test_no_maildrop_exits_75(make_tern, sink):
    """ternd never ran here: no maildrop, nothing can be stored."""
    tern = make_tern(start=False)
    p = tern.sendmail([f"x-{uid()}@example.org"], b"Subject: x\n\nx\n")
    assert p.returncode == 75, (p.returncode, p.stderr)
    assert b"cannot connect" in p.stderr and b"maildrop" in p.stderr, p.stderr


def test_refused_by_ternd_is_not_dropped(make_tern, sink):
    """A permanent refusal stays an error: the maildrop is for a ternd that
    cannot take mail, not for one that says no."""
    tern = make_tern(relay_networks="10.0.0.0/8")
    p = tern.sendmail(["-f", "a@src.test", f"x-{uid()}@elsewhere.test"], b"Subject: x\n\nx\n")
    assert p.returncode not in (0, 75), (p.returncode, p.stderr)
    assert b"554" in p.stderr, p.stderr
    assert drop_files(tern) == []


# -- non-root through the setgid helper


@pytest.fixture
def local_user(tmp_path):
    """A throw-away user and group (for maildrop_group), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root (useradd, setgid helper)")
    n = uid()[-6:]
    group, user = f"tdrop{n}", f"tuser{n}"
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", user], check=True)
    try:
        yield pwd.getpwnam(user), grp.getgrnam(group)
    finally:
        subprocess.run(["userdel", user], check=False)
        subprocess.run(["groupdel", group], check=False)


def install_helper(tern, gr, setgid=True):
    """tern-drop in a directory others may enter, setgid to gr."""
    d = tern.shortdir / "bin"
    d.mkdir(exist_ok=True)
    h = d / "tern-drop"
    shutil.copy(binary("tern-drop"), h)
    os.chown(h, 0, gr.gr_gid)
    os.chmod(h, 0o2755 if setgid else 0o755)
    return h


def as_user(pw, argv, stdin, extra_env):
    env = tool_env()
    env.update(extra_env)
    env["HOME"] = "/"

    def drop_privileges():
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return subprocess.run(argv, input=stdin, capture_output=True, timeout=30 * SLOW, env=env,
        preexec_fn=drop_privileges, cwd="/")


def public_config(tern):
    """A copy of the configuration that the test user can read."""
    os.chmod(tern.shortdir, 0o755)
    conf = tern.shortdir / "tern.conf"
    shutil.copy(tern.conf, conf)
    os.chmod(conf, 0o644)
    return conf


def test_down_nonroot_through_helper(make_tern, sink, local_user):
    pw, gr = local_user
    tern = first_run(make_tern, maildrop_group=gr.gr_name)
    st = drop_dir(tern).stat()
    assert st.st_mode & 0o7777 == 0o1730 and st.st_gid == gr.gr_gid, oct(st.st_mode)
    conf = public_config(tern)
    u = uid()
    rcpt = f"user-{u}@example.org"
    msg = f"Subject: from {pw.pw_name} {u}\n\nhello\n".encode()

    # Without the setgid bit the user cannot write there: 75, nothing stored.
    plain = install_helper(tern, gr, setgid=False)
    p = as_user(pw, [binary("tern-sendmail"), "-C", str(conf), rcpt], msg,
        {"TERN_DROP_HELPER": str(plain)})
    assert p.returncode == 75, (p.returncode, p.stderr)
    assert drop_files(tern) == []

    helper = install_helper(tern, gr)
    p = as_user(pw, [binary("tern-sendmail"), "-C", str(conf), rcpt], msg,
        {"TERN_DROP_HELPER": str(helper)})
    assert p.returncode == 0, p.stderr
    files = drop_files(tern)
    assert len(files) == 1, files
    fst = (drop_dir(tern) / files[0]).stat()
    assert fst.st_uid == pw.pw_uid and fst.st_gid == gr.gr_gid, "owned by the submitter"
    assert fst.st_mode & 0o7777 == 0o644

    tern.start()
    t = sink.wait_to(rcpt)[0]
    assert t.mail_from == f"{pw.pw_name}@tern.test", t.mail_from
    assert f"(tern, from userid {pw.pw_uid})".encode() in t.data
    tern.wait_event("received", uid=str(pw.pw_uid))


def test_helper_refuses_what_it_must(make_tern, sink, local_user):
    pw, gr = local_user
    tern = first_run(make_tern, maildrop_group=gr.gr_name)
    public_config(tern)
    helper = str(install_helper(tern, gr))
    good = drop_file(["a@b.test"], b"Subject: x\r\n\r\nx\r\n")
    # a directory not of its group (here: one the user may not write)
    other = tern.shortdir / "other"
    other.mkdir(mode=0o1777)
    os.chmod(other, 0o1777)
    p = as_user(pw, [helper, str(other)], good, {})
    assert p.returncode != 0 and list(other.iterdir()) == [], p.stderr
    # malformed input: 65, nothing stored
    for bad in (b"garbage\n", good[:-3], good.replace(b"\r\n\r\n", b"\n\r\n\r"),
            drop_file(["a@b.test"], b"a\nb\r\n")):
        p = as_user(pw, [helper, str(drop_dir(tern))], bad, {})
        assert p.returncode == 65, (bad, p.returncode, p.stderr)
    assert drop_files(tern) == []
    # a configuration or environment does not move it elsewhere
    p = as_user(pw, [helper, str(drop_dir(tern))], good,
        {"TERN_CONFIG": "/nonexistent", "TMPDIR": str(other)})
    assert p.returncode == 0, p.stderr
    assert len(drop_files(tern)) == 1


# -- pickup while running, hostile files, kill -9


def test_pickup_while_running(make_tern, sink):
    tern = make_tern()
    # A configuration whose listener nobody serves: tern-sendmail falls back
    # to the maildrop of the same spool while ternd runs.
    other = tern.workdir / "dead-port.conf"
    settings = dict(tern.settings, smtp_listen="127.0.0.1:1")
    other.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    u = uid()
    rcpt = f"live-{u}@example.org"
    p = subprocess.run([binary("tern-sendmail"), "-C", str(other), rcpt],
        input=f"Subject: live {u}\n\nx\n".encode(), capture_output=True, env=tool_env())
    assert p.returncode == 0, p.stderr
    sink.wait_to(rcpt, timeout=5 * SLOW)
    tern.wait_event("received", subsystem="pickup")
    wait_for(lambda: drop_files(tern) == [], desc="the drop file removed")


def test_hostile_drop_files(make_tern, sink):
    tern = make_tern(max_message_size="64k", max_recipients="2")
    d = drop_dir(tern)
    u = uid()
    passwd = Path("/etc/passwd").read_bytes()
    os.symlink("/etc/passwd", d / hexname(1))
    os.mkfifo(d / hexname(2))
    with open(d / hexname(3), "wb") as f:  # huge (sparse)
        f.truncate(64 * 1024 * 1024)
    (d / hexname(4)).write_bytes(b"\x00\xff garbage \n" * 100)
    good = drop_file([f"t-{u}@example.org"], b"Subject: t\r\n\r\nbody\r\n")
    (d / hexname(5)).write_bytes(good[:-10])  # truncated
    (d / hexname(6)).write_bytes(drop_file([f"lf-{u}@example.org"], b"Subject: x\n\nbare LF\n"))
    (d / hexname(7)).write_bytes(drop_file([f"big-{u}@example.org"], b"x" * 100 + b"\r\n",
        size=200 * 1024))
    (d / "junk-name").write_bytes(good)
    os.link(d / "junk-name", tern.shortdir / "second-link")
    (d / hexname(8)).write_bytes(good)
    os.link(d / hexname(8), tern.shortdir / "link-to-8")
    (d / hexname(11)).write_bytes(drop_file([f"r{i}-{u}@example.org" for i in range(3)],
        b"Subject: many\r\n\r\nx\r\n"))
    hostile = [hexname(i) for i in list(range(1, 9)) + [11]] + ["junk-name"]
    ok_rcpt = f"ok-{u}@example.org"
    place(tern, hexname(9), drop_file([ok_rcpt], f"Subject: ok {u}\r\n\r\nfine\r\n".encode()))
    sink.wait_to(ok_rcpt, timeout=10 * SLOW)
    wait_for(lambda: corrupt_files(tern) == sorted(hostile), timeout=10 * SLOW,
        desc=f"every hostile file in corrupt/: {corrupt_files(tern)}")
    assert drop_files(tern) == []
    assert len(tern.events("corrupt", subsystem="pickup")) == len(hostile)
    assert tern.running()
    assert Path("/etc/passwd").read_bytes() == passwd
    assert os.path.islink(d / "corrupt" / hexname(1)), "the link itself moved, not followed"
    for r in (f"t-{u}@example.org", f"lf-{u}@example.org", f"big-{u}@example.org",
            f"r0-{u}@example.org"):
        assert not sink.to(r)
    # nothing comes back and no line repeats on later passes
    n = len(tern.events("corrupt"))
    place(tern, hexname(10), drop_file([ok_rcpt], b"Subject: again\r\n\r\nx\r\n"))
    sink.wait_to(ok_rcpt, count=2)
    assert len(tern.events("corrupt")) == n


def test_claimed_file_after_a_crash(make_tern, sink):
    """The two states a kill -9 between claim and unlink leaves: a claim
    whose message the spool has (removed, not delivered again) and one it
    has not (picked up)."""
    tern = make_tern()
    u = uid()
    queued = f"queued-{u}@example.org"
    sink.rcpt_replies[queued] = "451 4.3.0 not yet"
    body = f"Subject: claimed {u}\r\n\r\nx\r\n".encode()
    tern.send(f"s-{u}@src.test", [queued], body)
    qid = tern.qid_of(f"s-{u}@src.test")
    tern.wait_event("deferred", qid=qid)
    rc, _ = tern.stop()
    assert rc == 0
    d = drop_dir(tern)
    (d / f"c.{'a' * 32}.{qid}").write_bytes(drop_file([queued], body))
    lost = f"lost-{u}@example.org"
    (d / f"c.{'b' * 32}.{'0' * 16}").write_bytes(
        drop_file([lost], f"Subject: lost {u}\r\n\r\nx\r\n".encode()))
    sink.rcpt_replies.clear()
    tern.start()
    sink.wait_to(lost)
    sink.wait_to(queued)
    tern.wait_event("already_queued", qid=qid)
    wait_for(lambda: drop_files(tern) == [], desc="both claims resolved")
    assert holds_for(lambda: len(sink.to(queued)) == 1 and len(sink.to(lost)) == 1, 1.0)


def test_kill9_during_pickup(make_tern, sink):
    tern = first_run(make_tern)
    u = uid()
    n = 30
    rcpts = [f"k{i}-{u}@example.org" for i in range(n)]
    for i, r in enumerate(rcpts):
        place(tern, hexname(0x1000 + i), drop_file([r], f"Subject: k{i} {u}\r\n\r\nx\r\n".encode()))
    # Deliveries wait, so that a duplicate could only come from the pickup.
    sink.data_reply = "451 4.3.0 not now"
    mark = tern.log_mark()
    tern.start(wait=False)
    wait_for(lambda: tern.events("received", since=mark, subsystem="pickup"), timeout=WAIT,
        interval=0.001, desc="the first pickup")
    tern.kill9()
    sink.data_reply = None
    tern.start()
    for r in rcpts:
        sink.wait_to(r, timeout=20 * SLOW)
    wait_for(lambda: drop_files(tern) == [], desc="every drop file gone")
    assert holds_for(lambda: all(len(sink.to(r)) == 1 for r in rcpts), 1.0), [
        (r, len(sink.to(r))) for r in rcpts if len(sink.to(r)) != 1]


# -- listing the queue


def list_lines(text):
    return [l for l in text.splitlines() if re.match(r"^[0-9a-f]{16}\s", l)]


def strip_age(line):
    """The line without its age and next-attempt columns (they move)."""
    return re.sub(r"^([0-9a-f]{16})\s+\S+\s+(?:in \S+|now|held|-)", r"\1", line)


def test_bp_and_mailq(make_tern, sink, local_user):
    pw, gr = local_user
    # retried only in an hour: the listings compared below stay the same
    tern = make_tern(maildrop_group=gr.gr_name, retry_initial="1h", retry_max="1h")
    u = uid()
    rcpt = f"held-{u}@example.org"
    sink.rcpt_replies[rcpt] = "451 4.3.0 later"
    tern.send(f"q-{u}@src.test", [rcpt], f"Subject: q {u}\r\n\r\nx\r\n")
    qid = tern.qid_of(f"q-{u}@src.test")
    tern.wait_event("deferred", qid=qid)
    mailq = tern.shortdir / "mailq"
    os.symlink(binary("tern-sendmail"), mailq)

    def listings():
        ctl = tern.ctl("queue", "list")
        bp = tern.sendmail(["-bp"], b"")
        mq = tern._run([str(mailq), "-C", str(tern.conf)])
        for p in (ctl, bp, mq):
            assert p.returncode == 0, p.stderr
        return [list(map(strip_age, list_lines(p.stdout.decode()))) for p in (ctl, bp, mq)]

    ctl, bp, mq = listings()
    assert len(ctl) == 1 and ctl[0].startswith(qid), ctl
    assert bp == ctl and mq == ctl, (ctl, bp, mq)

    # A user who may not read the spool is told so, clearly.
    conf = public_config(tern)
    p = as_user(pw, [binary("tern-sendmail"), "-C", str(conf), "-bp"], b"", {})
    assert p.returncode == 69 and b"queue report unavailable" in p.stderr, (p.returncode, p.stderr)

    rc, _ = tern.stop()
    assert rc == 0
    ctl, bp, mq = listings()
    assert len(bp) == 1 and bp[0].startswith(qid) and bp == ctl and mq == ctl, (ctl, bp, mq)
    p = as_user(pw, [binary("tern-sendmail"), "-C", str(conf), "-bp"], b"", {})
    assert p.returncode == 69 and b"mail system is down" in p.stderr, (p.returncode, p.stderr)


def test_check_refuses_bad_maildrop(make_tern, sink):
    tern = make_tern(start=False)
    f = tern.shortdir / "not-a-dir"
    f.write_text("x")
    tern.update(maildrop_dir=str(f))
    p = tern.ternd("-c", str(tern.conf), "--check")
    assert p.returncode == 2 and b"maildrop_dir" in p.stderr, p.stderr
    tern.update(maildrop_dir=str(tern.spool) + "/drop")
    p = tern.ternd("-c", str(tern.conf), "--check")
    assert p.returncode == 2 and b"outside spool_dir" in p.stderr, p.stderr


def test_picked_up_mail_is_dkim_signed(make_tern, sink):
    """Local submission is our users' mail: signed like relay_networks mail."""
    from test_dkim import Keys, keygen, verify_all

    tern = make_tern(start=False)
    keys = Keys()
    keygen(tern, keys, "a.test", "sel1", "--algorithm", "ed25519")
    tern.update(dkim_sign=" ".join(keys.entries))
    tern.start()
    rc, _ = tern.stop()
    assert rc == 0
    u = uid()
    rcpt = f"signed-{u}@example.org"
    p = tern.sendmail(["-f", f"me-{u}@a.test", rcpt],
        f"From: Me <me-{u}@a.test>\nSubject: signed {u}\n\nbody\n".encode())
    assert p.returncode == 0, p.stderr
    tern.start()
    t = sink.wait_to(rcpt)[0]
    tags = verify_all(t.data, keys, 1)
    assert tags[0]["d"] == "a.test" and tags[0]["s"] == "sel1"
    assert t.data.index(b"DKIM-Signature:") < t.data.index(b"Received: by tern.test")


def test_more_files_than_one_pass(make_tern, sink):
    """A pass takes 256 names: the rest follow at once, not at the next scan;
    young t. files (being written) neither block nor spin the passes."""
    tern = first_run(make_tern, retry_initial="1h", retry_max="1h")
    u = uid()
    sink.data_reply = "451 4.3.0 not now"
    n = 300
    for i in range(n):
        place(tern, hexname(0x2000 + i), drop_file([f"m{i}-{u}@example.org"], b"S: x\r\n\r\nx\r\n"))
    d = drop_dir(tern)
    for i in range(300):
        (d / ("t." + f"{0x9000 + i:032x}")).write_bytes(b"being written")
    mark = tern.log_mark()
    tern.start()
    wait_for(lambda: len(tern.events("received", since=mark, subsystem="pickup")) == n,
        timeout=20 * SLOW, desc="every file picked up")
    assert all(p.startswith("t.") for p in drop_files(tern))
    wait_for(lambda: len(tern.events("deferred", since=mark, subsystem="delivery")) == n,
        timeout=20 * SLOW, desc="every message tried once")
    # The t. files stay, and passes do not run over them again and again:
    # ternd is idle (passes going round would take a good part of a core).
    # The relay process does the pickup (the parent only supervises).
    cpu0 = cpu_seconds(tern.relay_pid())
    assert holds_for(lambda: len(drop_files(tern)) == 300, 2.0)
    # (a quarter of a core: passes going round take most of one; the rest
    # of the relay, journal and spool threads included, is a few percent)
    assert cpu_seconds(tern.relay_pid()) - cpu0 < 0.5, "ternd keeps busy with the maildrop"


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_maildrop_that_cannot_be_made_does_not_stop_ternd(make_tern, sink):
    tern = make_tern(start=False)
    tern.update(maildrop_dir=str(tern.shortdir / "missing" / "drop"))
    tern.start()
    rec = tern.wait_event("no_maildrop", subsystem="pickup")
    assert rec["level"] == "error" and "missing/drop" in rec["reason"], rec
    u = uid()
    tern.send(f"s-{u}@src.test", [f"r-{u}@example.org"], f"Subject: {u}\r\n\r\nx\r\n")
    sink.wait_to(f"r-{u}@example.org")
    # an existing one that is not a directory is refused, as --check says
    rc, _ = tern.stop()
    assert rc == 0
    (tern.shortdir / "missing").mkdir()
    (tern.shortdir / "missing" / "drop").write_text("x")
    tern.start(wait=False)
    assert tern.proc.wait(10 * SLOW) == 1
    tern.expect_dead = True
    assert "maildrop_dir" in tern.log_tail(5)


def test_start_fixes_the_maildrop_mode(make_tern, sink):
    """An existing maildrop open to others is closed at start: 0700 without
    the group (only root and ternd's user may submit), 1730 with it."""
    tern = make_tern(start=False, maildrop_group=f"nosuchgroup{uid()[:6]}")
    d = drop_dir(tern)
    d.mkdir()
    os.chmod(d, 0o777)
    tern.start()
    assert d.stat().st_mode & 0o7777 == 0o700, oct(d.stat().st_mode)
    assert (d / "corrupt").stat().st_mode & 0o7777 == 0o700
    rec = tern.wait_event("maildrop_private", subsystem="pickup")
    assert "does not exist" in rec["reason"], rec


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ternd must switch to its user")
def test_maildrop_behind_a_root_only_directory(make_tern, sink):
    """make run from a checkout under /root: the spool and the maildrop sit
    in a directory only root may search. The root parent opens the maildrop
    for the relay, which picks mail up all the same."""
    tern = make_tern(start=False)
    os.chmod(tern.shortdir, 0o700)
    tern.start()
    assert not tern.events("no_maildrop")
    rc, _ = tern.stop()
    assert rc == 0
    u = uid()
    rcpt = f"behind-{u}@example.org"
    p = tern.sendmail([rcpt], f"Subject: behind {u}\n\nbehind /root\n".encode())
    assert p.returncode == 0, p.stderr
    assert len(drop_files(tern)) == 1
    mark = tern.log_mark()
    tern.start()
    t = sink.wait_to(rcpt)[0]
    assert f"Subject: behind {u}".encode() in t.data
    rec = tern.wait_event("received", since=mark, subsystem="pickup")
    assert rec["uid"] == "0"
    wait_for(lambda: drop_files(tern) == [], desc="the drop file removed once queued")
    assert not tern.events("no_maildrop") and not tern.events("no_inotify")
