"""Milter filters (`milters`): a filter written with Debian's python3-milter
(tests/system/milter_filter.py, libmilter underneath) on an inet: port and
on a unix: socket, whose every action reaches the client or the sink; the
default action when a filter is down or stalls; real rspamd in milter mode
rejecting GTUBE."""
import json
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sysutil import WAIT, free_port, reject_count, uid, wait_for

HERE = Path(__file__).parent
PYTHON = "/usr/bin/python3"


class Filter:
    """The test filter in a subprocess; seen() is what it logged."""

    def __init__(self, spec, log, proc, sock_path=None):
        self.spec, self.log, self.proc, self.sock_path = spec, log, proc, sock_path

    def seen(self):
        if not self.log.exists():
            return []
        return [json.loads(ln) for ln in self.log.read_text().splitlines() if ln.strip()]

    def eom(self, subject):
        return wait_for(lambda: [e for e in self.seen() if e["step"] == "eom"
                                 and e["subject"] == subject],
                        desc=f"the filter's eom for {subject}")[0]


def _ready_inet(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _ready_unix(path):
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture
def start_filter(tmp_path):
    started = []

    def start(kind="inet"):
        log = tmp_path / f"filter{len(started)}.jsonl"
        sock_path = None
        if kind == "inet":
            port = free_port()
            listen, spec = f"inet:{port}@127.0.0.1", f"inet:127.0.0.1:{port}"
        else:
            # sun_path is 108 bytes: a short directory the relay's user
            # can search.
            d = tempfile.mkdtemp(prefix="milt", dir="/tmp")
            os.chmod(d, 0o711)
            sock_path = f"{d}/f.sock"
            listen, spec = f"unix:{sock_path}", f"unix:{sock_path}"
        proc = subprocess.Popen([PYTHON, str(HERE / "milter_filter.py"), listen, str(log)],
                                stdout=subprocess.DEVNULL, stderr=open(f"{log}.err", "w"))
        f = Filter(spec, log, proc, sock_path)
        started.append(f)
        wait_for(lambda: proc.poll() is not None or (_ready_inet(port) if kind == "inet"
                                                     else _ready_unix(sock_path)),
                 desc="the milter filter listening")
        assert proc.poll() is None, Path(f"{log}.err").read_text()
        return f

    yield start
    for f in started:
        f.proc.kill()
        f.proc.wait()
        if f.sock_path:
            shutil.rmtree(os.path.dirname(f.sock_path), ignore_errors=True)


def message(subject, body="Hello.\r\n", extra=""):
    return (f"From: a@example.com\r\nTo: b@example.com\r\nSubject: {subject}\r\n"
            f"X-Change: old\r\nX-Delete: bye\r\n{extra}\r\n{body}")


def send(t, subject, rcpts=("b@example.com",), sender="a@example.com", body="Hello.\r\n"):
    """(code, text) of the first reply that is not 2xx/3xx, else of the
    reply to the data."""
    with t.smtp() as s:
        s.ehlo("client.test")
        code, msg = s.mail(sender)
        if code >= 400:
            return code, msg.decode()
        for r in rcpts:
            code, msg = s.rcpt(r)
            if code >= 400:
                return code, msg.decode()
        try:
            code, msg = s.data(message(subject, body))
        except smtplib.SMTPDataError as e:
            code, msg = e.smtp_code, e.smtp_error
        return code, msg.decode()


def head_of(m):
    return m.data.split(b"\r\n\r\n", 1)[0].decode()


def body_of(m):
    return m.data.split(b"\r\n\r\n", 1)[1].decode()


@pytest.mark.parametrize("kind", ["inet", "unix"])
def test_filter_sees_the_session_and_edits_headers(make_tern, sink, start_filter, kind):
    f = start_filter(kind)
    t = make_tern(milters=f.spec)
    subj = f"addheader insheader chgheader delheader {uid()}"
    code, text = send(t, subj)
    assert code == 250, text
    m = sink.wait_to("b@example.com")[0]
    head = head_of(m)
    assert "X-Milter-Added: yes" in head, head
    assert "X-Change: changed" in head and "X-Change: old" not in head, head
    assert "X-Delete" not in head, head
    lines = [ln for ln in head.split("\r\n") if not ln.startswith(("\t", " "))]
    # tern's Received first, then the field the filter put at index 0.
    assert lines[0].startswith("Received: from client.test"), head
    assert lines[1] == "X-Milter-Top: first", head
    assert lines[-1] == "X-Milter-Added: yes", head
    assert body_of(m) == "Hello.\r\n"
    # What the filter was shown: the client, the envelope, the macros.
    seen = f.seen()
    conn = [e for e in seen if e["step"] == "connect"][0]
    assert conn["client_addr"] == "127.0.0.1" and conn["j"] == "tern.test", conn
    assert conn["daemon"] == "tern", conn
    # The client's confirmed name, else its address in brackets.
    assert conn["addr"] == "127.0.0.1" and conn["hostname"] in ("[127.0.0.1]", "localhost"), conn
    assert conn["port"] > 0 and str(conn["port"]) == conn["client_port"], conn
    assert [e["name"] for e in seen if e["step"] == "helo"] == ["client.test"]
    mail = [e for e in seen if e["step"] == "mail"][0]
    assert mail["addr"] == "<a@example.com>" and mail["mail_addr"] == "a@example.com", mail
    rcpt = [e for e in seen if e["step"] == "rcpt"][0]
    assert rcpt["rcpt_addr"] == "b@example.com", rcpt
    eom = f.eom(subj)
    assert ["Subject", subj] in eom["headers"] and eom["body"] == "Hello.\r\n", eom
    rec = t.wait_event("received", **{"from": "a@example.com"})
    rw = t.wait_event("milter_rewritten")
    assert rw["qid"] == rec["qid"] and rw["was"] == eom["qid"], (rw, rec, eom)


def test_mail_and_rcpt_answered_by_the_filter(make_tern, sink, start_filter):
    """MAIL and each RCPT are answered once the filter has: a refused
    sender refuses the transaction, a refused recipient only itself."""
    f = start_filter()
    t = make_tern(milters=f.spec)
    with t.smtp() as s:
        s.ehlo("client.test")
        code, msg = s.mail("mailreject@example.com")
        assert (code, msg.decode()) == (553, "5.7.1 Sender refused by the test filter")
        code, msg = s.mail("mailtempfail@example.com")
        assert code == 451 and msg.decode().startswith("4.7.1"), (code, msg)
        assert s.rcpt("b@example.com")[0] == 503  # no transaction
        assert s.mail("a@example.com")[0] == 250
        code, msg = s.rcpt("refuse@example.com")
        assert code == 550 and msg.decode().startswith("5.7.1"), (code, msg)
        assert s.rcpt("b@example.com")[0] == 250
        subj = f"plain {uid()}"
        assert s.data(message(subj))[0] == 250
    m = sink.wait_to("b@example.com")[0]
    assert m.rcpt_tos == ["b@example.com"]
    assert f.eom(subj)["rcpts"] == ["<refuse@example.com>", "<b@example.com>"]
    ev = t.wait_event("refused", to="refuse@example.com")
    assert "milter" in ev["reason"], ev


def test_auth_macros(make_tern, sink, start_filter, tmp_path):
    from test_tls_auth import add_user

    f = start_filter()
    t = make_tern(start=False, milters=f.spec, auth_users_file=tmp_path / "users",
                  auth_allow_plaintext_loopback="yes", auth_failure_delay="0s")
    add_user(t, "alice", "secret pass")
    t.start()
    with t.smtp() as s:
        s.ehlo("client.test")
        s.login("alice", "secret pass")
        assert s.mail("alice@example.com")[0] == 250
    mail = wait_for(lambda: [e for e in f.seen() if e["step"] == "mail"], desc="MAIL")[0]
    assert mail["auth_authen"] == "alice" and mail["auth_type"] in ("PLAIN", "LOGIN"), mail
    assert send(t, "anonymous")[0] == 250
    mails = [e for e in f.seen() if e["step"] == "mail"]
    assert mails[-1]["auth_authen"] is None and mails[-1]["auth_type"] is None, mails


def test_reject_tempfail_discard(make_tern, sink, start_filter):
    f = start_filter()
    port = free_port()
    t = make_tern(milters=f.spec, metrics_listen=f"127.0.0.1:{port}")
    code, text = send(t, f"reject {uid()}")
    assert code == 554 and text.startswith("5.7.1 Rejected by the test filter"), (code, text)
    assert reject_count(port, "milter") == 1
    code, text = send(t, f"tempfail {uid()}")
    assert code == 451 and text.startswith("4.7.1"), (code, text)
    code, text = send(t, f"discard {uid()}")
    assert code == 250, (code, text)
    t.wait_event("discarded")
    code, text = send(t, f"plain {uid()}", rcpts=["c@example.com"])
    assert code == 250
    sink.wait_to("c@example.com")
    assert not sink.to("b@example.com"), "refused or discarded messages never reach the sink"
    assert reject_count(port, "milter") == 2  # the tempfail too


def test_quarantine_holds(make_tern, sink, start_filter):
    f = start_filter()
    t = make_tern(milters=f.spec)
    code, text = send(t, f"quarantine {uid()}")
    assert code == 250, text
    rec = t.wait_event("received", **{"from": "a@example.com"})
    assert rec.get("held_by") == f"milter {f.spec}", rec
    p = t.ctl("queue", "list", "--json")
    entries = [json.loads(ln) for ln in p.stdout.splitlines() if ln.strip()]
    assert [e["held"] for e in entries if e["id"] == rec["qid"]] == [True], entries
    assert not sink.to("b@example.com")


def test_body_and_envelope_changes(make_tern, sink, start_filter):
    f = start_filter()
    t = make_tern(milters=f.spec)
    subj = f"replbody addrcpt delrcpt chgfrom {uid()}"
    code, text = send(t, subj, rcpts=["b@example.com", "gone@example.com"],
                      body="line one\r\n.dot line\r\n")
    assert code == 250, text
    eom = f.eom(subj)
    assert eom["body"] == "line one\r\n.dot line\r\n", eom  # unstuffed
    m = sink.wait_to("added@example.com")[0]
    assert sorted(m.rcpt_tos) == ["added@example.com", "b@example.com"], m.rcpt_tos
    assert m.mail_from == "new-sender@example.com", m.mail_from
    assert body_of(m) == "replaced by the filter\r\n", m.data
    rec = t.wait_event("received", **{"from": "new-sender@example.com"})
    assert rec["nrcpt"] in (2, "2"), rec
    assert not sink.to("gone@example.com")


def test_two_filters_in_order(make_tern, sink, start_filter):
    f1, f2 = start_filter(), start_filter("unix")
    t = make_tern(milters=f"{f1.spec}, {f2.spec}")
    subj = f"addheader {uid()}"
    assert send(t, subj)[0] == 250
    m = sink.wait_to("b@example.com")[0]
    assert head_of(m).count("X-Milter-Added: yes") == 2, head_of(m)
    f1.eom(subj)
    f2.eom(subj)
    # The first filter's reject stops the second from seeing it.
    subj = f"reject {uid()}"
    assert send(t, subj)[0] == 554
    f1.eom(subj)
    assert not [e for e in f2.seen() if e.get("subject") == subj]


@pytest.mark.parametrize("action,want", [("tempfail", 451), ("reject", 550), ("accept", 250)])
def test_filter_down(make_tern, sink, action, want):
    port = free_port()
    t = make_tern(milters=f"inet:127.0.0.1:{port}", milter_default_action=action)
    code, text = send(t, f"down {uid()}")
    assert code == want, (code, text)
    ev = t.wait_event("milter_failed")
    assert ev["milter"] == f"inet:127.0.0.1:{port}" and ev["action"] == action, ev
    if want == 250:
        sink.wait_to("b@example.com")


@pytest.mark.parametrize("action,want", [("tempfail", 451), ("accept", 250)])
def test_filter_stalls(make_tern, sink, start_filter, action, want):
    f = start_filter()
    t = make_tern(milters=f.spec, milter_default_action=action, milter_timeout="2s")
    t0 = time.monotonic()
    code, text = send(t, f"stall {uid()}")
    assert code == want, (code, text)
    assert time.monotonic() - t0 < 15
    ev = t.wait_event("milter_failed")
    assert "timeout" in ev["reason"], ev


def test_dkim_signs_the_edited_message(make_tern, sink, start_filter):
    from test_dkim import Keys, keygen, verify_all

    f = start_filter()
    t = make_tern(start=False, milters=f.spec)
    keys = Keys()
    keygen(t, keys, "example.com", "s1")
    t.update(dkim_sign=" ".join(keys.entries))
    t.start()
    assert send(t, f"addheader chgheader replbody {uid()}")[0] == 250
    m = sink.wait_to("b@example.com")[0]
    assert b"X-Milter-Added: yes" in m.data and body_of(m) == "replaced by the filter\r\n"
    verify_all(m.data, keys, 1)


def test_bdat(make_tern, sink, start_filter):
    f = start_filter()
    t = make_tern(milters=f.spec)
    subj = f"addheader {uid()}"
    data = message(subj, body=".leading dot\r\n").encode()
    with t.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.com>").code == 250
        assert c.cmd("RCPT TO:<b@example.com>").code == 250
        c.send(b"BDAT %d LAST\r\n" % len(data) + data)
        assert c.reply().code == 250
    assert f.eom(subj)["body"] == ".leading dot\r\n"
    m = sink.wait_to("b@example.com")[0]
    assert "X-Milter-Added: yes" in head_of(m) and body_of(m) == ".leading dot\r\n"


def test_shutdown_while_a_filter_works(make_tern, sink, start_filter):
    """SIGTERM while a filter holds the message: the client gets 421, the
    filter's late answer goes nowhere, ternd exits cleanly."""
    f = start_filter()
    t = make_tern(milters=f.spec, milter_timeout="30s")
    subj = f"stall {uid()}"
    with t.raw() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.com>").code == 250
        assert c.cmd("RCPT TO:<b@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(message(subj) + ".\r\n")
        f.eom(subj)
        t.send_signal(15)
        r = c.reply(timeout=20)
        assert r.code == 421, r
    rc, _ = t.stop(timeout=30) if t.running() else (t.proc.wait(30), 0)
    assert rc == 0, rc
    assert not sink.to("b@example.com")


def test_garbage_filter(make_tern, sink):
    """A filter that answers the negotiation with garbage: default action,
    no crash, the session goes on."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    import threading

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.recv(65536)
            c.sendall(b"\xff\xff\xff\xff" + b"x" * 64)  # a 4 GiB packet
            time.sleep(0.5)
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        t = make_tern(milters=f"inet:127.0.0.1:{port}")
        with t.smtp() as s:
            s.ehlo("client.test")
            assert s.mail("a@example.com")[0] == 451
            assert s.noop()[0] == 250
        ev = t.wait_event("milter_failed")
        assert "protocol error" in ev["reason"], ev
    finally:
        srv.close()


class RawMilter:
    """A filter speaking the protocol by hand: negotiates (no flags), then
    answers each command with what script gives for its code (None: close
    the connection), 'c' by default."""

    def __init__(self, script, optneg_extra=b"", protocol=0):
        import threading

        self.script = script
        self.optneg_extra = optneg_extra
        self.protocol = protocol  # SMFIP_* flags it negotiates
        self.packets = []  # (code, data) of every packet tern sent
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        import struct

        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            buf = b""
            try:
                while True:
                    while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                        d = c.recv(65536)
                        if not d:
                            raise EOFError
                        buf += d
                    n = struct.unpack(">I", buf[:4])[0]
                    code, data, buf = buf[4:5], buf[5:4 + n], buf[4 + n:]
                    self.packets.append((code, data))
                    if code == b"O":
                        c.sendall(struct.pack(">IcIII", 13 + len(self.optneg_extra), b"O", 6,
                                              0x1ff, self.protocol) + self.optneg_extra)
                    elif code in (b"D", b"A"):
                        continue
                    elif code == b"Q":
                        break
                    else:
                        ans = self.script.get(code, b"c")
                        if ans is None:
                            break
                        if isinstance(ans, list):  # several packets
                            c.sendall(b"".join(struct.pack(">I", len(a)) + a for a in ans))
                            continue
                        c.sendall(struct.pack(">I", len(ans.rstrip(b"!"))) + ans.rstrip(b"!"))
                        if ans.endswith(b"!"):
                            break  # answered, then gone
            except (EOFError, OSError):
                pass
            c.close()

    def close(self):
        self.srv.close()


def test_filter_wanting_only_the_message(make_tern, sink):
    """A filter that wants no step but the end of the message (NOCONNECT,
    NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH, NOUNKNOWN, NODATA: what
    pymilter negotiates for a filter with only an eom callback): at MAIL
    nothing is sent and the message, not yet there, is not looked at (the
    relay crashed doing so)."""
    m = RawMilter({}, protocol=0x37f)
    try:
        t = make_tern(milters=f"inet:127.0.0.1:{m.port}")
        for i in range(2):
            assert send(t, f"only eom {i}")[0] == 250
        sink.wait_to("b@example.com", count=2)
        codes = [c for c, _ in m.packets]
        assert not set(codes) & {b"C", b"H", b"M", b"R", b"T", b"L", b"N", b"B"}, codes
        assert codes.count(b"E") == 2, codes
    finally:
        m.close()


def test_filter_closes_between_commands(make_tern, sink):
    """A filter that goes away once it has answered MAIL, while tern waits
    for the client: the next RCPT gets the default action, logged once
    with the filter's name, and the filter is not connected again."""
    m = RawMilter({b"M": b"c!"})
    try:
        t = make_tern(milters=f"inet:127.0.0.1:{m.port}")
        with t.smtp() as s:
            s.ehlo("client.test")
            assert s.mail("a@example.com")[0] == 250
            code, msg = s.rcpt("b@example.com")
            assert code == 451, (code, msg)
            code, msg = s.rcpt("c@example.com")
            assert code == 451, (code, msg)  # the failed filter answers again
        evs = t.events("milter_failed")
        assert len(evs) == 1 and evs[0]["milter"] == f"inet:127.0.0.1:{m.port}", evs
        # (A write racing the close may see the error before the EOF.)
        assert evs[0]["reason"] in ("connection closed by the filter", "connection error"), evs
        assert m.connections == 1
    finally:
        m.close()


def test_filter_replycode_must_be_4xx_or_5xx(make_tern, sink):
    """A reply of the filter's own that is no 4xx/5xx is a protocol error."""
    m = RawMilter({b"R": b"y250 2.0.0 fine\0"})
    try:
        t = make_tern(milters=f"inet:127.0.0.1:{m.port}", milter_default_action="reject")
        with t.smtp() as s:
            s.ehlo("client.test")
            assert s.mail("a@example.com")[0] == 250
            code, msg = s.rcpt("b@example.com")
            assert (code, msg.decode()) == (550, "5.7.1 Rejected by content filter")
        ev = t.wait_event("milter_failed")
        assert ev["reason"] == "protocol error (bad reply code)", ev
    finally:
        m.close()


def test_one_connection_per_session(make_tern, sink):
    """A filter keeps its connection for the whole session: CONNECT once,
    HELO again after a new EHLO, SMFIC_ABORT for a transaction that ends
    early (RSET), QUIT at the end; each message in full."""
    m = RawMilter({})
    try:
        t = make_tern(milters=f"inet:127.0.0.1:{m.port}")
        with t.smtp() as s:
            s.ehlo("one.test")
            assert s.mail("a@example.com")[0] == 250
            assert s.rcpt("b@example.com")[0] == 250
            assert s.rset()[0] == 250
            assert s.mail("a@example.com")[0] == 250
            assert s.rcpt("b@example.com")[0] == 250
            assert s.data(message("first"))[0] == 250
            s.ehlo("two.test")
            assert s.mail("a@example.com")[0] == 250
            assert s.rcpt("c@example.com")[0] == 250
            assert s.data(message("second"))[0] == 250
        sink.wait_to("c@example.com")
        wait_for(lambda: m.packets and m.packets[-1][0] == b"Q", desc="the QUIT")
        assert m.connections == 1
        codes = b"".join(c for c, _ in m.packets if c != b"D")
        assert codes == b"OCHMRA" + b"MRTLLLLLNBE" + b"HMRTLLLLLNBE" + b"Q", codes
        helos = [d for c, d in m.packets if c == b"H"]
        assert helos == [b"one.test\0", b"two.test\0"], helos
    finally:
        m.close()


def test_macro_lists_asked_for(make_tern, sink):
    """The macros a filter asks for at negotiation for a step are the ones
    sent before it (plus i once known); other steps keep tern's set."""
    import struct

    ask = struct.pack(">I", 3) + b"{mail_addr} {client_addr} {nosuch}\0"
    m = RawMilter({}, optneg_extra=ask)
    try:
        t = make_tern(milters=f"inet:127.0.0.1:{m.port}")
        assert send(t, "macros")[0] == 250
        sink.wait_to("b@example.com")
        macros = {d[:1]: d[1:].split(b"\0")[:-1] for c, d in m.packets if c == b"D"}
        rcpt = macros[b"R"]
        assert rcpt == [b"{mail_addr}", b"a@example.com", b"{client_addr}", b"127.0.0.1"], rcpt
        assert b"{mail_addr}" in macros[b"M"] and b"{client_addr}" in macros[b"C"]
        qid = t.wait_event("received")["qid"].encode()
        assert macros[b"E"][macros[b"E"].index(b"i") + 1] == qid, macros[b"E"]
    finally:
        m.close()


def test_endless_changes(make_tern, sink):
    """A filter that sends change after change ends at the bound on changes
    per message: the default action, and the session goes on."""
    m = RawMilter({b"E": [b"-<nobody@example.com>\0"] * 6000 + [b"c"]})
    try:
        t = make_tern(milters=f"inet:127.0.0.1:{m.port}")
        code, text = send(t, "flood")
        assert code == 451, (code, text)
        ev = t.wait_event("milter_failed")
        assert ev["reason"] == "protocol error (bad modification)", ev
        assert len(t.events("milter_edit")) == 5000
    finally:
        m.close()


def test_bad_milters_setting(make_tern):
    t = make_tern(start=False, milters="inet:example.com:11332")
    p = t.ternd("--check", "-c", str(t.conf))
    assert p.returncode != 0
    assert "milters" in (p.stdout + p.stderr).decode(), p


# ---- rspamd ----

RSPAMD = shutil.which("rspamd")
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture
def rspamd(tmp_path):
    if RSPAMD is None:
        pytest.skip("rspamd not installed")
    d = tmp_path / "rspamd"
    for sub in ("db", "run", "log"):
        (d / sub).mkdir(parents=True)
    os.chmod(d, 0o777)
    for sub in ("db", "run", "log"):
        os.chmod(d / sub, 0o777)
    port = free_port()
    conf = d / "rspamd.conf"
    conf.write_text(f"""
.include "$CONFDIR/common.conf"
options {{
  pidfile = "{d}/run/rspamd.pid";
  dbdir = "{d}/db";
  filters = "";
  dns {{ nameserver = ["127.0.0.1:1"]; timeout = 1s; retransmits = 1; }}
}}
logging {{
  type = "file";
  filename = "{d}/log/rspamd.log";
  level = "info";
}}
worker "rspamd_proxy" {{
  bind_socket = "127.0.0.1:{port}";
  milter = yes;
  timeout = 60s;
  count = 1;
  upstream "local" {{ default = yes; self_scan = yes; }}
}}
lua = "$RULESDIR/rspamd.lua";
""")
    user = "_rspamd" if subprocess.run(["id", "_rspamd"], capture_output=True).returncode == 0 \
        else "nobody"
    proc = subprocess.Popen([RSPAMD, "-f", "-u", user, "-g", user, "-c", str(conf),
                             f"--var=DBDIR={d}/db", f"--var=RUNDIR={d}/run",
                             f"--var=LOGDIR={d}/log"],
                            stdout=open(d / "stdout", "w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or _ready_inet(port), timeout=60,
                 desc="rspamd's proxy listening")
        assert proc.poll() is None, (d / "stdout").read_text()[-3000:]
        yield f"inet:127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rspamd_rejects_gtube(make_tern, sink, rspamd):
    t = make_tern(milters=rspamd, milter_timeout="60s")
    code, text = send(t, "plain", body="A plain message about nothing much.\r\n")
    assert code == 250, (code, text)
    m = sink.wait_to("b@example.com")[0]
    assert body_of(m) == "A plain message about nothing much.\r\n"
    code, text = send(t, "spam", body=f"{GTUBE}\r\n", rcpts=["c@example.com"])
    assert code // 100 == 5, (code, text)
    assert not sink.to("c@example.com")
    # Both on one session: the filter's connection carries them in turn.
    with t.smtp() as s:
        s.ehlo("client.test")
        assert s.mail("a@example.com")[0] == 250
        assert s.rcpt("d@example.com")[0] == 250
        code, _ = s.data(message("spam", f"{GTUBE}\r\n"))
        assert code // 100 == 5
        assert s.mail("a@example.com")[0] == 250
        assert s.rcpt("e@example.com")[0] == 250
        assert s.data(message("plain", "Nothing much.\r\n"))[0] == 250
    sink.wait_to("e@example.com")
    assert not sink.to("d@example.com")
    assert not t.events("milter_failed")
