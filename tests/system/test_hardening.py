"""Inbound SMTP under attack: BDAT/DATA mixing, envelope changes after BDAT,
unread pipelined replies, slow (drip-feeding) clients, descriptor
exhaustion, routing local parts, and how TLS sessions end."""

import os
import resource
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import REPO, binary, tool_env
from sysutil import SLOW, RawSMTP, free_port, holds_for, message, uid, wait_for
from test_tls_auth import make_cert


def open_fds(tern):
    return len(os.listdir(f"/proc/{tern.relay_pid()}/fd"))


def test_data_after_bdat_refused(make_tern, sink):
    """RFC 3030 §3: DATA after BDAT in one transaction is 503 5.5.1; no spool
    writer outlives its transaction, and SIGTERM still ends cleanly."""
    tern = make_tern(max_errors=100)  # each 503 counts as a protocol error
    u = uid()
    # one delivery first, so that the descriptors it keeps a while are counted
    tern.send(f"warm-{u}@src.test", [f"warm-{u}@example.org"], message(f"warm {u}"))
    sink.wait_to(f"warm-{u}@example.org")
    base = open_fds(tern)
    with tern.raw() as c:
        c.ehlo()
        for i in range(20):
            assert c.cmd(f"MAIL FROM:<bd-{u}@src.test>").code == 250
            assert c.cmd(f"RCPT TO:<bd{i}-{u}@example.org>").code == 250
            c.send(b"BDAT 7\r\nhello\r\n")
            assert c.reply().code == 250
            r = c.cmd("DATA")
            assert r.code == 503 and r.enh == "5.5.1", f"DATA after BDAT: {r}"
            assert c.cmd("RSET").code == 250
        # BDAT after a finished DATA transaction belongs to no transaction
        assert c.cmd(f"MAIL FROM:<dd-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<dd-{u}@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(message(f"data {u}") + b".\r\n")
        assert c.reply().code == 250
        c.send(b"BDAT 5 LAST\r\nhello")
        r = c.reply()
        assert r.code == 503 and r.enh == "5.5.1", f"BDAT outside a transaction: {r}"
        assert c.cmd("QUIT").code == 221
    sink.wait_to(f"dd-{u}@example.org")
    assert tern.queued() == [], "only the DATA message was queued, and it is delivered"
    wait_for(lambda: open_fds(tern) <= base, desc=f"ternd back to {base} open descriptors")
    assert not any(t.rcpt_tos[0].startswith("bd") for t in sink.snapshot())
    rc, _ = tern.stop(signal.SIGTERM)
    assert rc == 0, f"ternd exited {rc} after SIGTERM:\n{tern.log_tail()}"


def test_rcpt_after_bdat_refused(make_tern, sink):
    """The envelope is fixed once the first chunk is in: a later RCPT gets
    503 5.5.1, never a 250 for a recipient that would then be dropped."""
    tern = make_tern()
    u = uid()
    body = message(f"chunks {u}")
    with tern.raw() as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<ch-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<first-{u}@example.org>").code == 250
        c.send(f"BDAT {len(body)}\r\n".encode() + body)
        assert c.reply().code == 250
        r = c.cmd(f"RCPT TO:<late-{u}@example.org>")
        assert r.code == 503 and r.enh == "5.5.1", f"RCPT after BDAT: {r}"
        r = c.cmd("BDAT 0 LAST")
        assert r.code == 250, str(r)
    tx = sink.wait_to(f"first-{u}@example.org")[0]
    assert [a.lower() for a in tx.rcpt_tos] == [f"first-{u}@example.org"]
    assert sink.to(f"late-{u}@example.org") == []


def readme_example_config():
    """The example configuration file of README.md, as printed there."""
    text = (REPO / "README.md").read_text()
    start = text.index("# /etc/tern/tern.conf\n")
    return text[start : text.index("```", start)]


def test_relay_domains_leading_dot(make_tern, sink):
    """A relay_domains entry with a leading dot means its subdomains, as the
    README says; its own example configuration passes --check."""
    tern = make_tern(relay_domains="inbound.test .inbound.test")
    conf = tern.workdir / "readme.conf"
    conf.write_text(readme_example_config())
    assert "relay_domains" in conf.read_text() and ".example.com" in conf.read_text()
    p = tern.ternd("-c", str(conf), "-o", f"spool_dir={tern.workdir / 'rspool'}",
                   "-o", f"user={tern.settings.get('user', 'tern')}", "--check")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    u = uid()
    with tern.raw(source="127.0.0.2") as c:
        c.ehlo("outsider.test")
        assert c.cmd(f"MAIL FROM:<o-{u}@elsewhere.test>").code == 250
        for ok in (f"a-{u}@inbound.test", f"b-{u}@mx.inbound.test", f"c-{u}@a.b.inbound.test"):
            r = c.cmd(f"RCPT TO:<{ok}>")
            assert r.code == 250, f"{ok}: {r}"
        for bad in (f"d-{u}@xinbound.test", f"e-{u}@inbound.test.evil.test"):
            r = c.cmd(f"RCPT TO:<{bad}>")
            assert r.code == 554 and r.enh == "5.7.1", f"{bad}: {r}"


def test_untrusted_routing_refused(make_tern, sink):
    """A local part that routes on (%, !, a quoted @) is refused for
    outsiders even to relay_domains, as Postfix's allow_untrusted_routing =
    no does; source routes are dropped from both paths."""
    tern = make_tern()
    u = uid()
    with tern.raw(source="127.0.0.2") as c:
        c.ehlo("outsider.test")
        assert c.cmd(f"MAIL FROM:<@hop.test:o-{u}@elsewhere.test>").code == 250
        for victim in (
            f"v1-{u}%evil.test@inbound.test",
            f"evil.test!v2-{u}@inbound.test",
            f'"v3-{u}@evil.test"@inbound.test',
            f"@hop.test:v4-{u}%evil.test@inbound.test",
        ):
            r = c.cmd(f"RCPT TO:<{victim}>")
            assert r.code == 554 and r.enh == "5.7.1", f"{victim}: {r}"
            assert "Relay access denied" in r.text, str(r)
        r = c.cmd(f"RCPT TO:<@a.test,@b.test:in-{u}@inbound.test>")
        assert r.code == 250, str(r)
        assert c.cmd("DATA").code == 354
        c.send(message(f"routed {u}") + b".\r\n")
        assert c.reply().code == 250
    tx = sink.wait_to(f"in-{u}@inbound.test")[0]
    assert tx.rcpt_tos == [f"in-{u}@inbound.test"], tx.rcpt_tos
    assert tx.mail_from == f"o-{u}@elsewhere.test", tx.mail_from
    # the relay's own clients may still use such addresses
    with tern.raw(source="127.0.0.1") as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<i-{u}@src.test>").code == 250
        r = c.cmd(f"RCPT TO:<own-{u}%other.test@inbound.test>")
        assert r.code == 250, str(r)


def rss_kb(tern):
    with open(f"/proc/{tern.relay_pid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Pipeliner:
    """A client that sends n copies of a command line from a thread and
    never reads, until told to drain; counts the reply lines it reads."""

    def __init__(self, port, line, n, batch=10000):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120 * SLOW)
        self.chunk = line * batch
        self.n = n - n % batch
        self.sent = 0  # commands handed to the kernel
        self.done = False
        self.error = None
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self):
        try:
            per = self.chunk.count(b"\n")
            while self.sent < self.n:
                self.sock.sendall(self.chunk)
                self.sent += per
        except OSError as e:
            self.error = e
        self.done = True

    def stalled(self, quiet=1.0):
        """True when the sender is blocked: nothing sent for quiet seconds."""
        last = self.sent
        return holds_for(lambda: self.sent == last and not self.done, quiet)

    def read_lines(self, want):
        """Read until want reply lines (the greeting included) arrived."""
        got, tail = 0, b""
        while got < want:
            data = self.sock.recv(1 << 20)
            assert data, f"connection closed after {got} of {want} replies: {tail[-200:]!r}"
            got += data.count(b"\n")
            tail = (tail + data)[-400:]
        return tail


def test_unread_replies_bounded(make_tern, sink):
    """A client pipelining tens of MB of commands without reading its
    replies: ternd stops reading from it once its replies pile up, so its
    memory stays small; others are served meanwhile; and once the client
    reads, every command is answered and the session goes on."""
    tern = make_tern()
    base = rss_kb(tern)
    p = Pipeliner(tern.port, b"HELP\r\n", 16 * 1024 * 1024 // 6)
    try:
        wait_for(lambda: p.done or p.stalled(), 60 * SLOW, interval=0, desc="sender blocked")
        limit = 16 * 1024 * SLOW  # kB; without the bound it grows by hundreds of MB
        assert holds_for(lambda: rss_kb(tern) - base < limit, 2.0), (
            f"ternd grew from {base} kB to {rss_kb(tern)} kB for one client"
        )
        assert not p.done, f"ternd read all {p.n} commands without their replies being read"
        u = uid()
        tern.send(f"other-{u}@src.test", [f"other-{u}@example.org"], message(f"other {u}"))
        sink.wait_to(f"other-{u}@example.org")
        tail = p.read_lines(1 + p.n)
        p.thread.join(60 * SLOW)
        assert p.done and p.error is None, p.error
        assert tail.endswith(b"; see RFC 5321\r\n"), tail  # the last HELP's reply
        p.sock.sendall(b"NOOP\r\n")
        assert p.read_lines(1).startswith(b"250 "), "the session goes on"
    finally:
        p.sock.close()


def drip(sock, data, every):
    """Send data one byte every `every` seconds until it is all sent or the
    server answers; returns (what the server sent or b"", seconds taken)."""
    t0 = time.monotonic()
    for i in range(len(data)):
        try:
            sock.sendall(data[i : i + 1])
        except OSError:
            break
        ready, _, _ = select.select([sock], [], [], every)
        if ready:
            break
    sock.settimeout(5 * SLOW)
    try:
        got = sock.recv(4096)
    except (socket.timeout, OSError):
        got = b""
    return got, time.monotonic() - t0


def test_drip_feeding_cut_off(make_tern, sink):
    """A command line or message data dripped a byte at a time gets 421
    4.4.2 at its deadline: the bytes do not extend it."""
    tern = make_tern(smtp_timeout="2s", data_timeout="2s")
    line = b"EHLO " + b"d" * 60 + b"\r\n"  # 66 bytes: 13 s at 0.2 s a byte
    with RawSMTP(tern.port, source="127.0.0.2") as c:
        c.greeting()
        got, took = drip(c.sock, line, 0.2)
        assert got.startswith(b"421 4.4.2"), f"after {took:.1f}s: {got!r}"
        assert took < 8 * SLOW, took
        assert c.wait_closed(15 * SLOW)
    u = uid()
    data = message(f"drip {u}") + b".\r\n"
    with RawSMTP(tern.port, source="127.0.0.2") as c:
        c.greeting()
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<drip-{u}@src.test>").code == 250
        assert c.cmd(f"RCPT TO:<drip-{u}@inbound.test>").code == 250
        assert c.cmd("DATA").code == 354
        got, took = drip(c.sock, data, 0.2)
        assert got.startswith(b"421 4.4.2"), f"after {took:.1f}s: {got!r}"
        assert took < 8 * SLOW, took
        assert c.wait_closed(15 * SLOW)
    assert tern.wait_event("timeout", phase="data")
    assert tern.queued() == [], "the dropped message is not queued"
    assert sink.to(f"drip-{u}@inbound.test") == []


def test_reserved_sessions_for_relay_networks(make_tern, sink):
    """Outsiders (127.0.0.2.. here; relay_networks is 127.0.0.1/32) that
    drip-feed their sessions cannot take the last reserved_sessions (by
    default a tenth) of max_sessions: a relay_networks client still gets 220
    and relays."""
    tern = make_tern(max_sessions=30)
    held = []
    try:
        refused = None
        for i in range(30):
            c = RawSMTP(tern.port, source=f"127.0.0.{2 + i % 3}")
            held.append(c)
            r = c.reply()
            if r.code != 220:
                refused = (i, r)
                break
            c.send(b"E")  # the start of a command line, never finished
        assert refused is not None, "outsiders took every session"
        i, r = refused
        assert i == 27 and r.code == 421 and r.enh == "4.7.0", f"outsider #{i + 1}: {r}"
        assert tern.wait_event("refused", reason="reserved_sessions")
        u = uid()
        tern.send(f"own-{u}@src.test", [f"own-{u}@example.org"], message(f"own {u}"), source="127.0.0.1")
        sink.wait_to(f"own-{u}@example.org")
    finally:
        for c in held:
            c.close()


def test_unread_client_closed_at_deadline(make_tern):
    """A client that pipelines and never reads is closed at the command
    deadline, its unread replies dropped with it."""
    tern = make_tern(smtp_timeout="2s")
    base = open_fds(tern)
    p = Pipeliner(tern.port, b"HELP\r\n", 4 * 1024 * 1024 // 6)
    try:
        tern.wait_event("timeout", phase="command", timeout=15 * SLOW)
        wait_for(lambda: open_fds(tern) <= base, 15 * SLOW, desc="the session's socket closed")
    finally:
        p.sock.close()


def nofile(soft, hard):
    """A preexec hook: the child's RLIMIT_NOFILE."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def proc_nofile(pid):
    """(soft, hard) RLIMIT_NOFILE of a running process."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def test_fd_limit_sizing(make_tern):
    """ternd raises its soft RLIMIT_NOFILE to the hard limit at start, and
    refuses (exit 2, at start and with --check) a configuration whose
    sessions and connections cannot fit in it."""
    tern = make_tern(start=False, max_sessions=1000)
    tern.preexec = nofile(1024, 1024)
    tern.start(wait=False)
    rc = tern.proc.wait(30 * SLOW)
    tern.expect_dead = True
    assert rc == 2, f"exit {rc}:\n{tern.log_tail()}"
    log = tern.log_text()
    assert "max_sessions = 1000" in log and "RLIMIT_NOFILE" in log and "1024" in log, log
    argv = [binary("ternd"), "-c", str(tern.conf), "--check"]
    p = subprocess.run(argv, capture_output=True, env=tool_env(), preexec_fn=nofile(1024, 1024),
                       timeout=30 * SLOW)
    assert p.returncode == 2 and b"max_sessions = 1000" in p.stderr, p.stderr
    tern.update(max_sessions=300, max_connections=100)
    p = subprocess.run(argv, capture_output=True, env=tool_env(), preexec_fn=nofile(1024, 1024),
                       timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr
    # started with a low soft limit, ternd takes what the hard limit allows
    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    tern.preexec = nofile(256, hard)
    tern.start()
    assert proc_nofile(tern.relay_pid()) == (hard, hard)
    assert tern.wait_event("started", max_fds=hard)


def test_accept_paused_when_out_of_fds(make_tern):
    """Out of descriptors, the listeners pause (one log line per pause)
    instead of spinning on accept(), and accept again once some are free."""
    tern = make_tern()
    pid = tern.relay_pid()
    soft, hard = proc_nofile(pid)
    held = []
    try:
        # leave room for three more sessions only
        tern.prlimit_relay(resource.RLIMIT_NOFILE, (open_fds(tern) + 3, hard))
        for _ in range(3):
            held.append(tern.raw())
        late = RawSMTP(tern.port)  # in the listen backlog: accept() fails
        held.append(late)
        first = tern.wait_event("accept_paused")
        assert "Too many open files" in first["_raw"] or first.get("errno"), first["_raw"]
        t0 = time.monotonic()
        # it rests, tries again, rests again: one line each time
        wait_for(lambda: len(tern.events("accept_paused")) >= 2, desc="a second pause")
        held.pop(0).close()  # a descriptor comes free
        assert late.greeting().code == 220
        took = time.monotonic() - t0
        assert late.cmd("NOOP").code == 250
        # each receive loop pauses on its own (one line per 500 ms pause):
        # a spinning listener would log thousands
        per_loop = {}
        for ev in tern.events("accept_paused") + tern.events("accept_failed"):
            per_loop[ev.get("worker")] = per_loop.get(ev.get("worker"), 0) + 1
        assert per_loop and max(per_loop.values()) <= 3 + 4 * took, \
            f"accept lines per loop {per_loop} in {took:.1f}s"
    finally:
        tern.prlimit_relay(resource.RLIMIT_NOFILE, (soft, hard))
        for c in held:
            c.close()


@pytest.fixture
def tls_tern(make_tern, tmp_path):
    """ternd with STARTTLS on smtp_listen and smtps on t.smtps_port."""

    def make(**settings):
        cert, key = make_cert(tmp_path, f"c{uid()}")
        t = make_tern(start=False, tls_cert_file=cert, tls_key_file=key,
                      smtps_listen=f"127.0.0.1:{free_port()}", **settings)
        t.smtps_port = int(t.settings["smtps_listen"].rsplit(":", 1)[1])
        return t.start()

    return make


def s_client(port, *args, stdin=b""):
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "tern.test",
         "-crlf", "-ign_eof", *args],
        input=stdin, capture_output=True, timeout=30 * SLOW,
    )
    return (p.stdout + p.stderr).decode(errors="replace")


def tls_client_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def read_to_close_notify(ssock):
    """Everything the server sends until it ends TLS; SSLEOFError when the
    connection ends without close_notify."""
    data = b""
    while True:
        chunk = ssock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_tls_close_notify(tls_tern):
    """When tern ends a TLS session (QUIT, a 421 at a deadline or at
    shutdown) it sends close_notify before closing the socket (RFC 8446
    6.1), so clients see a clean end, not a truncation."""
    tern = tls_tern(smtp_timeout="2s")
    out = s_client(tern.port, "-starttls", "smtp", stdin=b"EHLO x\nQUIT\n")
    assert "221 2.0.0" in out, out
    assert "unexpected eof" not in out, out
    out = s_client(tern.smtps_port, stdin=b"EHLO x\nQUIT\n")
    assert "221 2.0.0" in out and "unexpected eof" not in out, out
    # a 421 at the command deadline, after STARTTLS
    with socket.create_connection(("127.0.0.1", tern.port), timeout=15 * SLOW) as raw:
        f = raw.makefile("rb")
        assert f.readline().startswith(b"220")
        raw.sendall(b"EHLO x\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        ssock = tls_client_ctx().wrap_socket(raw, server_hostname="tern.test",
                                             suppress_ragged_eofs=False)
        # no new greeting after STARTTLS (RFC 3207 4.2): the 421, then the end
        end = read_to_close_notify(ssock)
        assert end.startswith(b"421 4.4.2"), end
    # smtps, ended by SIGTERM with 421
    raw = socket.create_connection(("127.0.0.1", tern.smtps_port), timeout=15 * SLOW)
    ssock = tls_client_ctx().wrap_socket(raw, server_hostname="tern.test",
                                         suppress_ragged_eofs=False)
    with ssock:
        first = ssock.recv(4096)
        assert first.startswith(b"220 "), first
        tern.proc.send_signal(signal.SIGTERM)
        rest = read_to_close_notify(ssock)
        assert b"421 4.3.2" in first + rest, first + rest
    assert tern.proc.wait(30 * SLOW) == 0


def test_tls_handshake_alert(tls_tern):
    """A failed handshake ends with the alert OpenSSL made (here TLS 1.1
    against the TLS 1.2 floor: protocol_version), over STARTTLS too."""
    tern = tls_tern()
    old = ("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    out = s_client(tern.smtps_port, *old)
    assert "alert protocol version" in out, out
    out = s_client(tern.port, "-starttls", "smtp", *old)
    assert "alert protocol version" in out, out
    assert "unexpected eof" not in out, out
    tern.wait_event("tls_failed")


def http_scraped(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2 * SLOW) as r:
            return r.status == 200
    except OSError:
        return False


def test_http_endpoint_connections_bounded(make_tern, sink):
    """Idle clients of metrics_listen hold at most the endpoint's bound of
    descriptors (64): beyond it the listener waits, the SMTP side goes on,
    and once they leave /metrics answers again."""
    port = free_port()
    tern = make_tern(metrics_listen=f"127.0.0.1:{port}")
    u = uid()
    tern.send(f"warm-{u}@src.test", [f"warm-{u}@example.org"], message(f"warm {u}"))
    sink.wait_to(f"warm-{u}@example.org")
    assert http_scraped(port)
    base = open_fds(tern)
    idle = []
    try:
        for _ in range(200):  # more than the bound; the kernel's backlog holds the rest
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            idle.append(s)
        wait_for(lambda: open_fds(tern) >= base + 64, desc="the endpoint to take 64 clients")
        assert holds_for(lambda: open_fds(tern) <= base + 64, 1.0 * SLOW), \
            f"{open_fds(tern) - base} descriptors for 200 idle HTTP clients"
        tern.wait_event("connection_limit")
        # SMTP is untouched.
        tern.send(f"during-{u}@src.test", [f"during-{u}@example.org"], message(f"during {u}"))
        sink.wait_to(f"during-{u}@example.org")
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: http_scraped(port), desc="/metrics answering once the idle clients left")
    wait_for(lambda: open_fds(tern) <= base, desc=f"ternd back to {base} descriptors")


def test_http_endpoint_counts_every_way_a_connection_ends(make_tern):
    """Each way an HTTP connection can end gives its place back: 80 of each
    (more than the bound of 64), after which /metrics still answers."""
    port = free_port()
    tern = make_tern(metrics_listen=f"127.0.0.1:{port}")
    assert http_scraped(port)
    base = open_fds(tern)

    def raw(data, read=True):
        with socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW) as s:
            if data:
                s.sendall(data)
            if read:
                while s.recv(4096):
                    pass

    def keep_alive():
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5 * SLOW)
        for _ in range(3):
            c.request("GET", "/status")
            assert c.getresponse().read()
        c.close()

    ways = {
        "closed at once": lambda: raw(b"", read=False),
        "half a request, then closed": lambda: raw(b"GET /metr", read=False),
        "answered, connection close": lambda: raw(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        "HTTP/1.0": lambda: raw(b"GET /status HTTP/1.0\r\n\r\n"),
        "bad request line": lambda: raw(b"NONSENSE\r\n\r\n"),
        "method not allowed": lambda: raw(b"PUT /metrics HTTP/1.0\r\n\r\n"),
        "headers too large": lambda: raw(b"GET / HTTP/1.0\r\nX: " + b"a" * 9000 + b"\r\n\r\n"),
        "reset by the client": lambda: reset_after(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
        "keep-alive, three requests": keep_alive,
    }
    # A way that kept its place would leave the listener paused for good
    # after 64 of them (quick clients may pause it for a moment: that is fine).
    for name, way in ways.items():
        for _ in range(80):
            way()
        wait_for(lambda: http_scraped(port), desc=f"/metrics answering after 80 times '{name}'")
    wait_for(lambda: open_fds(tern) <= base, desc=f"ternd back to {base} descriptors")


def reset_after(port, data):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(data)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # linger 0: RST


def test_http_endpoint_stops_with_clients_connected(make_tern):
    """SIGTERM while HTTP clients are connected, some just accepted: the
    endpoint closes them and ternd ends cleanly (under ASan too)."""
    port = free_port()
    tern = make_tern(metrics_listen=f"127.0.0.1:{port}")
    assert http_scraped(port)
    socks = []
    for i in range(80):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # unfinished
        socks.append(s)
    try:
        rc, _ = tern.stop(signal.SIGTERM)
        assert rc == 0, f"ternd exited {rc} after SIGTERM:\n{tern.log_tail()}"
    finally:
        for s in socks:
            s.close()
