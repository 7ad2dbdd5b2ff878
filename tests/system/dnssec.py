"""A DNSSEC-signed test DNS for DANE (RFC 7672) and other tests that need
validated answers: zones written by the test, signed with ldns-keygen and
ldns-signzone, served by nsd, and a validating unbound in front of it that
holds the signed zones' DS records as trust anchors. Both run in the
foreground on their own 127.0.0.0/8 addresses and ports (never port 53,
never the system's configuration). Point tern's dns_resolvers at
`resolver` ("addr:port").

    dns = DnssecDns(tmp_path / "dnssec")
    z = dns.zone("dane.test")                 # signed
    z.mx("dane.test", "mx1.dane.test", "127.0.54.1")
    z.tlsa("mx1.dane.test", 25, "3 1 1 " + spki_sha256(cert))
    dns.zone("plain.test", signed=False)      # served, not signed: no AD
    dns.start()
"""

import hashlib
import os
import subprocess
import time

from sysutil import dns_query, DNS_A, DNS_NOERROR, free_port_on

NSD_ADDR = "127.0.53.1"
UNBOUND_ADDR = "127.0.53.2"


def _run(argv, cwd):
    p = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=60, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {p.stderr}{p.stdout}")
    return p.stdout


def spki_sha256(cert_path):
    """The hex SHA2-256 of a certificate's SubjectPublicKeyInfo (TLSA 3 1 1)."""
    pub = subprocess.run(["openssl", "x509", "-in", str(cert_path), "-noout", "-pubkey"],
                         capture_output=True, check=True, timeout=30).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         capture_output=True, check=True, timeout=30).stdout
    return hashlib.sha256(der).hexdigest()


def cert_sha256(cert_path):
    """The hex SHA2-256 of a whole certificate (TLSA x 0 1)."""
    der = subprocess.run(["openssl", "x509", "-in", str(cert_path), "-outform", "DER"],
                         capture_output=True, check=True, timeout=30).stdout
    return hashlib.sha256(der).hexdigest()


class Zone:
    def __init__(self, name, signed):
        self.name = name.rstrip(".")
        self.signed = signed
        self.records = []
        self.bogus = []  # (owner., type): data changed after signing

    def rr(self, owner, rtype, data, ttl=60):
        owner = owner.rstrip(".") + "."
        self.records.append(f"{owner} {ttl} IN {rtype} {data}")
        return self

    def a(self, host, addr):
        return self.rr(host, "A", addr)

    def mx(self, domain, host, addr=None, pref=10):
        self.rr(domain, "MX", f"{pref} {host.rstrip('.')}.")
        if addr is not None:
            self.a(host, addr)
        return self

    def tlsa(self, host, port, data):
        return self.rr(f"_{port}._tcp.{host}", "TLSA", data)

    def make_bogus(self, owner, rtype):
        """Change owner's rtype records after signing: their signatures no
        longer verify, and the validating resolver answers SERVFAIL."""
        self.bogus.append((owner.rstrip(".") + ".", rtype))
        return self

    def text(self):
        origin = self.name + "."
        head = [f"$ORIGIN {origin}", "$TTL 60",
                f"@ 60 IN SOA ns1.{origin} hostmaster.{origin} 1 3600 600 86400 60",
                f"@ 60 IN NS ns1.{origin}", f"ns1.{origin} 60 IN A {NSD_ADDR}"]
        return "\n".join(head + self.records) + "\n"


class DnssecDns:
    def __init__(self, workdir):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.zones = []
        self.nsd_port = free_port_on([NSD_ADDR], udp=True)
        self.port = free_port_on([UNBOUND_ADDR], udp=True)
        self.resolver = f"{UNBOUND_ADDR}:{self.port}"
        self.procs = []

    def zone(self, name, signed=True):
        z = Zone(name, signed)
        self.zones.append(z)
        return z

    # -- files

    def _sign(self, z):
        """Write and sign z; its DS record (the trust anchor) back."""
        d = self.workdir
        path = os.path.join(d, f"{z.name}.zone")
        with open(path, "w") as f:
            f.write(z.text())
        if not z.signed:
            return path, None
        ksk = _run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", z.name], d).strip()
        zsk = _run(["ldns-keygen", "-a", "ECDSAP256SHA256", z.name], d).strip()
        _run(["ldns-signzone", "-f", path + ".signed", path, zsk, ksk], d)
        if z.bogus:
            self._spoil(path + ".signed", z.bogus)
        with open(os.path.join(d, ksk + ".ds")) as f:
            ds = f.read().strip()
        return path + ".signed", ds

    @staticmethod
    def _spoil(path, bogus):
        lines = []
        with open(path) as f:
            for line in f:
                w = line.split()
                if len(w) >= 5 and (w[0].lower(), w[3].upper()) in {(o.lower(), t) for o, t in bogus}:
                    # flip the last hex digit of the record's data
                    last = w[-1]
                    w[-1] = last[:-1] + ("0" if last[-1] != "0" else "1")
                    line = "\t".join(w) + "\n"
                lines.append(line)
        with open(path, "w") as f:
            f.writelines(lines)

    def _write_conf(self):
        d = self.workdir
        nsd = [
            "server:",
            f"  ip-address: {NSD_ADDR}@{self.nsd_port}",
            f"  port: {self.nsd_port}",
            f'  zonesdir: "{d}"',
            f'  pidfile: "{d}/nsd.pid"',
            f'  xfrdfile: "{d}/xfrd.state"',
            f'  xfrdir: "{d}"',
            f'  zonelistfile: "{d}/zone.list"',
            '  database: ""',
            '  username: ""',
            '  chroot: ""',
            f'  logfile: "{d}/nsd.log"',
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        anchors = []
        for z in self.zones:
            zfile, ds = self._sign(z)
            nsd += ["zone:", f"  name: {z.name}", f'  zonefile: "{zfile}"']
            if ds:
                anchors.append(ds)
        with open(os.path.join(d, "nsd.conf"), "w") as f:
            f.write("\n".join(nsd) + "\n")
        with open(os.path.join(d, "anchors.ds"), "w") as f:
            f.write("\n".join(anchors) + "\n")
        unbound = [
            "server:",
            f"  interface: {UNBOUND_ADDR}@{self.port}",
            f"  port: {self.port}",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{d}"',
            f'  pidfile: "{d}/unbound.pid"',
            '  logfile: ""',
            "  use-syslog: no",
            "  verbosity: 1",
            "  val-log-level: 2",
            "  do-ip6: no",
            "  do-not-query-localhost: no",
            "  access-control: 127.0.0.0/8 allow",
            '  module-config: "validator iterator"',
            f'  trust-anchor-file: "{d}/anchors.ds"',
            "  qname-minimisation: no",
            # unbound answers .test itself (RFC 6761 §6.2) unless told not to
            '  local-zone: "test." nodefault',
            "  num-threads: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for z in self.zones:
            unbound += ["stub-zone:", f"  name: {z.name}", f"  stub-addr: {NSD_ADDR}@{self.nsd_port}"]
        with open(os.path.join(d, "unbound.conf"), "w") as f:
            f.write("\n".join(unbound) + "\n")

    # -- processes

    def _spawn(self, name, argv):
        log = open(os.path.join(self.workdir, f"{name}.out"), "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.procs.append((name, p))
        return p

    def _wait_answer(self, port, addr, name, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            for pname, p in self.procs:
                if p.poll() is not None:
                    raise AssertionError(f"{pname} exited with {p.returncode}:\n{self.log_tail()}")
            try:
                rcode, ans = dns_query(port, name, DNS_A, timeout=0.3, host=addr)
                if rcode == DNS_NOERROR and ans:
                    return
            except (OSError, TimeoutError):
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(f"{name} not answered in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def start(self):
        assert self.zones, "no zone"
        self._write_conf()
        d = self.workdir
        self._spawn("nsd", ["/usr/sbin/nsd", "-d", "-c", os.path.join(d, "nsd.conf")])
        self._wait_answer(self.nsd_port, NSD_ADDR, f"ns1.{self.zones[0].name}")
        self._spawn("unbound", ["/usr/sbin/unbound", "-d", "-c", os.path.join(d, "unbound.conf")])
        self._wait_answer(self.port, UNBOUND_ADDR, f"ns1.{self.zones[0].name}")
        return self

    def stop(self):
        for _, p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []

    def log_tail(self, n=30):
        out = []
        for name in ("nsd.out", "nsd.log", "unbound.out"):
            try:
                with open(os.path.join(self.workdir, name), errors="replace") as f:
                    out.append(f"--- {name}\n" + "\n".join(f.read().splitlines()[-n:]))
            except OSError:
                pass
        return "\n".join(out)
