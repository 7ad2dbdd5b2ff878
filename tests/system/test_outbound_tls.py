"""Outbound TLS and smarthost AUTH against real peers: aiosmtpd
sinks with STARTTLS (tls_context), implicit TLS (ssl_context) and an
authenticator; certificates (a test CA, leaves, self-signed) made with
`openssl` in each test's directory."""

import signal
import ssl
import subprocess

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from sysutil import SLOW, WAIT, Sink, holds_for, message, uid, wait_for

USER, PASSWORD = "relayuser", "s3cret:with colon"


# --------------------------------------------------------------------------
# certificates



def relay_tls(ev):
    """The relay and TLS keys of a delivery log line, as "host[addr]:port tls=..."."""
    return f'{ev["relay"]} tls={ev.get("tls", "")}'

def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_ca(d):
    cert, key = d / "ca.crt", d / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=tern test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_leaf(d, name, sans, ca):
    """A certificate for sans ("DNS:localhost,IP:127.0.0.1") signed by ca,
    or self-signed when ca is None."""
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    if ca is None:
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                 "-addext", f"subjectAltName={sans}")
    else:
        csr, ext = d / f"{name}.csr", d / f"{name}.ext"
        ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                 "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    key.chmod(0o600)
    return cert, key


def server_ctx(cert, key, max_version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = max_version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


# --------------------------------------------------------------------------
# fixtures


class Authenticator:
    """aiosmtpd authenticator: one user; records every attempt."""

    def __init__(self, user=USER, password=PASSWORD):
        self.user, self.password = user.encode(), password.encode()
        self.attempts = []  # (mechanism, login)

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        self.attempts.append((mechanism, auth_data.login.decode(errors="replace")))
        ok = auth_data.login == self.user and auth_data.password == self.password
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture
def certs(tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    ca = make_ca(d)

    class C:
        pass

    c = C()
    c.dir = d
    c.ca = ca
    c.good = make_leaf(d, "good", "DNS:localhost,IP:127.0.0.1", ca)
    c.wrong = make_leaf(d, "wrong", "DNS:other.test", ca)
    c.selfsigned = make_leaf(d, "self", "DNS:localhost,IP:127.0.0.1", None)
    return c


@pytest.fixture
def tls_sink():
    made = []

    def make(**kw):
        s = Sink(**kw)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def auth_file(tmp_path, text):
    p = tmp_path / f"auth-{uid()}"
    p.write_text(text)
    p.chmod(0o600)
    return p


def send_one(tern, tag):
    sender, rcpt = f"s-{tag}@example.com", f"r-{tag}@example.org"
    tern.send(sender, [rcpt], message(f"tls {tag}", "body\r\n", sender=sender, to=rcpt))
    return tern.qid_of(sender), rcpt


def delivered(tern, qid):
    return tern.wait_event("delivered", qid=qid)


def deferred(tern, qid):
    return tern.wait_event("deferred", qid=qid)


def no_dsn_and_queued(tern, sink, qid, sender_hint="s-"):
    """Deferred, never bounced: no DSN, the message stays in the queue."""
    assert not tern.events("bounced", qid=qid)
    assert not [m for m in sink.snapshot() if m.mail_from == ""], "a DSN was sent"
    p = tern.ctl("queue", "list")
    assert p.returncode == 0 and qid in p.stdout.decode(), p.stdout


# --------------------------------------------------------------------------
# STARTTLS policy


def test_opportunistic_without_starttls_delivers_in_clear(make_tern, sink):
    t = make_tern(smarthost_tls="opportunistic")
    qid, rcpt = send_one(t, uid())
    ev = delivered(t, qid)
    assert relay_tls(ev).endswith(" tls=none"), ev["_raw"]
    (tx,) = sink.wait_to(rcpt)
    assert tx.tls is None


def test_opportunistic_uses_starttls(make_tern, tls_sink, certs):
    s = tls_sink(tls_context=server_ctx(*certs.selfsigned))
    t = make_tern(smarthost=f"127.0.0.1:{s.port}", smarthost_tls="opportunistic")
    qid, rcpt = send_one(t, uid())
    ev = delivered(t, qid)
    assert " tls=TLSv1.3/" in relay_tls(ev) and relay_tls(ev).endswith("/unverified"), ev["_raw"]
    (tx,) = s.wait_to(rcpt)
    assert tx.tls == "TLSv1.3", tx
    hs = t.wait_event("tls", dest="smarthost")
    assert hs["mode"] == "starttls" and hs["verified"] == "no" and hs["cipher"], hs["_raw"]


def test_opportunistic_handshake_failure_falls_back_to_clear(make_tern, tls_sink, certs):
    # The server offers STARTTLS but speaks at most TLS 1.1; tern's floor is 1.2.
    s = tls_sink(tls_context=server_ctx(*certs.selfsigned, max_version=ssl.TLSVersion.TLSv1_1))
    t = make_tern(smarthost=f"127.0.0.1:{s.port}", smarthost_tls="opportunistic")
    qid, rcpt = send_one(t, uid())
    ev = delivered(t, qid)
    assert relay_tls(ev).endswith(" tls=none"), ev["_raw"]
    (tx,) = s.wait_to(rcpt)
    assert tx.tls is None
    fb = t.wait_event("tls_failed", fallback="plaintext")
    assert fb["addr"] == f"127.0.0.1:{s.port}", fb["_raw"]
    # Remembered: the next message goes in clear without trying again.
    mark = t.log_mark()
    qid2, rcpt2 = send_one(t, uid())
    delivered(t, qid2)
    assert not t.events("tls_failed", since=mark), t.log_tail()


def test_required_self_signed_defers(make_tern, tls_sink, certs):
    s = tls_sink(tls_context=server_ctx(*certs.selfsigned))
    t = make_tern(smarthost=f"127.0.0.1:{s.port}", smarthost_tls="required")
    qid, rcpt = send_one(t, uid())
    ev = deferred(t, qid)
    assert "TLS required but" in ev["reason"] and "did not verify" in ev["reason"], ev["_raw"]
    assert ev["reason"].startswith("451 4.7.5 "), ev["_raw"]
    assert s.to(rcpt) == []
    no_dsn_and_queued(t, s, qid)


def test_required_without_starttls_defers(make_tern, sink):
    t = make_tern(smarthost_tls="required")
    qid, rcpt = send_one(t, uid())
    ev = deferred(t, qid)
    assert "TLS required but" in ev["reason"] and "does not offer STARTTLS" in ev["reason"], ev
    assert sink.to(rcpt) == []
    no_dsn_and_queued(t, sink, qid)


@pytest.mark.parametrize("host", ["localhost", "[127.0.0.1]"])
def test_required_with_ca_file_verifies(make_tern, tls_sink, certs, host):
    s = tls_sink(tls_context=server_ctx(*certs.good))
    hop = f"{host}:{s.port}" if host == "localhost" else f"127.0.0.1:{s.port}"
    t = make_tern(smarthost=hop, smarthost_tls="required", tls_ca_file=certs.ca[0])
    qid, rcpt = send_one(t, uid())
    ev = delivered(t, qid)
    assert relay_tls(ev).endswith("/verified") and " tls=TLSv1." in relay_tls(ev), ev["_raw"]
    (tx,) = s.wait_to(rcpt)
    assert tx.tls == "TLSv1.3"
    assert t.wait_event("tls", dest="smarthost")["verified"] == "yes"


def test_required_hostname_mismatch_defers(make_tern, tls_sink, certs):
    s = tls_sink(tls_context=server_ctx(*certs.wrong))
    t = make_tern(smarthost=f"localhost:{s.port}", smarthost_tls="required",
                  tls_ca_file=certs.ca[0])
    qid, rcpt = send_one(t, uid())
    ev = deferred(t, qid)
    assert "TLS required but" in ev["reason"] and "hostname mismatch" in ev["reason"], ev["_raw"]
    assert s.to(rcpt) == []
    no_dsn_and_queued(t, s, qid)


def test_route_smtps_prefix_implicit_tls(make_tern, tls_sink, certs):
    s = tls_sink(ssl_context=server_ctx(*certs.good))
    t = make_tern(routes=f"example.org=smtps://[127.0.0.1]:{s.port}", smarthost_tls="required",
                  tls_ca_file=certs.ca[0])
    qid, rcpt = send_one(t, uid())
    ev = delivered(t, qid)
    assert relay_tls(ev).endswith("/verified"), ev["_raw"]
    assert s.wait_to(rcpt)[0].tls == "TLSv1.3"
    assert t.wait_event("tls", dest="route:example.org")["mode"] == "implicit"


# --------------------------------------------------------------------------
# AUTH at the smarthost


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_auth_over_starttls(make_tern, tls_sink, certs, tmp_path, mech):
    a = Authenticator()
    excl = ["PLAIN"] if mech == "LOGIN" else []
    s = tls_sink(tls_context=server_ctx(*certs.selfsigned), authenticator=a, auth_required=True,
                 auth_exclude_mechanism=excl)
    f = auth_file(tmp_path, f"# smarthost login\n{USER}:{PASSWORD}\n")
    t = make_tern(smarthost=f"127.0.0.1:{s.port}", smarthost_tls="opportunistic",
                  smarthost_auth_file=f)
    qid, rcpt = send_one(t, uid())
    delivered(t, qid)
    (tx,) = s.wait_to(rcpt)
    assert tx.login == USER and tx.tls == "TLSv1.3", tx
    assert a.attempts == [(mech, USER)]
    ev = t.wait_event("auth", dest="smarthost")
    assert ev["mech"] == mech and ev["tls"] == "yes", ev["_raw"]
    assert PASSWORD not in t.log_text() and "s3cret" not in t.log_text()


def test_auth_over_implicit_tls(make_tern, tls_sink, certs, tmp_path):
    a = Authenticator()
    # aiosmtpd 1.4 only counts STARTTLS as TLS for auth_require_tls.
    s = tls_sink(ssl_context=server_ctx(*certs.good), authenticator=a, auth_required=True,
                 auth_require_tls=False)
    f = auth_file(tmp_path, f"127.0.0.1 {USER}:{PASSWORD}\n")
    t = make_tern(smarthost=f"smtps://127.0.0.1:{s.port}", smarthost_tls="required",
                  tls_ca_file=certs.ca[0], smarthost_auth_file=f)
    qid, rcpt = send_one(t, uid())
    ev = delivered(t, qid)
    assert relay_tls(ev).endswith("/verified"), ev["_raw"]
    (tx,) = s.wait_to(rcpt)
    assert tx.login == USER and tx.tls == "TLSv1.3"
    assert t.wait_event("tls", dest="smarthost")["mode"] == "implicit"
    assert a.attempts == [("PLAIN", USER)]


def test_auth_wrong_password_defers_not_bounces(make_tern, tls_sink, certs, tmp_path):
    a = Authenticator()
    s = tls_sink(tls_context=server_ctx(*certs.selfsigned), authenticator=a, auth_required=True)
    f = auth_file(tmp_path, f"{USER}:wrong-password\n")
    t = make_tern(smarthost=f"127.0.0.1:{s.port}", smarthost_tls="opportunistic",
                  smarthost_auth_file=f)
    qid, rcpt = send_one(t, uid())
    ev = deferred(t, qid)
    assert "authentication at 127.0.0.1" in ev["reason"] and "535" in ev["reason"], ev["_raw"]
    assert t.wait_event("auth_failed")["level"] == "warn"
    assert s.to(rcpt) == []
    no_dsn_and_queued(t, s, qid)
    assert "wrong-password" not in t.log_text()
    # Fixing the file is enough: it is read at each connection.
    f.write_text(f"{USER}:{PASSWORD}\n")
    assert t.ctl("queue", "flush").returncode == 0
    delivered(t, qid)
    assert s.wait_to(rcpt)[0].login == USER


def test_auth_never_in_plaintext_by_default(make_tern, tls_sink, tmp_path):
    a = Authenticator()
    # AUTH offered in clear, no STARTTLS at all.
    s = tls_sink(authenticator=a, auth_required=True, auth_require_tls=False)
    f = auth_file(tmp_path, f"{USER}:{PASSWORD}\n")
    t = make_tern(smarthost=f"127.0.0.1:{s.port}", smarthost_tls="opportunistic",
                  smarthost_auth_file=f)
    qid, rcpt = send_one(t, uid())
    ev = deferred(t, qid)
    assert "not sending credentials" in ev["reason"], ev["_raw"]
    assert a.attempts == [], "AUTH was attempted in plaintext"
    no_dsn_and_queued(t, s, qid)
    # Explicitly allowed: it goes.
    t.update(smarthost_auth_plaintext="yes")
    mark = t.log_mark()
    t.send_signal(signal.SIGHUP)
    t.wait_event("reloaded", since=mark)
    assert t.ctl("queue", "flush").returncode == 0
    delivered(t, qid)
    assert s.wait_to(rcpt)[0].login == USER
    assert a.attempts == [("PLAIN", USER)]


# --------------------------------------------------------------------------
# MX hosts (mx_tls): a dnsmasq server and sinks on 127.0.0.3 at one port


@pytest.fixture
def mxw(dnsmasq, make_sink, make_tern):
    from test_mx import MX

    return MX(dnsmasq, make_sink, make_tern)


def mx_sink(mxw, addr, **server_kw):
    """A sink at addr on the MX port with aiosmtpd options (conftest make_sink)."""
    return mxw._make_sink(addr, mxw.port, None, **server_kw)


def test_mx_required_verifies_mx_host_name(mxw, certs):
    leaf = make_leaf(certs.dir, "mx", "DNS:mx.tls.test", certs.ca)
    mxw.dns.mx_host("tls.test", "mx.tls.test", "127.0.0.3")
    mxw.dns.start()
    s = mx_sink(mxw, "127.0.0.3", tls_context=server_ctx(*leaf))
    t = mxw.tern(mx_tls="required", tls_ca_file=certs.ca[0])
    sender, rcpt = f"s-{uid()}@src.test", f"r-{uid()}@tls.test"
    t.send(sender, [rcpt], message("mx tls", "body\r\n", sender=sender, to=rcpt))
    ev = delivered(t, t.qid_of(sender))
    assert ev["relay"].startswith("mx.tls.test[127.0.0.3]") and relay_tls(ev).endswith("/verified")
    assert s.wait_to(rcpt)[0].tls == "TLSv1.3"


def test_mx_required_without_starttls_defers(mxw):
    mxw.dns.mx_host("clear.test", "mx.clear.test", "127.0.0.3")
    mxw.dns.start()
    s = mxw.sink("127.0.0.3")
    t = mxw.tern(mx_tls="required")
    sender, rcpt = f"s-{uid()}@src.test", f"r-{uid()}@clear.test"
    t.send(sender, [rcpt], message("mx clear", "body\r\n", sender=sender, to=rcpt))
    ev = deferred(t, t.qid_of(sender))
    assert "TLS required but" in ev["reason"] and "STARTTLS" in ev["reason"], ev["_raw"]
    assert s.to(rcpt) == []


def test_mx_opportunistic_default_and_no_auth_to_mx(mxw, certs, tmp_path):
    a = Authenticator()
    mxw.dns.mx_host("opp.test", "mx.opp.test", "127.0.0.3")
    mxw.dns.start()
    s = mx_sink(mxw, "127.0.0.3", tls_context=server_ctx(*certs.selfsigned), authenticator=a)
    # Smarthost credentials are never offered to an MX host.
    t = mxw.tern(smarthost_auth_file=auth_file(tmp_path, f"{USER}:{PASSWORD}\n"))
    sender, rcpt = f"s-{uid()}@src.test", f"r-{uid()}@opp.test"
    t.send(sender, [rcpt], message("mx opp", "body\r\n", sender=sender, to=rcpt))
    ev = delivered(t, t.qid_of(sender))
    assert relay_tls(ev).endswith("/unverified") and " tls=TLSv1.3/" in relay_tls(ev), ev["_raw"]
    (tx,) = s.wait_to(rcpt)
    assert tx.tls == "TLSv1.3" and tx.login is None
    assert a.attempts == []


# --------------------------------------------------------------------------
# Closing TLS sessions (close_notify, alerts)


class ClosePeer:
    """A one-connection SMTP server on raw sockets (thread) that speaks TLS
    through Python's ssl directly, so the end of the session can be seen:
    after "221" it reads on, and gets a clean end of the TLS stream only
    when tern sent close_notify (unexpected EOFs are not ignored here, so a
    bare close raises ssl.SSLError "unexpected eof"). mode: "starttls" or
    "implicit"; with bad_hello the ServerHello it sends is malformed, and
    what tern sends back (an alert record, or nothing) is kept in .after.
    Later connections are refused with 421 in clear."""

    def __init__(self, ctx, mode, bad_hello=False):
        import socket
        import threading
        ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
        self.ctx, self.mode, self.bad_hello = ctx, mode, bad_hello
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.result = None  # "close_notify", or the exception text
        self.after = None
        self.delivered = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def close(self):
        self.sock.close()

    @staticmethod
    def _line(f):
        ln = f.readline(4096)
        if not ln:
            raise EOFError("client closed")
        return ln.rstrip(b"\r\n")

    def _run(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.settimeout(10 * SLOW)
        try:
            self._session(conn)
        except Exception as e:  # recorded for the test to report
            if self.result is None:
                self.result = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        while True:  # tern falls back or retries: turn it away
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.sendall(b"421 4.3.0 closed for this test\r\n")
            c.close()

    def _session(self, conn):
        if self.mode == "implicit":
            conn = self._wrap(conn)
        conn.sendall(b"220 close.test ESMTP\r\n")
        f = conn.makefile("rb")
        while True:
            ln = self._line(f)
            verb = ln[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                ext = b"250-STARTTLS\r\n" if self.mode == "starttls" and not isinstance(
                    conn, ssl.SSLSocket) else b""
                conn.sendall(b"250-close.test\r\n" + ext + b"250 PIPELINING\r\n")
            elif verb == b"STAR":
                conn.sendall(b"220 2.0.0 go ahead\r\n")
                if self.bad_hello:
                    self._bad_handshake(conn)
                    return
                conn = self._wrap(conn)
                f = conn.makefile("rb")
            elif verb in (b"MAIL", b"RCPT"):
                conn.sendall(b"250 2.0.0 ok\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go on\r\n")
                while self._line(f) != b".":
                    pass
                self.delivered = True
                conn.sendall(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                f.close()
                rest = conn.recv(64)  # b"" at close_notify; raises at a bare EOF
                self.result = "close_notify" if rest == b"" else f"more data {rest!r}"
                return
            else:
                conn.sendall(b"502 5.5.2 what\r\n")

    def _wrap(self, conn):
        return self.ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)

    def _recv_exact(self, conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError("client closed")
            data += chunk
        return data

    def _bad_handshake(self, conn):
        """Read the ClientHello, answer a ServerHello without a body (a
        decode error for the client), then keep what the client sends."""
        hdr = self._recv_exact(conn, 5)
        assert hdr[0] == 22, hdr  # a handshake record
        self._recv_exact(conn, int.from_bytes(hdr[3:5], "big"))
        conn.sendall(bytes([22, 3, 3, 0, 4, 2, 0, 0, 0]))
        data = b""
        while True:
            try:
                chunk = conn.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        self.after = data
        self.result = "done"


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_close_notify_after_quit(make_tern, certs, mode):
    """After QUIT tern ends its TLS session with close_notify (RFC 8446
    §6.1) and flushes it before closing the socket: the peer sees a clean
    end of the TLS stream, not a truncation."""
    peer = ClosePeer(server_ctx(*certs.selfsigned), mode)
    try:
        hop = (f"smtps://[127.0.0.1]:{peer.port}" if mode == "implicit"
               else f"127.0.0.1:{peer.port}")
        t = make_tern(smarthost=hop, smarthost_tls="opportunistic")
        qid, _ = send_one(t, uid())
        delivered(t, qid)
        wait_for(lambda: peer.result is not None, desc="the end of the TLS session")
        assert peer.result == "close_notify", peer.result
        assert peer.delivered
    finally:
        peer.close()


def test_failed_handshake_alert_reaches_peer(make_tern, certs):
    """A handshake that tern's side fails (a malformed ServerHello) ends
    with OpenSSL's alert record on the wire before the socket closes."""
    peer = ClosePeer(server_ctx(*certs.selfsigned), "starttls", bad_hello=True)
    try:
        t = make_tern(smarthost=f"127.0.0.1:{peer.port}", smarthost_tls="opportunistic")
        send_one(t, uid())
        t.wait_event("tls_failed")
        wait_for(lambda: peer.result is not None, desc="the end of the handshake")
        assert peer.result == "done", peer.result
        # TLS record: content type 21 (alert), version, length 2, level 2 (fatal)
        assert peer.after[:1] == b"\x15" and peer.after[5:6] == b"\x02", peer.after
    finally:
        peer.close()
