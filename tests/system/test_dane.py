"""DANE for outbound SMTP (RFC 7672) against a real DNSSEC world: a signed
zone served by nsd behind a validating unbound (dnssec.py) as tern's
dns_resolvers, and STARTTLS sinks on 127.0.54.x at delivery_port with
certificates from a test CA. The MX hosts are mx1.dane.test (and more);
plain.test is served unsigned (no AD bit)."""

import pytest

from dnssec import cert_sha256, spki_sha256
from sysutil import free_port_on, holds_for, message, uid, wait_for
from test_outbound_tls import make_ca, make_leaf, server_ctx

MX1, MX2 = "127.0.54.1", "127.0.54.2"
HOLD = 1.5  # how long "never delivered" is watched after the deferral


class Dane:
    """One test's world: certificates, the signed zone, sinks, ternd."""

    def __init__(self, tmp_path, dnssec, make_sink, make_tern):
        self.tmp = tmp_path
        self.dns = dnssec
        self._make_sink = make_sink
        self._make_tern = make_tern
        self.port = free_port_on([MX1, MX2])
        certs = tmp_path / "certs"
        certs.mkdir()
        self.ca = make_ca(certs)
        # A leaf for mx1.dane.test from the test CA; its chain file carries
        # the CA too (RFC 7671 §5.2.2: a DANE-TA server sends its TA).
        self.cert, self.key = make_leaf(certs, "mx1", "DNS:mx1.dane.test", self.ca)
        self.chain = certs / "mx1-chain.crt"
        self.chain.write_text(self.cert.read_text() + self.ca[0].read_text())
        self.other, _ = make_leaf(certs, "other", "DNS:other.test", self.ca)
        self.zone = dnssec.zone("dane.test")
        self.plain = dnssec.zone("plain.test", signed=False)

    def sink(self, addr=MX1, tls=True):
        kw = {"tls_context": server_ctx(self.chain, self.key)} if tls else {}
        return self._make_sink(addr, self.port, **kw)

    def tern(self, **settings):
        self.dns.start()
        conf = {
            "smarthost": None,  # deliver by MX
            "dns_resolvers": self.dns.resolver,
            "delivery_port": self.port,
            "connect_timeout": "2s",
            "ip_family": "ipv4",
        }
        conf.update(settings)
        return self._make_tern(**conf)


@pytest.fixture
def dane(tmp_path, dnssec, make_sink, make_tern):
    return Dane(tmp_path, dnssec, make_sink, make_tern)


def send(t, rcpt):
    sender = f"{uid()}@src.test"
    t.send(sender, [rcpt], message("dane", sender=sender, to=rcpt))
    return t.qid_of(sender)


def tlsrpt_day(t):
    """The text of the one TLS-RPT day file (tls_rpt = yes)."""
    day = wait_for(lambda: next((t.spool / "tlsrpt").iterdir(), None), desc="a TLS-RPT day file")
    return day.read_text()


def deferred_never_sent(t, sink, qid, rcpt, policy="dane"):
    """The deferral (4.7.5) names the policy; policy None: no host was left
    to try, the route itself failed and names none."""
    ev = t.wait_event("deferred", qid=qid)
    assert ev["dsn"] == "4.7.5", ev
    if policy is not None:
        assert ev["tls_policy"] == policy and ev["tls_verified"] == "none", ev
    assert holds_for(lambda: not sink.mail_attempts and not sink.snapshot(), HOLD)
    return ev


def test_dane_ee_match_delivers(dane):
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.cert))
    s = dane.sink()
    t = dane.tern()
    qid = send(t, "a@dane.test")
    ev = t.wait_event("delivered", qid=qid)
    assert ev["tls_policy"] == "dane" and ev["tls_verified"] == "dane-ee", ev
    assert ev["relay"].startswith("mx1.dane.test["), ev
    assert ev["tls"].endswith("/verified"), ev
    assert len(s.snapshot()) == 1
    plan = t.wait_event("route_resolved", dest="mx:dane.test")
    assert plan["tls_policy"] == "dane", plan


def test_dane_ee_mismatch_defers(dane):
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.other))
    s = dane.sink()
    t = dane.tern(tls_rpt="yes")
    qid = send(t, "a@dane.test")
    ev = deferred_never_sent(t, s, qid, "a@dane.test")
    assert "DANE" in ev["reason"] and "TLSA" in ev["reason"], ev
    assert "E\tdane.test\ttlsa\tvalidation-failure\t" in tlsrpt_day(t), tlsrpt_day(t)
    hf = t.wait_event("host_failed", host="mx1.dane.test")
    assert hf["tls_policy"] == "dane", hf


def test_dane_without_starttls_defers(dane):
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.cert))
    s = dane.sink(tls=False)
    t = dane.tern()
    qid = send(t, "a@dane.test")
    ev = deferred_never_sent(t, s, qid, "a@dane.test")
    assert "does not offer STARTTLS" in ev["reason"], ev


def test_dane_fails_over_to_the_next_mx(dane):
    """A host whose certificate matches no record fails (temporarily); the
    next MX host, which matches, gets the mail."""
    dane.zone.mx("dane.test", "mx1.dane.test", MX1, pref=10)
    dane.zone.mx("dane.test", "mx2.dane.test", MX2, pref=20)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.other))
    dane.zone.tlsa("mx2.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.cert))
    s1, s2 = dane.sink(MX1), dane.sink(MX2)
    t = dane.tern()
    qid = send(t, "a@dane.test")
    ev = t.wait_event("delivered", qid=qid)
    assert ev["relay"].startswith("mx2.dane.test["), ev
    assert ev["tls_verified"] == "dane-ee", ev
    assert not s1.mail_attempts and len(s2.snapshot()) == 1


def test_tlsa_lookup_failure_skips_the_host(dane):
    """RFC 7672 §2.1.1: the TLSA lookup of a host whose addresses validated
    fails (SERVFAIL: the records' signatures do not verify); that host is
    not used, not even in clear. With a second MX host without TLSA records
    the mail goes there; the first host is never spoken to."""
    dane.zone.mx("dane.test", "mx1.dane.test", MX1, pref=10)
    dane.zone.mx("dane.test", "mx2.dane.test", MX2, pref=20)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.cert))
    dane.zone.make_bogus(f"_{dane.port}._tcp.mx1.dane.test", "TLSA")
    s1, s2 = dane.sink(MX1), dane.sink(MX2)
    t = dane.tern()
    qid = send(t, "a@dane.test")
    ev = t.wait_event("delivered", qid=qid)
    assert ev["relay"].startswith("mx2.dane.test["), ev
    assert ev["tls_policy"] == "opportunistic", ev
    hf = t.wait_event("host_failed", host="mx1.dane.test")
    assert hf["phase"] == "TLSA lookup" and hf["tls_policy"] == "dane", hf
    assert s1.sessions_total == 0 and len(s2.snapshot()) == 1


def test_tlsa_lookup_failure_of_the_only_host_defers(dane):
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.cert))
    dane.zone.make_bogus(f"_{dane.port}._tcp.mx1.dane.test", "TLSA")
    s = dane.sink()
    t = dane.tern(tls_rpt="yes")
    qid = send(t, "a@dane.test")
    ev = deferred_never_sent(t, s, qid, "a@dane.test", policy=None)
    assert "TLSA lookup" in ev["reason"], ev
    assert s.sessions_total == 0
    # RFC 8460 §4.3.2.2: counted as a tlsa failure of the MX domain.
    assert "E\tdane.test\ttlsa\tdnssec-invalid\t" in tlsrpt_day(t), tlsrpt_day(t)


def test_dane_ta_with_the_right_name_delivers(dane):
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "2 0 1 " + cert_sha256(dane.ca[0]))
    s = dane.sink()
    t = dane.tern()
    qid = send(t, "a@dane.test")
    ev = t.wait_event("delivered", qid=qid)
    assert ev["tls_policy"] == "dane" and ev["tls_verified"] == "dane-ta", ev
    assert len(s.snapshot()) == 1


def test_dane_ta_with_a_wrong_name_defers(dane):
    """RFC 7672 §3.2.2: under DANE-TA the leaf must name the MX host or the
    domain; a certificate for another name from the same CA does not do."""
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "2 0 1 " + cert_sha256(dane.ca[0]))
    other_key = dane.tmp / "certs" / "other.key"
    chain = dane.tmp / "certs" / "other-chain.crt"
    chain.write_text(dane.other.read_text() + dane.ca[0].read_text())
    s = dane._make_sink(MX1, dane.port, tls_context=server_ctx(chain, other_key))
    t = dane.tern()
    qid = send(t, "a@dane.test")
    deferred_never_sent(t, s, qid, "a@dane.test")


def test_only_unusable_records_is_opportunistic(dane):
    """RFC 7672 §3.1.3: PKIX-TA/PKIX-EE records are unusable; TLS is used
    when offered, unauthenticated, and the mail goes."""
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "1 1 1 " + spki_sha256(dane.other))
    s = dane.sink()
    t = dane.tern()
    qid = send(t, "a@dane.test")
    ev = t.wait_event("delivered", qid=qid)
    assert ev["tls_policy"] == "opportunistic", ev
    assert ev["tls"] != "none", ev
    assert len(s.snapshot()) == 1


def test_unsigned_zone_is_opportunistic(dane):
    """No AD bit: no DANE, today's behaviour (the TLSA record, which does
    not match, is not even looked up)."""
    dane.plain.mx("plain.test", "mx1.plain.test", MX1)
    dane.plain.tlsa("mx1.plain.test", dane.port, "3 1 1 " + spki_sha256(dane.other))
    s = dane.sink()
    t = dane.tern()
    qid = send(t, "a@plain.test")
    ev = t.wait_event("delivered", qid=qid)
    assert ev["tls_policy"] == "opportunistic" and ev["tls_verified"] == "none", ev
    assert len(s.snapshot()) == 1


def test_mx_tls_policy_empty_turns_dane_off(dane):
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.other))
    s = dane.sink()
    t = dane.tern(mx_tls_policy="")
    qid = send(t, "a@dane.test")
    ev = t.wait_event("delivered", qid=qid)
    assert ev["tls_policy"] == "opportunistic", ev
    assert len(s.snapshot()) == 1


def test_history_records_the_policy(dane):
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.cert))
    dane.sink()
    t = dane.tern()
    qid = send(t, "a@dane.test")
    t.wait_event("delivered", qid=qid)
    def traced():
        o = t.ctl("trace", qid).stdout.decode()
        return o if "delivered" in o else None

    out = wait_for(traced, desc="trace with the delivery")
    assert "tls_policy=dane" in out and "tls_verified=dane-ee" in out, out


def sections(text):
    """`ternctl tls show` output as {section: [lines]}."""
    out, cur = {}, None
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            cur = out.setdefault(line[1:-1], [])
        elif line.strip() and cur is not None:
            cur.append(line)
    return out


def test_ternctl_tls_show(dane):
    """Computed by ternctl with tern's resolvers: works without the daemon."""
    dane.zone.mx("dane.test", "mx1.dane.test", MX1, pref=10)
    dane.zone.mx("dane.test", "mx2.dane.test", MX2, pref=20)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.cert))
    dane.zone.tlsa("mx2.dane.test", dane.port, "0 0 1 " + cert_sha256(dane.ca[0]))
    dane.plain.mx("plain.test", "mx1.plain.test", MX1)
    t = dane.tern(start=False)
    p = t.ctl("tls", "show", "dane.test")
    out = p.stdout.decode()
    assert p.returncode == 0, (out, p.stderr.decode())
    s = sections(out)
    assert "lookup: ok validated=yes" in s["mx"], out
    dane_lines = "\n".join(s["dane"])
    assert f"tlsa: _{dane.port}._tcp.mx1.dane.test ok validated=yes" in dane_lines, out
    assert "record: 3 1 1 " + spki_sha256(dane.cert) + " usable" in dane_lines, out
    assert "record: 0 0 1 " in dane_lines and "unusable" in dane_lines, out
    assert s["policy"] == ["mx1.dane.test: dane", "mx2.dane.test: opportunistic"], out

    p = t.ctl("tls", "show", "plain.test")
    out = p.stdout.decode()
    s = sections(out)
    assert "lookup: ok validated=no" in s["mx"], out
    assert any("not looked up (the MX answer was not validated)" in ln for ln in s["dane"]), out
    assert s["policy"] == ["mx1.plain.test: opportunistic"], out

    assert t.ctl("tls", "show").returncode == 2


@pytest.fixture
def sts_web(dane):
    """An MTA-STS policy server for dane.test (mta-sts.dane.test on a
    loopback address at port 443, certificate from the test CA)."""
    from test_mtasts import PolicyServer

    certs = dane.tmp / "certs"
    web = make_leaf(certs, "web", "DNS:mta-sts.dane.test", dane.ca)
    server = None
    for i in range(60, 100):
        try:
            server = PolicyServer(f"127.0.0.{i}", *web)
            break
        except OSError:
            continue
    assert server is not None, "no loopback address with port 443 free"
    dane.zone.a("mta-sts.dane.test", server.addr)
    yield server
    server.stop()


def test_dane_wins_over_mta_sts_and_is_reported(dane, sts_web):
    """RFC 8461 §2: a host with usable validated TLSA records is under DANE
    even when the domain's enforce MTA-STS policy does not list it; the
    session is counted for TLS-RPT as a tlsa policy."""
    dane.zone.mx("dane.test", "mx1.dane.test", MX1)
    dane.zone.tlsa("mx1.dane.test", dane.port, "3 1 1 " + spki_sha256(dane.cert))
    dane.zone.rr("_mta-sts.dane.test", "TXT", '"v=STSv1; id=1;"')
    sts_web.policy("enforce", mx="other.dane.test")
    sts_web.start()
    s = dane.sink()
    t = dane.tern(tls_ca_file=dane.ca[0], tls_rpt="yes")
    qid = send(t, "a@dane.test")
    ev = t.wait_event("delivered", qid=qid)
    assert ev["tls_policy"] == "dane" and ev["tls_verified"] == "dane-ee", ev
    assert len(s.snapshot()) == 1
    t.wait_event("policy_fetched", domain="dane.test")
    assert not t.events("mx_not_in_policy")
    text = tlsrpt_day(t)
    assert "E\tdane.test\ttlsa\tsuccess\t" in text and "mx1.dane.test" in text, text
    assert "3 1 1 " + spki_sha256(dane.cert).lower() in text, text
