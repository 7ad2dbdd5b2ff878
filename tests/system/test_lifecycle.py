"""Process life cycle: --check, -o, SIGHUP, SIGTERM, kill -9 durability."""

import os
import random
import signal
import smtplib
import stat
import threading
import time

from sysutil import SLOW, WAIT, ehlo_keywords, message, split_received, uid, wait_for


def ehlo_size(tern):
    with tern.raw() as c:
        return ehlo_keywords(c.ehlo()).get("SIZE", "").strip()


def test_check_good_and_bad(make_tern):
    tern = make_tern(start=False)
    p = tern.ternd("-c", str(tern.conf), "--check")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert not tern.running()

    bad = tern.workdir / "bad.conf"
    bad.write_text(
        "# a comment\n"
        "hostname = tern.test\n"
        "no_such_setting = 1\n"
        f"spool_dir = {tern.spool}\n"
        "relay_networks = 10.0.0.0/33 127.0.0.1/32\n"
        "max_message_size = 10k\n"
    )
    p = tern.ternd("-c", str(bad), "--check")
    err = p.stderr.decode(errors="replace") + p.stdout.decode(errors="replace")
    assert p.returncode == 2, (p.returncode, err)
    assert f"{bad}:3" in err, f"unknown setting must be reported as FILE:3:\n{err}"
    assert f"{bad}:5" in err, f"bad CIDR must be reported as FILE:5:\n{err}"
    assert f"{bad}:6" not in err and f"{bad}:2" not in err, err

    p = tern.ternd("-c", str(tern.conf), "-o", "max_message_size=lots", "--check")
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2 and "max_message_size" in err, (p.returncode, err)
    p = tern.ternd("-c", str(tern.conf), "--no-such-flag", "--check")
    assert p.returncode == 2, p.returncode
    p = tern.ternd("-c", str(tern.workdir / "missing.conf"), "--check")
    assert p.returncode == 2, p.returncode


def test_override_and_spool_creation(make_tern):
    tern = make_tern(start=False)
    assert not tern.spool.exists()
    tern.start(args=("-o", "max_message_size=12345"))
    assert ehlo_size(tern) == "12345"
    st = os.stat(tern.spool)
    assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)


def test_sighup_reload(make_tern, sink):
    tern = make_tern(max_message_size=10000)
    assert ehlo_size(tern) == "10000"
    tern.update(max_message_size=20000)
    tern.send_signal(signal.SIGHUP)
    wait_for(lambda: ehlo_size(tern) == "20000", 10 * SLOW, interval=0.1, desc="new SIZE after SIGHUP")

    # a broken file: the daemon keeps the old configuration and says so
    mark = tern.log_mark()
    good = tern.conf.read_text()
    tern.write_config(good + "bogus_setting = 1\nmax_message_size = 30000\n")
    tern.send_signal(signal.SIGHUP)
    warn = wait_for(
        lambda: [r for r in tern.events(since=mark) if r["level"] in ("warn", "error", "crit")],
        10 * SLOW,
        desc="a log line about the failed reload",
    )
    assert any("bogus_setting" in r["_raw"] or str(tern.conf) in r["_raw"] for r in warn), [
        r["_raw"] for r in warn
    ]
    assert tern.running()
    assert ehlo_size(tern) == "20000", "the old configuration stays after a bad reload"
    u = uid()
    tern.send(f"hup-{u}@src.test", [f"hup-{u}@example.org"], message(f"hup {u}"))
    sink.wait_to(f"hup-{u}@example.org")
    tern.write_config(good)


def test_sigterm_with_sessions_in_flight(tern, sink):
    idle = tern.raw()
    idle.ehlo()
    mid = tern.raw()
    mid.ehlo()
    assert mid.cmd("MAIL FROM:<mid@src.test>").code == 250
    assert mid.cmd("RCPT TO:<mid@example.org>").code == 250
    assert mid.cmd("DATA").code == 354
    mid.send(b"Subject: half a message\r\n\r\nsome text\r\n")
    rc, took = tern.stop(signal.SIGTERM, 30)
    assert rc == 0, f"exit status {rc}"
    assert took < 30
    for c in (idle, mid):
        assert c.wait_closed(5 * SLOW), "sessions are closed at exit"
        if c.buf:
            assert c.buf.startswith(b"421 4."), c.buf
        c.close()
    assert tern.queued() == [], "an unfinished message is not queued"
    tern.start()
    assert tern.queued() == []
    assert sink.to("mid@example.org") == []


def test_sigterm_keeps_queued_mail(tern, sink):
    u = uid()
    sender = f"term-{u}@src.test"
    rcpt = f"term-{u}@example.org"
    sink.rcpt_replies[rcpt] = "451 4.3.0 not today"
    data = message(f"term {u}", sender=sender)
    tern.send(sender, [rcpt], data)
    qid = tern.qid_of(sender)
    tern.wait_event("deferred", qid=qid)
    rc, took = tern.stop(signal.SIGTERM, 30)
    assert rc == 0 and took < 30, (rc, took)
    assert qid in tern.queued(), "queued mail survives SIGTERM"
    sink.rcpt_replies.clear()
    t0 = time.monotonic()
    tern.start()
    tx = sink.wait_to(rcpt)[0]
    assert time.monotonic() - t0 < 10 * SLOW, "due mail is attempted at once after a restart"
    assert split_received(tx.data)[1] == data
    assert qid in tx.data.decode(errors="replace")
    wait_for(lambda: tern.queued() == [], desc="queue empty")
    assert len(sink.to(rcpt)) == 1


def test_kill9_loses_no_acknowledged_message(tern, sink):
    seed = int.from_bytes(os.urandom(4), "little")
    rnd = random.Random(seed)
    u = uid()
    threads_n, per_thread = 4, 50
    acked = set()
    lock = threading.Lock()
    done = []
    target = rnd.randint(20, threads_n * per_thread - 20)

    def worker(t):
        try:
            with smtplib.SMTP("127.0.0.1", tern.port, timeout=20 * SLOW) as s:
                s.ehlo("client.test")
                for i in range(per_thread):
                    rcpt = f"k{t}-{i}-{u}@example.org"
                    if s.mail(f"k{t}-{u}@src.test")[0] != 250:
                        return
                    if s.rcpt(rcpt)[0] != 250:
                        return
                    code, _ = s.data(message(f"kill {t} {i} {u}", to=rcpt))
                    if code == 250:
                        with lock:
                            acked.add(rcpt)
                    else:
                        return
        except (smtplib.SMTPException, OSError):
            return
        finally:
            with lock:
                done.append(t)

    ths = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads_n)]
    t0 = time.monotonic()
    for th in ths:
        th.start()
    wait_for(lambda: len(acked) >= target or len(done) == threads_n, 60 * SLOW, interval=0.001,
             desc="clients to make progress")
    time.sleep(rnd.uniform(0, 0.02))
    tern.kill9()
    killed_after = time.monotonic() - t0
    for th in ths:
        th.join(30 * SLOW)
    with lock:
        acked_now = set(acked)
    info = f"seed={seed} target={target} acked={len(acked_now)} killed after {killed_after:.2f}s"
    print(info)
    assert len(acked_now) >= target, info
    tern.start()

    def delivered():
        return {r.lower() for t in sink.snapshot() for r in t.rcpt_tos}

    wait_for(lambda: acked_now <= delivered(), WAIT * 2,
             desc=f"every acknowledged message at the sink ({info}); missing "
                  f"{sorted(acked_now - delivered())[:5]}")
    wait_for(lambda: tern.queued() == [], WAIT, desc=f"queue empty ({info})")
    # and nothing the sink got is foreign
    for t in sink.snapshot():
        for r in t.rcpt_tos:
            assert r.endswith(f"-{u}@example.org"), r
