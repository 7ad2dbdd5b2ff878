"""The event webhook: ternd POSTs the history journal's events (the trace
objects plus sender) as JSON arrays signed with HMAC-SHA256 in
X-Tern-Signature, retries until a 2xx (the first retry within 10 s), and
loses nothing across a restart (duplicates are allowed: a batch whose 2xx
came just before a stop may go again). The receiver is the standard
library's http.server on 127.0.0.1, checking every signature itself."""

import hashlib
import hmac
import json
import os
import pwd
import signal
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import TEST_USER

from sysutil import free_port, message, uid, wait_for

SECRET = b"webhook-test-secret"
TRACE_KEYS = {"time", "id", "event", "recipient", "relay", "reply", "sender"}


class Receiver:
    """Collects signed batches; answers `statuses` in turn (then 200), and
    401 to a bad signature."""

    def __init__(self, port=None, tls_ctx=None):
        self.port = port or free_port()
        self.tls_ctx = tls_ctx
        self.secret = SECRET
        self.statuses = []
        self.events = []      # accepted (2xx) events, in order
        self.posts = []       # (monotonic time, status) of every POST
        self.bad = []         # problems seen (bad signature, header, body)
        self.lock = threading.Lock()
        self.server = None

    def start(self):
        rcv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                got = self.headers.get("X-Tern-Signature", "")
                with rcv.lock:
                    want = "sha256=" + hmac.new(rcv.secret, body, hashlib.sha256).hexdigest()
                    status = rcv.statuses.pop(0) if rcv.statuses else 200
                    if not hmac.compare_digest(want, got):
                        rcv.bad.append(f"signature {got!r}, want {want!r}")
                        status = 401
                    if self.headers.get("Content-Type") != "application/json":
                        rcv.bad.append(f"content type {self.headers.get('Content-Type')}")
                    try:
                        batch = json.loads(body)
                        assert isinstance(batch, list) and batch
                    except Exception as e:  # noqa: BLE001 - any bad body is a finding
                        rcv.bad.append(f"body {body[:200]!r}: {e}")
                        batch = []
                    rcv.posts.append((time.monotonic(), status))
                    if 200 <= status < 300:
                        rcv.events.extend(batch)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        if self.tls_ctx is not None:
            self.server.socket = self.tls_ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def of(self, qid):
        with self.lock:
            return [e for e in self.events if e["id"] == qid]


def secret_file(tmp_path):
    p = tmp_path / "webhook.secret"
    p.write_bytes(SECRET + b"\n")
    os.chmod(p, 0o600)
    return str(p)


def hook_tern(make_tern, tmp_path, url, **extra):
    return make_tern(event_webhook_url=url, event_webhook_secret_file=secret_file(tmp_path),
                     **extra)


def send_one(tern, u, rcpt=None):
    sender = f"wh-{u}@src.test"
    rcpt = rcpt or f"wh-{u}@example.org"
    tern.send(sender, [rcpt], message("webhook", sender=sender, to=rcpt))
    return sender, rcpt, tern.qid_of(sender)


def delivered_events(rcv, qid):
    evs = rcv.of(qid)
    names = {e["event"] for e in evs}
    return evs if {"received", "delivered"} <= names else None


def check_events(rcv, qid, sender, rcpt):
    evs = wait_for(lambda: delivered_events(rcv, qid), desc="received and delivered events")
    assert not rcv.bad, rcv.bad
    for e in evs:
        assert set(e) == TRACE_KEYS, e
        assert e["sender"] == sender, e
        assert isinstance(e["time"], int)
    d = [e for e in evs if e["event"] == "delivered"][0]
    assert d["recipient"] == rcpt and d["reply"].startswith("250"), d
    return evs


def test_delivered_message_signed(make_tern, tmp_path):
    rcv = Receiver()
    rcv.start()
    try:
        tern = hook_tern(make_tern, tmp_path, f"http://127.0.0.1:{rcv.port}/hook")
        sender, rcpt, qid = send_one(tern, uid())
        check_events(rcv, qid, sender, rcpt)
    finally:
        rcv.stop()


def test_500_retried_within_10s(make_tern, tmp_path):
    rcv = Receiver()
    rcv.statuses = [500]
    rcv.start()
    try:
        tern = hook_tern(make_tern, tmp_path, f"http://127.0.0.1:{rcv.port}/hook")
        sender, rcpt, qid = send_one(tern, uid())
        check_events(rcv, qid, sender, rcpt)
        with rcv.lock:
            posts = list(rcv.posts)
        assert posts[0][1] == 500 and posts[1][1] == 200, posts
        assert posts[1][0] - posts[0][0] < 10.0, posts
        tern.wait_event("failed", status=500)
    finally:
        rcv.stop()


def test_receiver_down_then_up(make_tern, tmp_path):
    port = free_port()
    tern = hook_tern(make_tern, tmp_path, f"http://127.0.0.1:{port}/hook")
    sender, rcpt, qid = send_one(tern, uid())
    tern.wait_event("delivered", qid=qid)
    tern.wait_event("failed")  # connection refused, retried later
    rcv = Receiver(port=port)
    rcv.start()
    try:
        check_events(rcv, qid, sender, rcpt)
    finally:
        rcv.stop()


def test_pending_events_survive_restart(make_tern, tmp_path):
    port = free_port()
    rcv = Receiver(port=port)
    rcv.start()
    try:
        tern = hook_tern(make_tern, tmp_path, f"http://127.0.0.1:{port}/hook")
        s1, r1, q1 = send_one(tern, uid())
        check_events(rcv, q1, s1, r1)
        # The receiver refuses everything: the next message's events wait.
        rcv.statuses = [503] * 1000
        s2, r2, q2 = send_one(tern, uid())
        tern.wait_event("delivered", qid=q2)
        wait_for(lambda: any(st == 503 for _, st in rcv.posts), desc="a refused POST")
        tern.stop()
        assert not rcv.of(q2)
        rcv.statuses = []
        t0 = time.monotonic()
        tern.start()
        check_events(rcv, q2, s2, r2)
        assert time.monotonic() - t0 < 10.0
        # Nothing of the first message was lost either (sent again at most).
        assert {e["event"] for e in rcv.of(q1)} >= {"received", "delivered"}
    finally:
        rcv.stop()


def make_ca(d):
    """A test CA and a certificate for 127.0.0.1 signed by it."""
    def run(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=tern webhook test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext")
    os.chmod(d / "ca.pem", 0o644)
    os.chmod(d, 0o755)
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


def test_https_with_test_ca(make_tern, tmp_path):
    d = tmp_path / "ca"
    d.mkdir()
    ca, cert, key = make_ca(d)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    rcv = Receiver(tls_ctx=ctx)
    rcv.start()
    try:
        tern = hook_tern(make_tern, tmp_path, f"https://127.0.0.1:{rcv.port}/hook",
                         event_webhook_ca_file=str(ca))
        sender, rcpt, qid = send_one(tern, uid())
        check_events(rcv, qid, sender, rcpt)
    finally:
        rcv.stop()


def test_https_unknown_ca_refused(make_tern, tmp_path):
    d = tmp_path / "ca"
    d.mkdir()
    _, cert, key = make_ca(d)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    rcv = Receiver(tls_ctx=ctx)
    rcv.start()
    try:
        tern = hook_tern(make_tern, tmp_path, f"https://127.0.0.1:{rcv.port}/hook")
        sender, rcpt, qid = send_one(tern, uid())
        tern.wait_event("delivered", qid=qid)
        tern.wait_event("failed")
        assert not rcv.of(qid)
    finally:
        rcv.stop()


def test_secret_file_open_to_others_refused(make_tern, tmp_path):
    secret = secret_file(tmp_path)
    os.chmod(secret, 0o644)
    t = make_tern(start=False, event_webhook_url="http://127.0.0.1:9/hook",
                  event_webhook_secret_file=secret)
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 2, p.stdout
    assert "event_webhook_secret_file" in p.stderr.decode()
    t.start(wait=False)
    assert t.proc.wait(timeout=30) != 0, "ternd started with a secret others can read"
    t.expect_dead = True
    assert f"event_webhook_secret_file \"{secret}\"" in t.log_text() or \
        f"event_webhook_secret_file {secret}" in t.log_text(), t.log_tail()


def test_secret_file_of_another_user_refused(make_tern, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    secret = secret_file(tmp_path)
    os.chown(secret, 65534, 65534)
    t = make_tern(start=False, event_webhook_url="http://127.0.0.1:9/hook",
                  event_webhook_secret_file=secret)
    t.start(wait=False)
    assert t.proc.wait(timeout=30) != 0, "ternd started with another user's secret"
    t.expect_dead = True
    assert f"event_webhook_secret_file {secret}: owned by uid 65534" in t.log_text(), t.log_tail()


def test_4xx_logged_as_error_and_retried(make_tern, tmp_path):
    rcv = Receiver()
    rcv.statuses = [400]
    rcv.start()
    try:
        tern = hook_tern(make_tern, tmp_path, f"http://127.0.0.1:{rcv.port}/hook")
        sender, rcpt, qid = send_one(tern, uid())
        rec = tern.wait_event("failed", status=400)
        assert rec["level"] == "error", rec["_raw"]
        check_events(rcv, qid, sender, rcpt)
    finally:
        rcv.stop()


def test_reload_changes_the_secret(make_tern, tmp_path):
    rcv = Receiver()
    rcv.start()
    try:
        tern = hook_tern(make_tern, tmp_path, f"http://127.0.0.1:{rcv.port}/hook")
        s1, r1, q1 = send_one(tern, uid())
        check_events(rcv, q1, s1, r1)
        new = b"another-secret"
        (tmp_path / "webhook.secret").write_bytes(new)
        mark = tern.log_mark()
        with rcv.lock:
            rcv.secret = new
        tern.send_signal(signal.SIGHUP)
        tern.wait_event("reloaded", since=mark)
        s2, r2, q2 = send_one(tern, uid())
        wait_for(lambda: delivered_events(rcv, q2), desc="events signed with the new secret")
        with rcv.lock:
            rcv.bad = []  # a batch may have gone out with the old secret before the reload
        check_events(rcv, q2, s2, r2)
    finally:
        rcv.stop()


def test_secret_file_of_the_relay_user_taken(make_tern, tmp_path):
    """As auth_users_file: root's or the relay user's own file."""
    if os.geteuid() != 0 or TEST_USER is None:
        pytest.skip("needs root and a user for the relay")
    secret = secret_file(tmp_path)
    pw = pwd.getpwnam(TEST_USER)
    os.chown(secret, pw.pw_uid, pw.pw_gid)
    t = make_tern(start=False, event_webhook_url="http://127.0.0.1:9/hook",
                  event_webhook_secret_file=secret)
    t.start()
    assert not t.events("reload_failed")
    assert t.proc.poll() is None
