"""AUTH under attack: many parallel guesses from one address are bounded by
auth_max_failures and cannot crowd out another address's valid login; an
auth_users_file that others could change is refused. Plaintext AUTH on
loopback (auth_allow_plaintext_loopback) keeps these tests free of TLS."""

import base64
import os
import signal
import smtplib

import pytest

from sysutil import SLOW, RawSMTP, uid, wait_for
from test_tls_auth import add_user

PASSWORD = "correct horse battery"
ATTACKERS = 100
ATTACKER_ADDR = "127.0.0.2"


def plain(user, password):
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


@pytest.fixture
def auth_tern(make_tern, tmp_path):
    """ternd with AUTH on plaintext loopback and user alice."""

    def make(start=True, **settings):
        d = tmp_path / f"auth{uid()}"
        d.mkdir()
        base = dict(
            auth_users_file=d / "users",
            auth_allow_plaintext_loopback="yes",
            auth_failure_delay="0s",
            max_sessions_per_ip=2 * ATTACKERS,
            log_level="debug",
        )
        base.update(settings)
        t = make_tern(start=False, **base)
        add_user(t, "alice", PASSWORD)
        t.users = d / "users"
        if start:
            t.start()
        return t

    return make


def open_attackers(t, n):
    conns = []
    for _ in range(n):
        c = RawSMTP(t.port, source=ATTACKER_ADDR, timeout=60 * SLOW)
        c.greeting()
        c.ehlo()
        conns.append(c)
    return conns


def flood(conns):
    """Every connection sends a wrong password at once; returns the replies
    (the code of each, or "closed")."""
    for i, c in enumerate(conns):
        c.send(f"AUTH PLAIN {plain('alice', f'guess{i}')}\r\n")
    return conns


def collect(conns):
    codes = []
    for c in conns:
        try:
            codes.append(c.reply().code)
        except EOFError:
            codes.append("closed")
        c.close()
    return codes


def valid_login(t):
    s = smtplib.SMTP("127.0.0.1", t.port, timeout=30 * SLOW)
    try:
        s.ehlo("client.test")
        code, msg = s.docmd("AUTH", "PLAIN " + plain("alice", PASSWORD))
        return code, msg
    finally:
        s.close()


def checks_from(t, addr):
    return [e for e in t.events("auth_check") if e.get("client") == addr]


def test_parallel_guesses_bounded_by_max_failures(auth_tern):
    t = auth_tern(auth_max_failures=5, auth_lockout="1h")
    conns = flood(open_attackers(t, ATTACKERS))
    # While the guesses are queued, a valid user from another address logs
    # in at once: the attack neither refuses nor queues it behind the flood.
    code, msg = valid_login(t)
    assert (code, msg[:5]) == (235, b"2.7.0"), (code, msg)
    codes = collect(conns)
    checked = [c for c in codes if c in (535, 421)]
    refused = [c for c in codes if c == 454]
    assert len(checked) <= 5, f"{len(checked)} passwords checked for one address: {codes}"
    assert len(checked) + len(refused) == ATTACKERS, codes
    # The daemon's own count: one auth_check line per password checked.
    assert 1 <= len(checks_from(t, ATTACKER_ADDR)) <= 5, checks_from(t, ATTACKER_ADDR)
    assert [e["result"] for e in checks_from(t, "127.0.0.1")] == ["ok"]
    # The address is locked out now; alice elsewhere is not.
    with RawSMTP(t.port, source=ATTACKER_ADDR) as c:
        c.greeting()
        c.ehlo()
        assert c.cmd(f"AUTH PLAIN {plain('alice', PASSWORD)}").code == 454
    assert valid_login(t)[0] == 235


def test_one_address_cannot_fill_the_check_queue(auth_tern):
    # A lax limit: the throttle does not stop this flood, the fair queue must.
    t = auth_tern(auth_max_failures=1000)
    conns = flood(open_attackers(t, ATTACKERS))
    code, msg = valid_login(t)
    assert (code, msg[:5]) == (235, b"2.7.0"), (code, msg)
    codes = collect(conns)
    assert set(codes) <= {535, 454}, codes
    assert [e["result"] for e in checks_from(t, "127.0.0.1")] == ["ok"]


def test_guess_from_closed_session_still_counts(auth_tern):
    t = auth_tern(auth_max_failures=3, auth_lockout="1h")
    # Hang up right after each guess: the check runs all the same and the
    # failure counts against the address.
    for i in range(3):
        with RawSMTP(t.port, source=ATTACKER_ADDR) as c:
            c.greeting()
            c.ehlo()
            c.send(f"AUTH PLAIN {plain('alice', f'guess{i}')}\r\n")
    wait_for(lambda: len(checks_from(t, ATTACKER_ADDR)) == 3, desc="three checks")
    with RawSMTP(t.port, source=ATTACKER_ADDR) as c:
        c.greeting()
        c.ehlo()
        assert c.cmd(f"AUTH PLAIN {plain('alice', PASSWORD)}").code == 454


def login_as(t, user, password):
    s = smtplib.SMTP("127.0.0.1", t.port, timeout=30 * SLOW)
    try:
        s.ehlo("client.test")
        code, _ = s.docmd("AUTH", "PLAIN " + plain(user, password))
        return code
    finally:
        s.close()


@pytest.mark.parametrize("mode,why", [
    (0o666, "writable by group or others"),
    (0o620, "writable by group or others"),
    (0o604, "readable by others"),
])
def test_users_file_open_to_others_refused(auth_tern, mode, why):
    t = auth_tern(start=False)
    t.users.chmod(mode)
    p = t.ternd("-c", str(t.conf), "--check")
    err = p.stderr.decode()
    assert p.returncode == 2, (p.stdout, err)
    assert f"auth_users_file {t.users}: {why}" in err, err
    t.start(wait=False)
    assert t.proc.wait(timeout=30 * SLOW) != 0, "ternd started with an unsafe users file"
    t.expect_dead = True
    assert f"auth_users_file {t.users}: {why}" in t.log_text()
    # Group read alone is fine.
    t.users.chmod(0o640)
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 0, p.stderr


def test_users_file_owned_by_another_user_refused(auth_tern):
    t = auth_tern(start=False)
    os.chown(t.users, 65534, 65534)
    p = t.ternd("-c", str(t.conf), "--check")
    err = p.stderr.decode()
    assert p.returncode == 2, (p.stdout, err)
    assert f"auth_users_file {t.users}: owned by uid 65534" in err, err
    t.start(wait=False)
    assert t.proc.wait(timeout=30 * SLOW) != 0, "ternd started with another user's users file"
    t.expect_dead = True
    assert f"auth_users_file {t.users}: owned by uid 65534" in t.log_text()


def test_users_file_opened_to_others_while_running(auth_tern):
    t = auth_tern()
    assert login_as(t, "alice", PASSWORD) == 235
    # Someone who may not adds a user, and the file is left open to all.
    add_user(t, "mallory", "mallory's password")
    t.users.chmod(0o666)
    assert login_as(t, "mallory", "mallory's password") == 535
    ev = t.wait_event("auth_users_unreadable")
    assert "writable by group or others" in ev["reason"], ev
    assert login_as(t, "alice", PASSWORD) == 235, "the users read before are kept"
    mark = t.log_mark()
    t.send_signal(signal.SIGHUP)
    ev = t.wait_event("reload_failed", since=mark)
    assert f"auth_users_file {t.users}: writable by group or others" in ev["errors"], ev
    assert login_as(t, "mallory", "mallory's password") == 535
    assert login_as(t, "alice", PASSWORD) == 235
