"""Several receive loops (workers): sessions spread over every loop by
SO_REUSEPORT (ternd's parent binds a socket per loop), limits that hold over
all of them, reload (new addresses bound by the parent for every loop, kept
ones untouched) and SIGTERM with sessions on every loop, AUTH answered on
the asking loop through the keys process, and the loop threads under the
relay's seccomp filter."""

import base64
import json
import os
import re
import signal
import socket
import threading
import urllib.request

import pytest

from sysutil import SLOW, WAIT, RawSMTP, free_port, message, wait_for
from test_tls_auth import PASSWORD, add_user

WORKERS = 2


def status(t):
    url = f"http://127.0.0.1:{t.metrics_port}/status"
    with urllib.request.urlopen(url, timeout=5 * SLOW) as r:
        return json.loads(r.read())


def start(make_tern, **settings):
    port = free_port()
    t = make_tern(
        start=False, workers=WORKERS, metrics_listen=f"127.0.0.1:{port}", **settings
    )
    t.metrics_port = port
    t.start()
    return t


def subjects(sink, rcpt):
    out = set()
    for m in sink.to(rcpt):
        h = re.search(rb"^Subject: (.*?)\r?$", m.data, re.M)
        out.add(h.group(1).decode() if h else None)
    return out


def per_loop(t):
    return [w["sessions"] for w in status(t)["workers"]]


def open_until_spread(t, n, source=None, limit=40, greeting=None, port=None):
    """n open sessions (greeted; with greeting, that text in each greeting)
    with at least one on every loop: sessions are dropped and opened again
    until the kernel's spreading put one on each (each new one has an even
    chance per loop). Nobody else may hold sessions meanwhile."""
    held = []
    for _ in range(limit):
        while len(held) < n:
            c = RawSMTP(port or t.port, source=source)
            g = c.greeting()
            assert greeting is None or greeting in g.text, g
            held.append(c)
        wait_for(lambda: sum(per_loop(t)) == len(held), WAIT, desc="sessions counted per loop")
        if all(k > 0 for k in per_loop(t)):
            return held
        held.pop().close()
        wait_for(lambda: sum(per_loop(t)) == len(held), WAIT, desc="a session to end")
    raise AssertionError(f"sessions never spread over the loops: {per_loop(t)}")


def transaction(c, subject, rcpt="w@example.org"):
    """One message over an open RawSMTP session; returns the final reply."""
    assert c.cmd("MAIL FROM:<s@src.test>").code == 250
    assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(message(subject, to=rcpt) + b".\r\n")
    return c.reply()


def test_sessions_spread_over_every_loop(make_tern, sink):
    t = start(make_tern)
    assert len(status(t)["workers"]) == WORKERS
    clients = [RawSMTP(t.port) for _ in range(16)]
    for c in clients:
        c.greeting()
    # 16 connections all hashed onto one of two loops: 2^-15.
    wait_for(lambda: sum(per_loop(t)) == 16, WAIT, desc="16 sessions counted")
    assert all(k > 0 for k in per_loop(t)), per_loop(t)
    assert status(t)["sessions"] == 16
    for i, c in enumerate(clients):
        c.ehlo()
        r = transaction(c, f"spread {i}")
        assert r.code == 250, r
        c.cmd("QUIT")
        c.close()
    wait_for(lambda: len(sink.to("w@example.org")) == 16, WAIT, desc="16 delivered")
    st = status(t)
    assert st["received"] == 16
    assert all(w["accepted"] > 0 for w in st["workers"]), st["workers"]
    wait_for(lambda: status(t)["sessions"] == 0, WAIT, desc="every session gone")


def test_per_address_limit_over_loops(make_tern, sink):
    # 127.0.0.2 is outside relay_networks (127.0.0.1/32): it is limited.
    t = start(make_tern, max_sessions_per_ip=4)
    held = open_until_spread(t, 4, source="127.0.0.2")
    for _ in range(6):  # whichever loop takes it, the fifth is refused
        with RawSMTP(t.port, source="127.0.0.2") as c:
            r = c.reply()
            assert r.code == 421 and r.enh == "4.7.0", r
    # Another address is not limited by this one's count.
    with RawSMTP(t.port, source="127.0.0.3") as c:
        assert c.reply().code == 220
    held.pop().cmd("QUIT")
    wait_for(lambda: status(t)["sessions"] == 3, WAIT, desc="a session to end")
    with RawSMTP(t.port, source="127.0.0.2") as c:
        assert c.reply().code == 220
    for c in held:
        c.close()


def test_max_sessions_over_loops(make_tern, sink):
    t = start(make_tern, max_sessions=5, reserved_sessions=0)
    held = open_until_spread(t, 5)
    for _ in range(6):
        with RawSMTP(t.port) as c:
            r = c.reply()
            assert r.code == 421 and r.enh == "4.7.0", r
    for c in held:
        c.close()


def test_reload_under_load(make_tern, sink):
    t = start(make_tern)
    failures, acked = [], []

    def client(n, stop):
        i = 0
        while not stop.is_set():
            try:
                with RawSMTP(t.port) as c:
                    c.greeting()
                    c.ehlo()
                    for _ in range(3):
                        subject = f"load {n}-{i}"
                        i += 1
                        r = transaction(c, subject, rcpt="load@example.org")
                        if r.code != 250:
                            failures.append((subject, str(r)))
                        else:
                            acked.append(subject)
                    c.cmd("QUIT")
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append((n, repr(e)))
                return

    for k in range(4):
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(f"{k}.{n}", stop)) for n in range(4)]
        for th in threads:
            th.start()
        try:
            want = len(acked) + 10
            wait_for(lambda: len(acked) >= want, WAIT, desc="messages under load")
            mark = t.log_mark()
            t.update(hostname=f"reloaded{k}.test")
            t.send_signal(signal.SIGHUP)
            t.wait_event("reloaded", since=mark)
        finally:
            stop.set()
            for th in threads:
                th.join(30)
        assert not failures, failures[:5]
        # From the reloaded line on, every loop greets with the new name.
        wait_for(lambda: status(t)["sessions"] == 0, WAIT, desc="the load's sessions to end")
        for c in open_until_spread(t, 4, greeting=f"reloaded{k}.test"):
            c.close()
    wait_for(
        lambda: len(sink.to("load@example.org")) >= len(acked),
        WAIT * 2,
        desc=f"{len(acked)} messages delivered",
    )
    got = subjects(sink, "load@example.org")
    assert set(acked) <= got, sorted(set(acked) - got)[:5]
    assert status(t)["received"] == len(acked)


def test_sigterm_with_sessions_on_every_loop_loses_nothing(make_tern, sink):
    t = start(make_tern)
    sink.data_reply = "451 4.3.0 not now"  # everything stays queued until the restart
    held = open_until_spread(t, 8)
    acked = []
    for i, c in enumerate(held):
        c.ehlo()
        r = transaction(c, f"term {i}", rcpt="term@example.org")
        assert r.code == 250, r
        acked.append(f"term {i}")
    # Half of them are in the middle of a transaction, half idle.
    for c in held[::2]:
        assert c.cmd("MAIL FROM:<s@src.test>").code == 250
        assert c.cmd("RCPT TO:<term@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: never finished\r\n\r\npartial")
    wait_for(lambda: all(k > 0 for k in per_loop(t)), WAIT, desc="sessions on every loop")
    rc, took = t.stop(signal.SIGTERM)
    assert rc == 0, t.log_tail()
    for c in held:
        c.wait_closed()
        assert b"421 4.3.2" in c.buf, c.buf
        c.close()
    assert len(t.queued()) == len(acked)
    sink.data_reply = None
    t.start()
    wait_for(
        lambda: subjects(sink, "term@example.org") >= set(acked),
        WAIT * 2,
        desc="every acknowledged message delivered after the restart",
    )
    assert "never finished" not in subjects(sink, "term@example.org")


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW).close()
        return True
    except OSError:
        return False


def test_reload_new_address_reaches_every_loop_and_kept_ones_stay(make_tern, sink):
    t = start(make_tern)
    extra = free_port()
    # A session of the kept address, open across both reloads.
    kept = RawSMTP(t.port)
    kept.greeting()
    kept.ehlo()
    mark = t.log_mark()
    t.update(smtp_listen=f"127.0.0.1:{t.port} 127.0.0.1:{extra}")
    t.send_signal(signal.SIGHUP)
    t.wait_event("reloaded", since=mark)
    # The new address, bound by the parent for each loop, is served by
    # every loop; the kept one still is.
    kept.close()
    wait_for(lambda: status(t)["sessions"] == 0, WAIT, desc="the kept session to end")
    for c in open_until_spread(t, 4, port=extra):
        c.close()
    wait_for(lambda: status(t)["sessions"] == 0, WAIT, desc="the new address's sessions to end")
    for c in open_until_spread(t, 4):
        c.close()
    wait_for(lambda: status(t)["sessions"] == 0, WAIT, desc="the old address's sessions to end")
    # A session in flight on an address the next reload keeps goes on.
    kept = RawSMTP(extra)
    kept.greeting()
    kept.ehlo()
    mark = t.log_mark()
    t.update(smtp_listen=f"127.0.0.1:{extra}")
    t.send_signal(signal.SIGHUP)
    t.wait_event("reloaded", since=mark)
    assert transaction(kept, "across reloads").code == 250
    kept.cmd("QUIT")
    kept.close()
    sink.wait_to("w@example.org")
    # The dropped address is closed by every loop (no loop keeps its
    # socket of the group open).
    wait_for(lambda: not listening(t.port), WAIT, desc="the dropped address closed")
    for c in open_until_spread(t, 4, port=extra):
        c.close()


def auth_plain(c, user, password):
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return c.cmd(f"AUTH PLAIN {token}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the keys process split)")
def test_auth_through_the_keys_process_answers_on_every_loop(make_tern, tmp_path):
    port = free_port()
    t = make_tern(
        start=False,
        workers=WORKERS,
        metrics_listen=f"127.0.0.1:{port}",
        auth_users_file=tmp_path / "users",
        auth_allow_plaintext_loopback="yes",
        auth_failure_delay="0s",
    )
    t.metrics_port = port
    add_user(t, "alice", PASSWORD)
    t.start()
    held = open_until_spread(t, 6)
    # Each session's check goes to the keys process and its answer comes
    # back to the loop that asked: every session, on either loop, gets it.
    for c in held:
        assert c.ehlo().code == 250
        r = auth_plain(c, "alice", PASSWORD)
        assert r.code == 235, r
    bad = RawSMTP(t.port)
    bad.greeting()
    bad.ehlo()
    r = auth_plain(bad, "alice", "not it")
    assert r.code == 535, r
    for c in held + [bad]:
        c.close()


def test_receive_loops_run_under_seccomp(make_tern):
    t = start(make_tern)
    relay = t.relay_pid()

    def loops():
        out = {}
        for tid in os.listdir(f"/proc/{relay}/task"):
            try:
                with open(f"/proc/{relay}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{relay}/task/{tid}/status") as f:
                    st = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                continue
            if name.startswith("smtp-"):
                out[name] = st["Seccomp"].strip()
        return out

    got = wait_for(lambda: len(loops()) == WORKERS and loops(), WAIT, desc="the loop threads")
    assert got == {f"smtp-{i}": "2" for i in range(WORKERS)}, got
    # And they serve under it: a message through each loop.
    for i, c in enumerate(open_until_spread(t, 4)):
        c.ehlo()
        assert transaction(c, f"filtered {i}").code == 250
        c.close()


def test_reload_cannot_change_workers(make_tern, sink):
    t = start(make_tern)
    extra = free_port()
    mark = t.log_mark()
    t.update(workers=WORKERS + 1, smtp_listen=f"127.0.0.1:{t.port} 127.0.0.1:{extra}")
    t.send_signal(signal.SIGHUP)
    ev = t.wait_event("reload_failed", since=mark)
    assert "workers cannot change" in ev["errors"], ev
    # Nothing of it was taken: no socket on the new address, the loops as
    # they were, still serving.
    assert not listening(extra)
    assert len(status(t)["workers"]) == WORKERS
    for c in open_until_spread(t, 4):
        c.close()
