"""ternd under a service manager: the sd_notify(3) protocol of Type=notify
units, spoken to a socket the test holds as systemd would."""

import os
import signal
import socket

import pytest

from conftest import let_user_through
from sysutil import WAIT, RawSMTP


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A datagram socket in NOTIFY_SOCKET, as systemd gives a Type=notify
    service; ternd inherits the variable through the test environment."""
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    # As /run/systemd/notify is: the relay (another user when the tests run
    # as root) notifies, which tern.service allows with NotifyAccess=all.
    os.chmod(path, 0o666)
    let_user_through(tmp_path)
    s.settimeout(WAIT)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.close()


def next_state(sock):
    """The next notification, as a dict of its KEY=VALUE lines."""
    try:
        data = sock.recv(4096)
    except socket.timeout:
        raise AssertionError(f"no sd_notify message within {WAIT}s")
    return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)


def test_ready_reloading_stopping(make_tern, notify_socket):
    t = make_tern(start=False)
    t.start(wait=False)
    st = next_state(notify_socket)
    assert st.get("READY") == "1", st
    # Ready means listening: a client is answered at once.
    with RawSMTP(t.port) as c:
        assert c.reply().code == 220
        c.send(b"QUIT\r\n")
        c.wait_closed()

    t.send_signal(signal.SIGHUP)
    st = next_state(notify_socket)
    assert st.get("RELOADING") == "1", st
    assert int(st["MONOTONIC_USEC"]) > 0, st
    assert next_state(notify_socket).get("READY") == "1"
    t.wait_event("reloaded")

    # A reload that fails still ends in READY=1: the old configuration runs.
    t.write_config("max_sessions = lots\n")
    t.send_signal(signal.SIGHUP)
    assert next_state(notify_socket).get("RELOADING") == "1"
    assert next_state(notify_socket).get("READY") == "1"
    t.wait_event("reload_failed")

    rc, _ = t.stop(signal.SIGTERM)
    assert rc == 0
    assert next_state(notify_socket).get("STOPPING") == "1"

