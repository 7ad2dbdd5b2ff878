"""MTA-STS (RFC 8461) and TLS reporting (RFC 8460) against real servers:
dnsmasq publishes _mta-sts, mta-sts.DOMAIN, the MX records and _smtp._tls;
a Python HTTPS server on 127.0.0.x:443 (the tests run as root: the port is
fixed by the RFC) serves the policy with a certificate from a test CA made
with `openssl`, which is also tern's tls_ca_file; aiosmtpd sinks are the MX
hosts, with or without STARTTLS and with matching or wrong certificates."""

import gzip
import http.server
import json
import os
import ssl
import threading
from email import message_from_bytes, policy

import pytest

from sysutil import SLOW, WAIT, free_port_on, holds_for, message, uid, wait_for
from test_outbound_tls import make_ca, make_leaf, server_ctx

DOM = "sts.test"
MX1 = "mx1.sts.test"
MX_ADDR = "127.0.0.3"
MX2_ADDR = "127.0.0.5"  # the same MX host moved (an attacker's)
RPT_ADDR = "127.0.0.4"  # the MX of rpt.test, where mailed reports go
DSN_ADDR = "127.0.0.2"
WEB_NAMES = ["mta-sts.sts.test", "report.test"]

POLICY = "version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="binds port 443 (root)")


class PolicyServer:
    """HTTPS on addr:443: GET paths answer from `pages` (path -> (status,
    content type, body)); POST bodies are kept in `posts`."""

    def __init__(self, addr, cert, key):
        self.addr = addr
        self.pages = {}
        self.posts = []
        self.gets = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                with owner.lock:
                    owner.gets += 1
                    page = owner.pages.get(self.path)
                if page is None:
                    self.send_error(404)
                    return
                status, ctype, body = page
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with owner.lock:
                    owner.posts.append((self.path, self.headers.get("Content-Type"), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer((addr, 443), Handler)
        self.httpd.socket = server_ctx(cert, key).wrap_socket(self.httpd.socket, server_side=True)
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join()
            self.thread = None
        self.httpd.server_close()

    def policy(self, mode="enforce", mx=MX1, ctype="text/plain", body=None):
        text = body if body is not None else POLICY.format(mode=mode, mx=mx)
        self.pages["/.well-known/mta-sts.txt"] = (200, ctype, text.encode())


class World:
    def __init__(self, tmp_path, dnsmasq, make_sink, make_tern):
        self.tmp = tmp_path
        self.dns = dnsmasq
        self.make_sink = make_sink
        self.make_tern = make_tern
        self.ca = make_ca(tmp_path)
        os.chmod(tmp_path, 0o755)
        self.good = make_leaf(tmp_path, "mx1", f"DNS:{MX1}", self.ca)
        self.wrong = make_leaf(tmp_path, "wrong", "DNS:other.test", self.ca)
        web = make_leaf(tmp_path, "web", ",".join(f"DNS:{n}" for n in WEB_NAMES), self.ca)
        self.web_addr = None
        for i in range(20, 60):
            a = f"127.0.0.{i}"
            try:
                self.web = PolicyServer(a, *web)
                self.web_addr = a
                break
            except OSError:
                continue
        assert self.web_addr, "no loopback address with port 443 free"
        self.port = free_port_on([MX_ADDR, MX2_ADDR, RPT_ADDR, DSN_ADDR])
        self.dns.mx_host("src.test", "mx.src.test", DSN_ADDR)
        self.dns.mx_host(DOM, MX1, MX_ADDR)
        for n in WEB_NAMES:
            self.dns.a(n, self.web_addr)

    def sts_txt(self, id_):
        self.dns.txt(f"_mta-sts.{DOM}", f"v=STSv1; id={id_};")

    def sink(self, addr=MX_ADDR, cert=None):
        kw = {"tls_context": server_ctx(*cert)} if cert else {}
        return self.make_sink(addr, self.port, **kw)

    def tern(self, **settings):
        conf = {
            "smarthost": None,
            "dns_resolvers": f"127.0.0.1:{self.dns.port}",
            "delivery_port": self.port,
            "connect_timeout": "2s",
            "ip_family": "ipv4",
            "tls_ca_file": self.ca[0],
        }
        conf.update(settings)
        return self.make_tern(**conf)


@pytest.fixture
def world(tmp_path, dnsmasq, make_sink, make_tern):
    w = World(tmp_path, dnsmasq, make_sink, make_tern)
    yield w
    w.web.stop()


def send(t, tag, rcpt=f"rcpt@{DOM}"):
    sender = f"s-{uid()}@src.test"
    t.send(sender, [rcpt], message(tag, sender=sender, to=rcpt))
    return sender


def wait_deferred(t, sender, text):
    """The message from sender deferred 4.7.5 with text in its reason."""
    qid = t.qid_of(sender)
    ev = t.wait_event("deferred", qid=qid)
    assert ev.get("dsn") == "4.7.5", ev["_raw"]
    assert text in ev["_raw"], ev["_raw"]
    return ev


def test_enforce_matching_certificate_delivers(world):
    world.sts_txt("1")
    world.web.policy("enforce")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.good)
    t = world.tern()
    send(t, "sts ok")
    wait_for(lambda: s.snapshot(), desc="the message at the MX")
    assert s.snapshot()[0].tls, "delivered under TLS"
    ev = t.wait_event("policy_fetched", domain=DOM)
    assert ev["mode"] == "enforce" and ev["id"] == "1"
    assert (t.spool / "mta-sts" / DOM).exists()


def test_enforce_wrong_name_defers_without_mail(world):
    world.sts_txt("1")
    world.web.policy("enforce")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.wrong)
    t = world.tern()
    sender = send(t, "sts wrong name")
    wait_deferred(t, sender, "MTA-STS policy of sts.test: TLS required but the certificate")
    assert holds_for(lambda: not s.mail_attempts, 1.0), "no MAIL was sent"


def test_enforce_without_starttls_defers(world):
    world.sts_txt("1")
    world.web.policy("enforce")
    world.dns.start()
    world.web.start()
    s = world.sink()  # no STARTTLS
    t = world.tern()
    sender = send(t, "sts no tls")
    wait_deferred(t, sender, "does not offer STARTTLS")
    assert holds_for(lambda: not s.mail_attempts, 1.0), "nothing sent in clear"


def test_enforce_mx_not_in_policy_defers(world):
    world.sts_txt("1")
    world.web.policy("enforce", mx="mail.elsewhere.test")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.good)
    t = world.tern()
    sender = send(t, "sts mx mismatch")
    t.wait_event("mx_not_in_policy", host=MX1, action="skipped")
    wait_deferred(t, sender, "no MX host matches")
    assert holds_for(lambda: not s.sessions_total, 1.0), "the MX was not contacted"


def test_testing_bad_certificate_delivers_and_counts(world):
    world.sts_txt("1")
    world.web.policy("testing")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.wrong)
    t = world.tern(tls_rpt="yes")
    send(t, "sts testing")
    wait_for(lambda: s.snapshot(), desc="the message at the MX")
    t.wait_event("policy_failed", mode="testing", result="certificate-host-mismatch")
    days = list((t.spool / "tlsrpt").iterdir())
    assert len(days) == 1
    text = days[0].read_text()
    assert "\tcertificate-host-mismatch\t" in text and MX1 in text


def test_cached_enforce_survives_restart_and_blocked_fetch(world):
    world.sts_txt("1")
    world.web.policy("enforce")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.good)
    t = world.tern()
    send(t, "first")
    wait_for(lambda: s.snapshot(), desc="the first message at the MX")
    t.stop()
    # The policy server goes away and the TXT id changes (an attacker
    # blocking the fetch): the cached enforce policy stays in force.
    world.web.stop()
    world.dns.clear()
    world.dns.mx_host("src.test", "mx.src.test", DSN_ADDR)
    world.dns.mx_host(DOM, MX1, MX2_ADDR)
    world.sts_txt("2")
    world.dns.restart()
    bad = world.sink(MX2_ADDR, cert=world.wrong)
    t.start()
    sender = send(t, "second")
    t.wait_event("refresh_failed", domain=DOM)
    wait_deferred(t, sender, "MTA-STS policy of sts.test")
    assert holds_for(lambda: not bad.mail_attempts, 1.0)


def test_txt_id_change_refetches(world):
    world.sts_txt("1")
    world.web.policy("testing")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.good)
    t = world.tern()
    send(t, "one")
    wait_for(lambda: len(s.snapshot()) == 1, desc="first message")
    t.wait_event("policy_fetched", domain=DOM, id="1")
    world.web.policy("enforce")
    world.dns.clear()
    world.dns.mx_host("src.test", "mx.src.test", DSN_ADDR)
    world.dns.mx_host(DOM, MX1, MX_ADDR)
    for n in WEB_NAMES:
        world.dns.a(n, world.web_addr)
    world.sts_txt("2")
    world.dns.restart()
    # A plan (and its policy) lasts a minute; a restart makes the next one
    # at once, from the cached policy of id 1, which the new id replaces.
    t.stop()
    t.start()
    send(t, "two")
    ev = t.wait_event("policy_fetched", domain=DOM, id="2")
    assert ev["mode"] == "enforce"
    wait_for(lambda: len(s.snapshot()) == 2, desc="second message")
    assert world.web.gets == 2


def test_bad_policy_is_no_policy(world):
    world.sts_txt("1")
    world.web.policy(body="<html>this is not a policy</html>")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.wrong)
    t = world.tern(tls_rpt="yes")
    send(t, "bad policy")
    wait_for(lambda: s.snapshot(), desc="delivered as without a policy")
    t.wait_event("no_policy", result="sts-policy-invalid")
    text = next((t.spool / "tlsrpt").iterdir()).read_text()
    assert "\tno-policy-found\tsts-policy-invalid\t" in text


def report_json(data):
    """The JSON of a mailed report: the application/tlsrpt+gzip part."""
    msg = message_from_bytes(data, policy=policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    parts = [p for p in msg.iter_parts() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1
    return msg, json.loads(gzip.decompress(parts[0].get_content()))


def report_key(tmp):
    """A DKIM key for the reports' From domain: (dkim_sign entry, its
    public key record for dkimpy)."""
    import base64
    import subprocess
    key = os.path.join(tmp, "rpt.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", key], check=True, capture_output=True)
    os.chmod(key, 0o600)
    der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return f"tern.test:rpt:{key}", b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def test_tlsrpt_mailto_report(world, tmp_path):
    import dkim
    sign, record = report_key(str(tmp_path))
    world.sts_txt("1")
    world.web.policy("testing")
    world.dns.txt(f"_smtp._tls.{DOM}", "v=TLSRPTv1; rua=mailto:tlsrpt@rpt.test")
    world.dns.mx_host("rpt.test", "mx.rpt.test", RPT_ADDR)
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.wrong)
    rpt = world.sink(RPT_ADDR)
    t = world.tern(tls_rpt="yes", tls_rpt_contact="tls-team@tern.test", dkim_sign=sign)
    send(t, "counted 1")
    send(t, "counted 2")
    wait_for(lambda: len(s.snapshot()) == 2, desc="both messages at the MX")
    p = t.ctl("tls", "report-now")
    assert p.returncode == 0, p.stderr
    got = wait_for(lambda: rpt.snapshot(), desc=f"the report at rpt.test; log:\n{t.log_tail()}")
    tx = got[0]
    assert tx.rcpt_tos == ["tlsrpt@rpt.test"]
    msg, rep = report_json(tx.data)
    assert msg["TLS-Report-Domain"] == DOM
    assert msg["TLS-Report-Submitter"] == "tern.test"
    # Signed by the reporting domain (RFC 8460 §5.3).
    assert b"d=tern.test" in tx.data.split(b"\r\n\r\n", 1)[0]
    assert dkim.verify(tx.data, dnsfunc=lambda name, timeout=5: record
                       if name == b"rpt._domainkey.tern.test." else None)
    assert msg["Subject"].startswith(f"Report Domain: {DOM} Submitter: tern.test Report-ID: <")
    assert rep["organization-name"] == "tern.test"
    assert rep["contact-info"] == "tls-team@tern.test"
    pol = rep["policies"][0]
    assert pol["policy"]["policy-type"] == "sts"
    assert pol["policy"]["policy-domain"] == DOM
    assert "mode: testing" in pol["policy"]["policy-string"]
    assert pol["policy"]["mx-host"] == [MX1]
    assert pol["summary"]["total-failure-session-count"] == 2
    assert pol["summary"]["total-successful-session-count"] == 0
    det = pol["failure-details"]
    assert [d["result-type"] for d in det] == ["certificate-host-mismatch"]
    assert det[0]["failed-session-count"] == 2
    assert det[0]["receiving-mx-hostname"] == MX1
    assert det[0]["receiving-ip"] == MX_ADDR
    t.wait_event("run_done")
    assert not [f for f in (t.spool / "tlsrpt").iterdir()], "the day file is gone once sent"


def test_tlsrpt_https_report(world):
    world.sts_txt("1")
    world.web.policy("enforce")
    world.dns.txt(f"_smtp._tls.{DOM}", "v=TLSRPTv1; rua=https://report.test/tlsrpt")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.good)
    t = world.tern(tls_rpt="yes")
    send(t, "ok 1")
    wait_for(lambda: s.snapshot(), desc="the message at the MX")
    p = t.ctl("tls", "report-now")
    assert p.returncode == 0, p.stderr
    wait_for(lambda: world.web.posts, desc=f"the POSTed report; log:\n{t.log_tail()}")
    path, ctype, body = world.web.posts[0]
    assert path == "/tlsrpt" and ctype == "application/tlsrpt+gzip"
    rep = json.loads(gzip.decompress(body))
    pol = rep["policies"][0]
    assert pol["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 0}
    assert rep["contact-info"] == "postmaster@tern.test"
    t.wait_event("report_posted", domain=DOM)


def test_report_now_refused_when_off(world):
    world.sts_txt("1")
    world.web.policy("testing")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.wrong)
    t = world.tern()
    send(t, "not counted")
    wait_for(lambda: s.snapshot(), desc="the message at the MX")
    p = t.ctl("tls", "report-now")
    assert p.returncode != 0 and b"tls_rpt" in p.stderr
    # Nothing is counted that would never be sent.
    assert not list((t.spool / "tlsrpt").iterdir())


def test_dns_check_reports_mtasts_and_tlsrpt(world):
    world.sts_txt("7")
    world.web.policy("enforce", mx="*.elsewhere.test")
    world.dns.txt(f"_smtp._tls.{DOM}", "v=TLSRPTv1; rua=mailto:tlsrpt@rpt.test")
    world.dns.start()
    world.web.start()
    t = world.tern(start=False)
    p = t.ctl("dns", "check", DOM)
    out = p.stdout.decode()
    assert "OK MTA-STS: id 7, policy mode enforce, max_age 86400, 1 mx line(s)" in out, out
    assert f"FAIL MTA-STS: MX host {MX1} matches no mx line of the policy" in out, out
    assert "OK TLS-RPT: reports go to mailto:tlsrpt@rpt.test" in out, out
    assert p.returncode == 1
    # A policy that cannot be fetched is a failure of its own.
    world.web.stop()
    p = t.ctl("dns", "check", DOM)
    out = p.stdout.decode()
    assert "FAIL MTA-STS: id 7, but the policy: " in out, out


def test_cached_enforce_stays_when_txt_disappears(world):
    world.sts_txt("1")
    world.web.policy("enforce")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.good)
    t = world.tern()
    send(t, "first")
    wait_for(lambda: s.snapshot(), desc="the first message at the MX")
    t.stop()
    # The TXT record is gone (RFC 8461 §5.1: the policy stays until its
    # max_age) and the MX host now shows a certificate for another name.
    world.dns.clear()
    world.dns.mx_host("src.test", "mx.src.test", DSN_ADDR)
    world.dns.mx_host(DOM, MX1, MX2_ADDR)
    world.dns.restart()
    bad = world.sink(MX2_ADDR, cert=world.wrong)
    t.start()
    sender = send(t, "second")
    wait_deferred(t, sender, "MTA-STS policy of sts.test")
    assert holds_for(lambda: not bad.mail_attempts, 1.0)
    assert world.web.gets == 1, "nothing fetched again"


def test_policy_server_with_wrong_certificate_is_webpki_invalid(world):
    world.sts_txt("1")
    world.dns.start()
    # mta-sts.sts.test answers with a certificate for another name.
    world.web.httpd.server_close()
    world.web = PolicyServer(world.web_addr, *world.wrong)
    world.web.policy("enforce")
    world.web.start()
    s = world.sink(cert=world.wrong)
    t = world.tern(tls_rpt="yes")
    send(t, "no policy")
    wait_for(lambda: s.snapshot(), desc="delivered as without a policy")
    ev = t.wait_event("no_policy", result="sts-webpki-invalid")
    assert "https://mta-sts.sts.test" in ev["reason"]
    text = next((t.spool / "tlsrpt").iterdir()).read_text()
    assert "\tno-policy-found\tsts-webpki-invalid\t" in text


def test_enforce_delivery_names_the_policy(world):
    """Under an enforce policy the host's TLS policy is mta-sts: the plan,
    the delivery line and the journal say so, with how the peer was
    verified (pkix)."""
    world.sts_txt("1")
    world.web.policy("enforce")
    world.dns.start()
    world.web.start()
    world.sink(cert=world.good)
    t = world.tern()
    qid = t.qid_of(send(t, "sts names its policy"))
    ev = t.wait_event("delivered", qid=qid)
    assert ev["tls_policy"] == "mta-sts" and ev["tls_verified"] == "pkix", ev
    plan = t.wait_event("route_resolved", dest=f"mx:{DOM}")
    assert plan["tls_policy"] == "mta-sts", plan

    def traced():
        o = t.ctl("trace", qid).stdout.decode()
        return o if "delivered" in o else None

    out = wait_for(traced, desc="trace with the delivery")
    assert "tls_policy=mta-sts" in out and "tls_verified=pkix" in out, out


def test_mx_tls_policy_without_mta_sts_never_looks_up(world):
    """mx_tls_policy = dane: no MTA-STS lookup at all, so an enforce policy
    the domain publishes is never fetched and the MX host, whose
    certificate names another host, gets the mail opportunistically."""
    world.sts_txt("1")
    world.web.policy("enforce")
    world.dns.start()
    world.web.start()
    s = world.sink(cert=world.wrong)
    t = world.tern(mx_tls_policy="dane")
    qid = t.qid_of(send(t, "sts off"))
    ev = t.wait_event("delivered", qid=qid)
    assert ev["tls_policy"] == "opportunistic" and ev["tls_verified"] == "none", ev
    assert len(s.snapshot()) == 1
    assert world.web.gets == 0, "the policy was fetched"
    assert not (t.spool / "mta-sts" / DOM).exists()
    assert not t.events("policy_fetched")


def sections(text):
    """`ternctl tls show` output as {section: [lines]}."""
    out, cur = {}, None
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            cur = out.setdefault(line[1:-1], [])
        elif line.strip() and cur is not None:
            cur.append(line)
    return out


def test_tls_show_has_the_mta_sts_section(world):
    """The [mta-sts] section shows ternd's cached policy, and the [policy]
    lines follow it: the listed MX host is mta-sts."""
    world.sts_txt("1")
    world.web.policy("enforce")
    world.dns.start()
    world.web.start()
    world.sink(cert=world.good)
    t = world.tern()
    qid = t.qid_of(send(t, "sts show"))
    t.wait_event("delivered", qid=qid)
    p = t.ctl("tls", "show", DOM)
    out = p.stdout.decode()
    assert p.returncode == 0, (out, p.stderr.decode())
    s = sections(out)
    assert any("id 1 mode enforce" in ln for ln in s["mta-sts"]), out
    assert f"mta-sts: mx {MX1}" in s["mta-sts"], out
    assert s["policy"] == [f"{MX1}: mta-sts"], out
