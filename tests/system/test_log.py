"""The mail log: log_target (a file reopened on SIGUSR1 as logrotate does,
syslog's socket), RFC 3339 timestamps, and the lines an operator reads: a
connect and a disconnect line per session, the received line with its
Message-ID, a line per recipient per attempt with delays= and dsn=, and
refusals with client, helo, from and to."""

import json
import os
import re
import signal
import smtplib
import socket

from conftest import TEST_USER
from sysutil import TS_RE, message, parse_log, uid, wait_for
from test_tls_auth import PASSWORD, tls_smtp, tls_tern  # noqa: F401 (a fixture)

DELAYS = re.compile(r"^\d+\.\d{2}/\d+\.\d{2}/\d+\.\d{2}/\d+\.\d{2}$")


def file_events(path, event=None, **match):
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [r for r in parse_log(text)
            if (event is None or r.get("event") == event)
            and all(str(r.get(k)) == str(v) for k, v in match.items())]


def test_log_file_reopened_on_usr1(make_tern, sink, tmp_path):
    """log_target = a file: created 0640, every line timestamped; after a
    rename and SIGUSR1 to the parent new lines go to a new file, and no
    line is lost or written twice across the two."""
    logdir = tmp_path / "log"
    logdir.mkdir()  # root's, like /var/log: only the parent can create files here
    path = logdir / "tern.log"
    t = make_tern(log_target=path)
    assert (path.stat().st_mode & 0o777) == 0o640
    if TEST_USER:
        assert path.stat().st_uid == 0, "opened by the root parent"
    # nothing but start-up errors would go to stderr
    assert not t.events("started")
    first = wait_for(lambda: file_events(path, "started"), desc="started in the file")[0]
    assert TS_RE.match(first["ts"]), first["_raw"]

    def deliver(tag):
        sender, rcpt = f"{tag}-{uid()}@src.test", f"{tag}-{uid()}@example.org"
        t.send(sender, [rcpt], message(tag, sender=sender))
        sink.wait_to(rcpt)
        return sender, rcpt

    before = deliver("before")
    wait_for(lambda: file_events(path, "delivered", to=before[1]), desc="delivered before")
    rotated = logdir / "tern.log.1"
    os.rename(path, rotated)
    between = deliver("between")  # still written to the renamed file
    wait_for(lambda: file_events(rotated, "delivered", to=between[1]),
             desc="lines before the reopen in the rotated file")
    os.kill(t.proc.pid, signal.SIGUSR1)
    wait_for(lambda: file_events(path, "log_reopened", process="relay"),
             desc="the relay writing to the new file")
    # the parent says it before it hands the file on
    reopened = [e["process"] for e in file_events(path, "log_reopened")]
    assert reopened[0] == "parent", reopened
    assert (path.stat().st_mode & 0o777) == 0o640
    after = deliver("after")
    wait_for(lambda: file_events(path, "delivered", to=after[1]), desc="delivered after")
    assert not file_events(rotated, "delivered", to=after[1])
    # every message's lines once, in one file or the other
    for sender, rcpt in (before, between, after):
        for ev, key, val in (("received", "from", sender), ("delivered", "to", rcpt)):
            n = len(file_events(rotated, ev, **{key: val})) + len(file_events(path, ev, **{key: val}))
            assert n == 1, f"{ev} {val}: {n} lines"
    # still running, after logrotate's other habits too
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGPIPE):
        os.kill(t.proc.pid, sig)
    last = deliver("last")
    wait_for(lambda: file_events(path, "delivered", to=last[1]), desc="delivered last")
    rc, _ = t.stop()
    assert rc == 0
    assert file_events(path, "stopped")


def test_log_target_checked(make_tern, tmp_path):
    t = make_tern(start=False)
    for bad, want in (("tern.log", "must be stderr, syslog or an absolute file path"),
                      (str(tmp_path / "no" / "such" / "tern.log"), "cannot create it")):
        t.update(log_target=bad)
        p = t.ternd("-c", str(t.conf), "--check")
        assert p.returncode == 2 and want in p.stderr.decode(), p.stderr
    t.update(log_target=tmp_path / "tern.log")
    p = t.ternd("-c", str(t.conf), "--check")
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "tern.log").exists(), "--check creates nothing"


def test_syslog_target(make_tern, sink, tmp_path, monkeypatch):
    """log_target = syslog: one datagram per line to the syslog socket
    (TERN_SYSLOG_PATH here), facility mail, "ternd[PID]: " then the line
    without a timestamp of its own; the relay's lines come from its pid."""
    path = f"/tmp/ternsyslog{os.getpid()}.sock"
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.setblocking(False)
    got = []

    def drain():
        while True:
            try:
                got.append(srv.recv(65536).decode(errors="replace"))
            except BlockingIOError:
                return got

    monkeypatch.setenv("TERN_SYSLOG_PATH", path)
    try:
        t = make_tern(log_target="syslog")
        sender, rcpt = f"s-{uid()}@src.test", f"s-{uid()}@example.org"
        t.send(sender, [rcpt], message("syslog", sender=sender))
        sink.wait_to(rcpt)
        wait_for(lambda: any(" delivery delivered " in d and rcpt in d for d in drain()),
                 desc="the delivered line over syslog")
        line = re.compile(r"^<(\d+)>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ternd\[(\d+)\]: (.*)$")
        pids = set()
        for d in got:
            m = line.match(d)
            assert m, d
            assert "\n" not in d
            level = m.group(3).split(" ", 1)[0]
            assert int(m.group(1)) == 2 * 8 + {"debug": 7, "info": 6, "warn": 4,
                                                "error": 3, "crit": 2}[level], d
            pids.add(int(m.group(2)))
        received = [d for d in got if " smtp received " in d and sender in d]
        assert len(received) == 1
        relay = t.relay_pid()
        assert f"ternd[{relay}]: info qid=" in received[0]
        assert pids <= {t.proc.pid, *t.children()}
        assert not t.events("received"), "nothing on stderr"
        rc, _ = t.stop()
        assert rc == 0
    finally:
        srv.close()
        os.unlink(path)


def test_json_lines_carry_ts(make_tern, sink):
    t = make_tern(log_format="json")
    rcpt = f"j-{uid()}@example.org"
    t.send("j@src.test", [rcpt], message("json ts"))
    t.wait_event("delivered", to=rcpt)
    for ln in t.log_text().splitlines():
        if ln.startswith("{"):
            assert TS_RE.match(json.loads(ln)["ts"]), ln


def test_session_connect_and_disconnect(make_tern, sink):
    t = make_tern()
    rcpt = f"cd-{uid()}@example.org"
    s = t.smtp()
    s.ehlo("counted.test")
    s.mail("cd@src.test")
    assert s.rcpt(rcpt)[0] == 250
    assert s.docmd("RCPT TO:<not an address")[0] == 501
    assert s.docmd("FROB")[0] == 500
    assert s.docmd("NOOP " + "x" * 5000)[0] == 500  # over-long: no verb, the NOOP not counted
    assert s.data(message("counted", sender="cd@src.test"))[0] == 250
    s.quit()
    d = t.wait_event("disconnect", helo="counted.test")
    sess = d["sess"]
    c = t.events("connect", sess=sess)
    assert len(c) == 1 and c[0]["client"] == "127.0.0.1" and c[0]["listener"] == "smtp"
    assert d["client"] == "127.0.0.1"
    assert (d["ehlo"], d["mail"], d["rcpt"], d["data"], d["quit"], d["unknown"]) == (
        "1", "1", "1/2", "1", "1", "0/2"), d["_raw"]
    assert "noop" not in d
    assert d["commands"] == "5/8" and d["errors"] == "3", d["_raw"]
    assert re.match(r"^\d+\.\d{3}s$", d["duration"]), d["_raw"]
    assert "tls" not in d and "user" not in d
    # the lines of that session are between its connect and disconnect
    recs = [r for r in t.events() if r.get("sess") == sess]
    assert recs[0]["event"] == "connect" and recs[-1]["event"] == "disconnect"


def test_received_line_message_id(make_tern, sink):
    t = make_tern()
    sender = f"mid-{uid()}@src.test"
    body = message("mid", sender=sender).replace(
        b"Subject:", b"Message-ID:\r\n  <abc.123@src.test> tail=1\r\nSubject:", 1)
    t.send(sender, [f"mid-{uid()}@example.org"], body)
    rec = t.wait_event("received", **{"from": sender})
    assert rec["message_id"] == "<abc.123@src.test> tail=1", rec["_raw"]
    assert "tail" not in rec, "the Message-ID cannot make keys of its own"
    assert rec["client"] == "127.0.0.1" and int(rec["size"]) > 0


def test_delivery_lines_delays_and_dsn(make_tern, sink):
    t = make_tern()
    ok, temp, perm = (f"ok-{uid()}@example.org", f"tempfail-{uid()}@example.org",
                      f"permfail-{uid()}@example.org")
    t.send("dl@src.test", [ok, temp, perm], message("delays"))
    d = t.wait_event("delivered", to=ok)
    assert DELAYS.match(d["delays"]) and d["dsn"] == "2.0.0" and d["status"] == "sent", d["_raw"]
    assert d["relay"] == f"127.0.0.1[127.0.0.1]:{sink.port}", d["_raw"]
    # a + b + c + d is the delay since arrival (to the hundredth, rounded)
    total = sum(float(x) for x in d["delays"].split("/"))
    assert abs(total - float(d["delay"].rstrip("s"))) < 0.05, d["_raw"]
    f = t.wait_event("deferred", to=temp)
    assert DELAYS.match(f["delays"]) and f["dsn"] == "4.3.0" and f["status"] == "deferred"
    assert f["reason"].startswith("451 4.3.0"), f["_raw"]
    b = t.wait_event("bounced", to=perm)
    assert DELAYS.match(b["delays"]) and b["dsn"] == "5.1.1" and b["status"] == "bounced"


def test_refusal_carries_client_helo_from_to(make_tern, sink):
    t = make_tern(relay_networks="192.0.2.0/24")  # 127.0.0.1 is an outsider now
    s = t.smtp()
    s.ehlo("outsider.test")
    s.mail("who@src.test")
    code, _ = s.rcpt("someone@example.org")
    assert code in (550, 554)
    s.quit()
    r = t.wait_event("refused", reason="relay denied")
    assert (r["client"], r["helo"], r["from"], r["to"]) == (
        "127.0.0.1", "outsider.test", "who@src.test", "someone@example.org"), r["_raw"]
    d = t.wait_event("disconnect", helo="outsider.test")
    assert d["rcpt"] == "0/1", d["_raw"]


def test_disconnect_after_tls_and_auth(tls_tern, sink):
    """The disconnect line names the TLS version and cipher and the AUTH
    user; a refused AUTH counts as a failed command."""
    t = tls_tern()
    s = tls_smtp(t.sub_port)
    s.user, s.password = "alice", "wrong-" + PASSWORD
    try:
        s.auth("PLAIN", s.auth_plain)  # one mechanism: one failed AUTH command
    except smtplib.SMTPAuthenticationError:
        pass
    s.user, s.password = "alice", PASSWORD
    s.auth("PLAIN", s.auth_plain)
    s.quit()
    d = t.wait_event("disconnect", user="alice")
    assert d["tls"].startswith("TLSv1.") and d["cipher"], d["_raw"]
    assert d["helo"] == "client.test" and d["starttls"] == "1", d["_raw"]
    assert d["auth"] == "1/2" and d["ehlo"] == "2", d["_raw"]
    c = t.events("connect", sess=d["sess"])
    assert c and c[0]["listener"] == "submission"


def test_client_name_confirmed(make_tern, sink, dnsmasq):
    """The client's name on its lines: the PTR name when its address
    records lead back to the client; "unknown" when they do not (a
    reverse zone alone cannot name a client) or there is none."""
    dnsmasq.a("mta.client.test", "127.0.0.2")  # A and PTR
    dnsmasq.args.append("--ptr-record=3.0.0.127.in-addr.arpa,liar.client.test")
    dnsmasq.a("liar.client.test", "127.0.0.9")
    dnsmasq.start()
    t = make_tern(dns_resolvers=f"127.0.0.1:{dnsmasq.port}", relay_networks="127.0.0.0/8",
                  log_level="debug")
    for source, want in (("127.0.0.2", "mta.client.test"), ("127.0.0.3", "unknown"),
                         ("127.0.0.4", "unknown")):
        sender = f"n-{uid()}@src.test"
        s = t.smtp(source)
        s.ehlo("named.test")
        t.wait_event("client_name", client=source)
        s.sendmail(sender, [f"n-{uid()}@example.org"], message("named", sender=sender))
        s.quit()
        assert t.wait_event("client_name", client=source)["name"] == want
        assert t.wait_event("received", **{"from": sender})["client_name"] == want
        d = t.wait_event("disconnect", client=source)
        assert d["client_name"] == want, d["_raw"]
    t.update(smtpd_peername_lookup="no")
    t.send_signal(signal.SIGHUP)
    wait_for(lambda: t.events("reloaded"), desc="reloaded")
    sender = f"off-{uid()}@src.test"
    t.send(sender, [f"off-{uid()}@example.org"], message("off", sender=sender))
    assert "client_name" not in t.wait_event("received", **{"from": sender})
