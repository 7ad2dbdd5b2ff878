"""Inbound TLS (STARTTLS, smtps) and SMTP AUTH, with real peers:
Python smtplib/ssl, swaks and openssl s_client against ternd, certificates
made by `openssl req -x509` in each test's directory."""

import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import binary, tool_env
from sysutil import SLOW, WAIT, RawSMTP, ehlo_keywords, free_port, message, split_received, uid, wait_for

PASSWORD = "correct horse battery"


def make_cert(d, name, cn="tern.test"):
    """A self-signed certificate and key (mode 0600) in d; returns paths."""
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName=DNS:{cn}"],
        check=True, capture_output=True, timeout=30,
    )
    key.chmod(0o600)
    return cert, key


def add_user(tern, user, password):
    """ternctl passwd USER with the password on stdin."""
    p = tern._run([binary("ternctl"), "-c", str(tern.conf), "passwd", user],
                  input=(password + "\n").encode())
    assert p.returncode == 0, p.stderr.decode(errors="replace")


@pytest.fixture
def tls_tern(make_tern, tmp_path):
    """ternd with STARTTLS on smtp_listen and submission_listen, smtps, and
    one AUTH user alice (made with ternctl passwd before the start)."""

    def make(**settings):
        d = tmp_path / f"tls{uid()}"
        d.mkdir()
        cert, key = make_cert(d, "a")
        users = d / "users"
        sub, smtps = free_port(), free_port()
        base = dict(
            tls_cert_file=cert, tls_key_file=key, auth_users_file=users,
            submission_listen=f"127.0.0.1:{sub}", smtps_listen=f"127.0.0.1:{smtps}",
            auth_failure_delay="0s",
        )
        base.update(settings)
        t = make_tern(start=False, **base)
        add_user(t, "alice", PASSWORD)
        t.start()
        t.sub_port, t.smtps_port, t.dir = sub, smtps, d
        t.cert, t.key = cert, key
        return t

    return make


def client_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def smtp_to(port):
    s = smtplib.SMTP("127.0.0.1", port, timeout=15 * SLOW)
    s._host = "tern.test"  # the SNI name starttls() sends
    return s


def tls_smtp(port):
    s = smtp_to(port)
    s.ehlo("client.test")
    code, msg = s.starttls(context=client_ctx())
    assert code == 220, msg
    s.ehlo("client.test")
    return s


def swaks(port, *args):
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--timeout", "20", *args],
                       capture_output=True, timeout=60 * SLOW)
    return p.returncode, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def test_advertising_and_starttls_rules(tls_tern):
    t = tls_tern()
    for port in (t.port, t.sub_port):
        s = smtp_to(port)
        s.ehlo("client.test")
        assert s.has_extn("starttls"), s.esmtp_features
        assert not s.has_extn("auth"), "AUTH offered on plaintext"
        code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
        assert (code, msg[:6]) == (538, b"5.7.11"), (code, msg)
        s.starttls(context=client_ctx())
        s.ehlo("client.test")
        assert s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"].upper()
        assert "LOGIN" in s.esmtp_features["auth"].upper()
        assert not s.has_extn("starttls"), "STARTTLS offered again under TLS"
        code, msg = s.docmd("STARTTLS")
        assert (code, msg[:5]) == (503, b"5.5.1"), (code, msg)
        s.quit()
    ev = t.wait_event("tls")
    assert ev["version"].startswith("TLSv1."), ev


def test_plaintext_loopback_setting(tls_tern):
    t = tls_tern(auth_allow_plaintext_loopback="yes")
    s = smtp_to(t.port)
    s.ehlo("client.test")
    assert s.has_extn("auth"), "auth_allow_plaintext_loopback=yes: AUTH offered on 127.0.0.1"
    s.login("alice", PASSWORD)
    s.quit()


def test_submission_requires_auth(tls_tern, sink):
    t = tls_tern()
    # Plaintext, from 127.0.0.1 (inside relay_networks): still 530.
    s = smtp_to(t.sub_port)
    s.ehlo("client.test")
    code, msg = s.mail("alice@src.test")
    assert (code, msg[:5]) == (530, b"5.7.0") and b"Authentication required" in msg
    s.quit()
    s = tls_smtp(t.sub_port)
    code, msg = s.mail("alice@src.test")
    assert (code, msg[:5]) == (530, b"5.7.0"), (code, msg)
    s.login("alice", PASSWORD)
    u = uid()
    rcpt = f"sub-{u}@example.org"
    s.sendmail("alice@src.test", [rcpt], message(f"sub {u}", to=rcpt))
    s.quit()
    m = sink.wait_to(rcpt)[0]
    fields, _ = split_received(m.data)
    assert "with ESMTPSA" in fields[0], fields[0]
    assert "(using TLSv1.3 with cipher TLS_" in fields[0], fields[0]
    assert "alice" not in fields[0], "the login name is not written into the header"
    rec = t.wait_event("received", user="alice")
    assert rec["tls"] == "TLSv1.3" and rec["cipher"].startswith("TLS_"), rec


def test_wrong_password_and_exchanges(tls_tern):
    t = tls_tern(auth_failure_delay="1s")
    s = tls_smtp(t.sub_port)
    t0 = time.monotonic()
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        s.login("alice", "wrong password")
    assert e.value.smtp_code == 535 and e.value.smtp_error.startswith(b"5.7.8")
    assert time.monotonic() - t0 >= 0.9, "535 came without the failure delay"
    # An unknown user gets the same answer.
    code, msg = s.docmd("AUTH", "PLAIN AG5vYm9keQB4eHg=")  # \0nobody\0xxx
    assert (code, msg[:5]) == (535, b"5.7.8")
    # Cancel with "*" (RFC 4954 4).
    code, _ = s.docmd("AUTH", "LOGIN")
    assert code == 334
    code, msg = s.docmd("*")
    assert (code, msg[:5]) == (501, b"5.7.0"), (code, msg)
    # Undecodable response.
    code, _ = s.docmd("AUTH", "PLAIN")
    assert code == 334
    code, msg = s.docmd("!!!notbase64")
    assert (code, msg[:5]) == (501, b"5.5.2"), (code, msg)
    code, msg = s.docmd("AUTH", "CRAM-MD5")
    assert (code, msg[:5]) == (504, b"5.5.4"), (code, msg)
    s.login("alice", PASSWORD)
    code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
    assert (code, msg[:5]) == (503, b"5.5.1"), "AUTH after AUTH"
    s.quit()
    # AUTH inside a transaction.
    s = tls_smtp(t.port)
    s.mail("x@src.test")
    code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
    assert (code, msg[:5]) == (503, b"5.5.1"), (code, msg)
    s.quit()
    text = t.log_text()
    assert "wrong password" not in text and PASSWORD not in text, "a secret reached the log"
    assert len(t.events("auth_failed")) >= 2


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_auth_relays(tls_tern, sink, mech):
    t = tls_tern()
    u = uid()
    rcpt = f"swaks-{mech.lower()}-{u}@example.org"
    rc, out = swaks(t.sub_port, "--tls", "--auth", mech, "--auth-user", "alice",
                    "--auth-password", PASSWORD, "--from", "alice@src.test", "--to", rcpt)
    assert rc == 0, out
    assert "235 2.7.0" in out and "221 2.0.0" in out, out
    m = sink.wait_to(rcpt)[0]
    assert "with ESMTPSA" in split_received(m.data)[0][0]
    rc, out = swaks(t.sub_port, "--tls", "--auth", mech, "--auth-user", "alice",
                    "--auth-password", "nope", "--from", "alice@src.test", "--to", rcpt)
    assert rc != 0 and "535 5.7.8" in out, out


def test_smtps_implicit_tls(tls_tern, sink):
    t = tls_tern()
    u = uid()
    rcpt = f"smtps-{u}@example.org"
    s = smtplib.SMTP_SSL("127.0.0.1", t.smtps_port, context=client_ctx(), timeout=15 * SLOW)
    s.ehlo("client.test")
    assert not s.has_extn("starttls")
    assert s.has_extn("auth")
    code, msg = s.mail("alice@src.test")
    assert code == 530, (code, msg)
    s.login("alice", PASSWORD)
    s.sendmail("alice@src.test", [rcpt], message(f"smtps {u}", to=rcpt))
    s.quit()
    assert "with ESMTPSA" in split_received(sink.wait_to(rcpt)[0].data)[0][0]
    # Plaintext on the smtps port gets no greeting: the handshake fails.
    with RawSMTP(t.smtps_port) as c:
        c.send(b"EHLO plain.test\r\n")
        assert c.wait_closed(10 * SLOW)
        assert not c.buf.startswith(b"220"), c.buf
    t.wait_event("tls_failed")


def test_large_messages_over_tls(tls_tern, sink):
    """Over STARTTLS and smtps (input decrypted by libevent, not read by
    tern itself), a 1 MB message with dotted lines comes out byte for
    byte."""
    t = tls_tern()
    u = uid()
    body = b"".join((b"." if i % 5 == 0 else b"") + b"tls line %d %s\r\n" % (i, b"z" * (i % 70))
                    for i in range(15000))
    for name, s in (("starttls", tls_smtp(t.port)),
                    ("smtps", smtplib.SMTP_SSL("127.0.0.1", t.smtps_port, context=client_ctx(),
                                               timeout=15 * SLOW))):
        rcpt = f"{name}-{u}@example.org"
        data = message(f"{name} {u}", body, to=rcpt)
        s.ehlo("client.test")
        s.login("alice", PASSWORD)
        s.sendmail("alice@src.test", [rcpt], data)  # smtplib stuffs the dots
        s.quit()
        assert split_received(sink.wait_to(rcpt)[0].data)[1] == data, name


def test_injection_after_starttls_not_executed(tls_tern):
    t = tls_tern()
    with RawSMTP(t.port) as c:
        c.greeting()
        c.ehlo()
        c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<inject@src.test>\r\n")
        r = c.reply()
        assert r.code == 220, r
        assert c.buf == b"", f"more than the 220 before the handshake: {c.buf!r}"
        c.sock.settimeout(10 * SLOW)
        tls = client_ctx().wrap_socket(c.sock, server_hostname="tern.test")
        tls.settimeout(1.0)
        with pytest.raises((socket.timeout, TimeoutError, ssl.SSLWantReadError)):
            got = tls.recv(4096)
            pytest.fail(f"server answered injected plaintext: {got!r}")
        tls.settimeout(10 * SLOW)
        tls.sendall(b"MAIL FROM:<a@src.test>\r\n")
        got = tls.recv(4096)
        assert got.startswith(b"503 5.5.1"), f"state was not reset to CONNECTED: {got!r}"
        tls.sendall(b"EHLO client.test\r\n")
        got = b""
        while b"250 " not in got:
            got += tls.recv(4096)
        assert got.startswith(b"250-tern.test"), got
        tls.sendall(b"QUIT\r\n")
        assert tls.recv(4096).startswith(b"221")
        tls.close()
    ev = t.wait_event("starttls_pipelined")
    assert int(ev["discarded"]) == len(b"RSET\r\nMAIL FROM:<inject@src.test>\r\n"), ev
    assert not t.events("received")


def test_openssl_s_client(tls_tern):
    t = tls_tern()
    p = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{t.port}",
         "-crlf", "-ign_eof", "-quiet"],
        input=b"EHLO sclient.test\nQUIT\n", capture_output=True, timeout=30 * SLOW,
    )
    out = p.stdout.decode(errors="replace")
    assert "250-AUTH PLAIN LOGIN" in out, out + p.stderr.decode(errors="replace")
    assert "STARTTLS" not in out
    assert "221 2.0.0" in out, out


def test_bruteforce_throttled(tls_tern):
    t = tls_tern(auth_max_failures=3, auth_lockout="1h")
    s = tls_smtp(t.sub_port)
    for _ in range(2):
        code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlAHdyb25n")  # \0alice\0wrong
        assert (code, msg[:5]) == (535, b"5.7.8"), (code, msg)
    code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlAHdyb25n")
    assert (code, msg[:5]) == (421, b"4.7.0"), (code, msg)
    s.close()
    # Locked out: even the right password is refused now, on every port.
    for port in (t.sub_port, t.port):
        s = tls_smtp(port)
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("alice", PASSWORD)
        assert e.value.smtp_code == 454 and e.value.smtp_error.startswith(b"4.7.0")
        s.quit()
    t.wait_event("auth_refused")


def test_starttls_resets_authentication(tls_tern):
    t = tls_tern(auth_allow_plaintext_loopback="yes")
    s = smtp_to(t.sub_port)
    s.ehlo("client.test")
    s.login("alice", PASSWORD)
    s.starttls(context=client_ctx())
    s.ehlo("client.test")
    code, msg = s.mail("alice@src.test")
    assert code == 530, "authentication survived STARTTLS"
    s.quit()


def test_ternctl_passwd_user_logs_in_without_reload(tls_tern):
    t = tls_tern()
    time.sleep(0.05)  # a distinct mtime for the users file
    add_user(t, "bob", "bob's password")
    s = tls_smtp(t.sub_port)
    s.login("bob", "bob's password")
    s.quit()


def test_sender_login_restriction(tls_tern):
    t = tls_tern(auth_sender_login="alice=alice@src.test,@corp.test")
    s = tls_smtp(t.sub_port)
    s.login("alice", PASSWORD)
    code, msg = s.mail("mallory@src.test")
    assert (code, msg[:5]) == (553, b"5.7.1"), (code, msg)
    code, _ = s.mail("sales@corp.test")
    assert code == 250
    s.quit()


def peer_cert(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    c = RawSMTP.__new__(RawSMTP)
    c.sock, c.buf, c.eof, c.timeout = s, b"", False, 10 * SLOW
    c.greeting()
    c.ehlo()
    assert c.cmd("STARTTLS").code == 220
    tls = client_ctx().wrap_socket(s, server_hostname="tern.test")
    der = tls.getpeercert(binary_form=True)
    return tls, der


def der_of(path):
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_sighup_rotates_certificate(tls_tern):
    t = tls_tern()
    old_tls, der = peer_cert(t.port)
    assert der == der_of(t.cert)
    # Rotate in place (same paths), then SIGHUP.
    new_cert, new_key = make_cert(t.dir, "b", cn="tern.test")
    t.cert.write_bytes(new_cert.read_bytes())
    t.key.write_bytes(new_key.read_bytes())
    mark = t.log_mark()
    t.send_signal(signal.SIGHUP)
    t.wait_event("reloaded", since=mark)
    tls, der = peer_cert(t.port)
    assert der == der_of(new_cert), "new sessions see the new certificate"
    tls.close()
    # The session from before the reload carries on.
    old_tls.sendall(b"NOOP\r\n")
    assert old_tls.recv(4096).startswith(b"250")
    old_tls.close()
    # A bad key refuses the reload; the running certificate stays.
    _, other_key = make_cert(t.dir, "c")
    t.key.write_bytes(other_key.read_bytes())
    mark = t.log_mark()
    t.send_signal(signal.SIGHUP)
    ev = t.wait_event("reload_failed", since=mark)
    assert "tls_key_file" in ev["errors"], ev
    tls, der = peer_cert(t.port)
    assert der == der_of(new_cert)
    tls.close()


def test_check_loads_certificate(tls_tern):
    t = tls_tern()
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 0, p.stderr
    _, other_key = make_cert(t.dir, "d")
    t.update(tls_key_file=other_key)
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 2, p.stdout
    assert b"tls_key_file does not match tls_cert_file" in p.stderr, p.stderr
    other_key.chmod(0o644)
    t.update(tls_key_file=t.key)
    t.key.chmod(0o644)
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 2 and b"readable by others" in p.stderr, p.stderr
    t.key.chmod(0o600)
