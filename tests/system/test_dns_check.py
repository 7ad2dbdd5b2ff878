"""`ternctl dns check DOMAIN` against zones served by dnsmasq on a
loopback port: all good; missing SPF; SPF not covering the egress address;
DKIM key mismatch; no DMARC; DMARC p=reject without alignment; --json; usage
errors. Each gives its expected finding line and exit status.

The relay sends from 127.0.0.5 (egress_addresses), named mail.example.test
(A and PTR through --host-record), and signs example.test with selector
"sel" using a key written by `openssl genpkey`."""

import base64
import json
import os
import subprocess

import pytest

DOMAIN = "example.test"
EGRESS = "127.0.0.5"
HOST = "mail.example.test"
SEL = "sel"
DKIM_NAME = f"{SEL}._domainkey.{DOMAIN}"


def genkey(path, alg):
    algo = ["-algorithm", "ED25519"] if alg == "ed25519" else [
        "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    subprocess.run(["openssl", "genpkey", *algo, "-out", str(path)], check=True,
                   capture_output=True)
    os.chmod(path, 0o600)
    return path


def dkim_value(path, alg):
    """The TXT value `ternctl dkim keygen` would print for the key at path."""
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    if alg == "ed25519":
        der = der[-32:]  # SubjectPublicKeyInfo = 12-byte header + the raw key
    return f"v=DKIM1; k={alg}; p={base64.b64encode(der).decode()}"


def txt_strings(value):
    """dnsmasq splits --txt-record strings at commas: 255-byte pieces."""
    return ",".join(value[i:i + 255] for i in range(0, len(value), 255))


class World:
    def __init__(self, dnsmasq, make_tern, tmp_path):
        self.dns = dnsmasq
        self.tmp = tmp_path
        self.make_tern = make_tern
        self.key = None

    def zone(self, spf="v=spf1 ip4:127.0.0.5 -all", dkim=True, dmarc="v=DMARC1; p=reject",
             alg="ed25519", publish_other_key=False):
        """Records of example.test; the relay's key is written and (unless
        publish_other_key) its public half published."""
        d = self.dns
        if spf:
            d.txt(DOMAIN, spf)
        if dmarc:
            d.txt(f"_dmarc.{DOMAIN}", dmarc)
        d.a(HOST, EGRESS)  # A and PTR
        d.mx(DOMAIN, HOST, 10)
        if dkim:
            self.key = genkey(self.tmp / "relay.key", alg)
            published = self.key
            if publish_other_key:
                published = genkey(self.tmp / "other.key", alg)
            d.txt(DKIM_NAME, txt_strings(dkim_value(published, alg)))
        d.start()
        return self

    def check(self, *args, **settings):
        conf = {
            "hostname": HOST,
            "egress_addresses": EGRESS,
            "dns_resolvers": f"127.0.0.1:{self.dns.port}",
            "smarthost": None,
        }
        if self.key is not None:
            conf["dkim_sign"] = f"{DOMAIN}:{SEL}:{self.key}"
        conf.update(settings)
        t = self.make_tern(start=False, **conf)
        p = t.ctl("dns", "check", *args)
        out = p.stdout.decode()
        return p.returncode, out.splitlines(), p.stderr.decode()


@pytest.fixture
def world(dnsmasq, make_tern, tmp_path):
    return World(dnsmasq, make_tern, tmp_path)


def lines_of(lines, prefix):
    return [ln for ln in lines if ln.startswith(prefix)]


def test_all_good(world):
    rc, lines, err = world.zone(alg="rsa").check(DOMAIN)
    text = "\n".join(lines)
    assert rc == 0, text + err
    assert not lines_of(lines, "FAIL"), text
    assert all(ln.split(" ", 1)[0] in ("OK", "WARN") for ln in lines), text
    assert lines_of(lines, f"OK SPF: {DOMAIN} passes for {EGRESS}"), text
    assert lines_of(lines, f"OK DKIM: {DKIM_NAME} matches "), text
    assert "(rsa, 2048 bits)" in text
    assert lines_of(lines, f"OK DMARC: _dmarc.{DOMAIN}: policy p=reject"), text
    assert lines_of(lines, f"OK DMARC: mail from {DOMAIN} sent through tern aligns (SPF and DKIM)")
    assert lines_of(lines, f"OK PTR: {EGRESS} -> {HOST} -> {EGRESS} (forward-confirmed)"), text
    assert lines_of(lines, f"OK MX: {DOMAIN}: 10 {HOST}"), text


def test_missing_spf(world):
    rc, lines, _ = world.zone(spf=None).check(DOMAIN)
    assert rc == 1, lines
    assert (f'FAIL SPF: no SPF record at {DOMAIN}; publish: {DOMAIN}. TXT '
            f'"v=spf1 ip4:{EGRESS} -all"') in lines, lines
    # DKIM still aligns, so DMARC p=reject is satisfied.
    assert lines_of(lines, f"OK DMARC: mail from {DOMAIN} sent through tern aligns (DKIM)"), lines


def test_spf_not_covering_egress(world):
    rc, lines, _ = world.zone(spf="v=spf1 ip4:192.0.2.1 mx:other.test -all").check(DOMAIN)
    assert rc == 1, lines
    bad = lines_of(lines, f"FAIL SPF: {DOMAIN} gives fail for {EGRESS}")
    assert len(bad) == 1, lines
    assert bad[0].endswith(f'; publish: {DOMAIN}. TXT '
                           f'"v=spf1 ip4:{EGRESS} ip4:192.0.2.1 mx:other.test -all"'), bad
    assert "matched '-all'" in bad[0]
    assert not lines_of(lines, "OK SPF"), lines


def test_dkim_key_mismatch(world):
    rc, lines, _ = world.zone(publish_other_key=True).check(DOMAIN)
    assert rc == 1, lines
    bad = lines_of(lines, f"FAIL DKIM: the key published at {DKIM_NAME} does not match ")
    assert len(bad) == 1, lines
    want = dkim_value(world.key, "ed25519")
    assert bad[0].endswith(f'; publish: {DKIM_NAME}. TXT "{want}"'), bad
    # SPF still aligns.
    assert lines_of(lines, f"OK DMARC: mail from {DOMAIN} sent through tern aligns (SPF)"), lines


def test_rsa_key_published_split_and_mismatched(world):
    rc, lines, _ = world.zone(alg="rsa", publish_other_key=True).check(DOMAIN)
    assert rc == 1, lines
    bad = lines_of(lines, "FAIL DKIM: the key published at")
    assert len(bad) == 1, lines
    # The 2048-bit key's record is split into strings of at most 255 characters.
    rec = bad[0].split("; publish: ", 1)[1]
    strings = rec.split(" TXT ", 1)[1].split('" "')
    assert len(strings) == 2 and all(len(s.strip('"')) <= 255 for s in strings), rec
    assert "".join(s.strip('"') for s in strings) == dkim_value(world.key, "rsa")


def test_no_dmarc(world):
    rc, lines, _ = world.zone(dmarc=None).check(DOMAIN)
    assert rc == 1, lines
    bad = lines_of(lines, f"FAIL DMARC: no DMARC record at _dmarc.{DOMAIN}")
    assert len(bad) == 1, lines
    assert bad[0].endswith(f'; publish: _dmarc.{DOMAIN}. TXT '
                           f'"v=DMARC1; p=none; rua=mailto:postmaster@{DOMAIN}"'), bad
    assert len(lines_of(lines, "FAIL")) == 1, lines


def test_dmarc_reject_without_alignment(world):
    rc, lines, _ = world.zone(spf="v=spf1 ip4:192.0.2.1 -all", dkim=False).check(DOMAIN)
    assert rc == 1, lines
    assert lines_of(lines, f"OK DMARC: _dmarc.{DOMAIN}: policy p=reject"), lines
    bad = lines_of(lines, f"FAIL DMARC: p=reject at _dmarc.{DOMAIN} but mail from {DOMAIN} "
                          "sent through tern would not align")
    assert len(bad) == 1, lines
    assert lines_of(lines, f"WARN DKIM: no dkim_sign entry for {DOMAIN}"), lines


def test_dmarc_invalid(world):
    rc, lines, _ = world.zone(dmarc="v=DMARC1; p=maybe").check(DOMAIN)
    assert rc == 1, lines
    assert lines_of(lines, f"FAIL DMARC: the record at _dmarc.{DOMAIN} is invalid: p= must be"), lines


def test_json(world):
    rc, lines, _ = world.zone(spf=None).check(DOMAIN, "--json")
    assert rc == 1, lines
    objs = [json.loads(ln) for ln in lines]
    assert objs and all({"level", "check", "message"} <= set(o) for o in objs), objs
    assert {o["level"] for o in objs} <= {"OK", "WARN", "FAIL"}
    spf = [o for o in objs if o["check"] == "SPF" and o["level"] == "FAIL"]
    assert len(spf) == 1 and spf[0]["publish"] == f'{DOMAIN}. TXT "v=spf1 ip4:{EGRESS} -all"'


def test_usage_and_config_errors(world):
    world.zone()
    rc, lines, err = world.check()
    assert rc == 2 and "usage" in err and not lines
    rc, lines, err = world.check("not a domain!")
    assert rc == 2 and not lines
    rc, lines, err = world.check(DOMAIN, egress_addresses="127.0.0.0/24")
    assert rc == 2 and "egress_addresses" in err and not lines


@pytest.mark.parametrize("smarthost,term", [
    ("[192.0.2.25]:25", "ip4:192.0.2.25"),
    ("[2001:db8::25]:25", "ip6:2001:db8::25"),
    ("relay.example.test:25", "a:relay.example.test"),
])
def test_spf_advice_for_smarthost(world, smarthost, term):
    """The SPF record advised for a smarthost given as an address literal
    uses ip4:/ip6: (a: takes a domain, RFC 7208 5.3); a named smarthost
    keeps a:."""
    rc, lines, _ = world.zone(spf=None).check(DOMAIN, smarthost=smarthost)
    assert rc == 1, lines
    bad = lines_of(lines, f"FAIL SPF: no SPF record at {DOMAIN}")
    assert len(bad) == 1, lines
    assert bad[0].endswith(f'; publish: {DOMAIN}. TXT "v=spf1 {term} -all"'), bad
