"""
Helpers for the end-to-end tests: port allocation, polling with deadlines,
the programmable smarthost sink (aiosmtpd in a thread), a byte-exact SMTP
client on raw sockets, log line parsing and DSN parsing; for MX delivery,
sinks on distinct loopback addresses sharing one port, a session meter over
several sinks, a stdlib DNS query and a dnsmasq server (class Dnsmasq).
"""

import asyncio
import email
import json
import os
import re
import random
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

ASAN = bool(os.environ.get("TERN_ASAN"))
# Everything is slower under ASan; scale every deadline by this.
SLOW = 3.0 if ASAN else 1.0
WAIT = 20.0 * SLOW  # default deadline for "eventually" conditions

QID_RE = re.compile(r"^[0-9A-Za-z]{6,64}$")
ENH_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


# --------------------------------------------------------------------------
# Small utilities


_port_rng = random.Random()

def free_port(host="127.0.0.1"):
    """A TCP port that was free on host a moment ago. Chosen below the
    kernel's ephemeral range (32768-60999 on Linux), so that no outgoing
    connection of the daemons under test can take it before the server that
    is meant to listen on it binds it."""
    for _ in range(200):
        port = _port_rng.randrange(10000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port on {host}")


def wait_for(pred, timeout=WAIT, interval=0.05, desc="condition"):
    """Poll pred() until it returns something truthy; return that value.
    Fails the test with desc when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        val = pred()
        if val:
            return val
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {desc}")
        time.sleep(interval)


def holds_for(pred, duration, interval=0.05):
    """True when pred() stays truthy for the whole duration (a bounded
    negative check: "nothing happens within this window")."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not pred():
            return False
        time.sleep(interval)
    return bool(pred())


def uid():
    return os.urandom(5).hex()


def asan_errors(text):
    """Sanitizer report lines in a captured stderr text."""
    return [
        ln
        for ln in text.splitlines()
        if "ERROR: AddressSanitizer" in ln
        or "runtime error:" in ln
        or "ERROR: LeakSanitizer" in ln
        or "ThreadSanitizer" in ln
    ]


# --------------------------------------------------------------------------
# Log lines: "TIMESTAMP level qid=QID subsystem event key=value ..." or JSON
# objects (TIMESTAMP: RFC 3339 with milliseconds, e.g. 2026-12-02T21:30:01.123Z)

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(?:Z|[+-]\d{2}:\d{2})$")
_TOKEN = re.compile(r'([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|\S*)|(\S+)')
LEVELS = ("debug", "info", "warn", "error", "crit")


def parse_log_line(line):
    """A dict with level, qid, subsystem, event and every key, or None when
    the line is not a log line (sanitizer output, blank)."""
    line = line.rstrip("\r\n")
    if not line:
        return None
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if not isinstance(obj, dict) or "event" not in obj:
            return None
        obj["_raw"] = line
        obj["_json"] = True
        return obj
    toks = list(_TOKEN.finditer(line))
    ts = None
    if toks and toks[0].group(3) is not None and TS_RE.match(toks[0].group(3)):
        ts = toks.pop(0).group(3)
    if not toks or toks[0].group(3) is None or toks[0].group(3).lower() not in LEVELS:
        return None
    rec = {"level": toks[0].group(3).lower(), "_raw": line, "_json": False, "ts": ts}
    bare = []
    for m in toks[1:]:
        if m.group(3) is not None:
            bare.append(m.group(3))
            continue
        key, val = m.group(1), m.group(2)
        if val.startswith('"') and len(val) >= 2:
            try:
                val = json.loads(val)
            except ValueError:
                val = val[1:-1]
        rec.setdefault(key, val)
    if len(bare) >= 2:
        rec["subsystem"], rec["event"] = bare[0], bare[1]
    elif len(bare) == 1:
        rec["subsystem"], rec["event"] = bare[0], ""
    else:
        return None
    return rec


def parse_log(text):
    out = []
    for ln in text.splitlines():
        rec = parse_log_line(ln)
        if rec is not None:
            out.append(rec)
    return out


# --------------------------------------------------------------------------
# The smarthost sink


@dataclass
class Transaction:
    peer: tuple
    mail_from: str
    mail_options: list
    rcpt_tos: list
    data: bytes
    when: float = field(default_factory=time.monotonic)
    tls: str = None  # TLS version of the session ("TLSv1.3"), None in clear
    login: str = None  # the AUTH user of the session, None without AUTH


def default_rcpt_rule(addr):
    """Local parts tempfail* get 451 4.3.0, permfail* get 550 5.1.1."""
    local = addr.rsplit("@", 1)[0].lower()
    if local.startswith("tempfail"):
        return "451 4.3.0 sink says try again later"
    if local.startswith("permfail"):
        return f"550 5.1.1 <{addr}>: no such user here (sink)"
    return None


class _SinkHandler:
    def __init__(self, sink):
        self.sink = sink

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        s = self.sink
        with s.lock:
            s.mail_attempts.append(address)
            reply = s.mail_reply
        if callable(reply):
            reply = reply(address)
        if reply and not reply.startswith("2"):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return reply or "250 2.1.0 sender ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        s = self.sink
        reply = s.rcpt_reply_for(address)
        with s.lock:
            s.rcpt_attempts.append((address, reply))
        if not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server, session, envelope):
        s = self.sink
        if s.data_delay:
            await asyncio.sleep(s.data_delay)
        reply = s.data_reply
        if callable(reply):
            reply = reply(envelope)
        if reply and not reply.startswith("2"):
            with s.lock:
                s.data_failures += 1
            return reply
        mail_from = envelope.mail_from
        if mail_from == "<>":
            mail_from = ""
        tx = Transaction(
            peer=session.peer,
            mail_from=mail_from,
            mail_options=list(envelope.mail_options),
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            tls=_session_tls(server),
            login=_session_login(session),
        )
        with s.lock:
            s.messages.append(tx)
        return reply or "250 2.0.0 sink accepted"


def _session_tls(server):
    """TLS version of an aiosmtpd session (STARTTLS or implicit), or None."""
    transport = getattr(server, "transport", None)
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    return obj.version() if obj is not None else None


def _session_login(session):
    data = getattr(session, "auth_data", None)
    if data is None or not getattr(session, "authenticated", False):
        return None
    login = getattr(data, "login", data)
    return login.decode() if isinstance(login, bytes) else str(login)


class _CountingSMTP(SMTP):
    def __init__(self, handler, sink, **kw):
        super().__init__(handler, **kw)
        self._sink = sink
        self._counted = False

    def connection_made(self, transport):
        self._sink._session_open()
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc):
        if self._counted:
            self._counted = False
            self._sink._session_close()
        super().connection_lost(exc)


class _SinkController(Controller):
    def __init__(self, sink, handler, **kw):
        self._sink = sink
        super().__init__(handler, **kw)

    def factory(self):
        return _CountingSMTP(self.handler, self._sink, **self.SMTP_kwargs)


class Sink:
    """An SMTP server that records every accepted transaction. Behaviour is
    changed by setting attributes, also mid-test:
      rcpt_replies  dict address(lowercase) -> reply line ("451 4.3.0 ...")
      rcpt_rule     callable(address) -> reply or None (default_rcpt_rule)
      mail_reply    None, a reply line, or callable(address)
      data_reply    None, a reply line, or callable(envelope)
      data_delay    seconds to wait before answering the final dot
    """

    def __init__(self, port=None, host="127.0.0.1", meter=None, **server_kw):
        """host: the (loopback) address to listen on; several sinks on
        distinct addresses may share one port (MX tests). meter: an optional
        SessionMeter that also counts this sink's sessions (a peak over
        several sinks). server_kw go to the aiosmtpd Controller: tls_context
        (STARTTLS), require_starttls, authenticator, auth_require_tls,
        ssl_context (implicit TLS)..."""
        self.lock = threading.Lock()
        self.host = host
        self.meter = meter
        self.port = port or free_port(host)
        self.messages = []
        self.mail_attempts = []
        self.rcpt_attempts = []
        self.data_failures = 0
        self.rcpt_replies = {}
        self.rcpt_rule = default_rcpt_rule
        self.mail_reply = None
        self.data_reply = None
        self.data_delay = 0.0
        self.sessions_open = 0
        self.sessions_peak = 0
        self.sessions_total = 0
        self.controller = _SinkController(
            self,
            _SinkHandler(self),
            hostname=host,
            port=self.port,
            server_hostname="sink.test",
            decode_data=False,
            enable_SMTPUTF8=True,
            data_size_limit=64 * 1024 * 1024,
            **server_kw,
        )

    def start(self):
        self.controller.start()
        # The controller opened one probe session of its own; forget it.
        wait_for(lambda: self.sessions_open == 0, 5, desc="sink probe session to close")
        with self.lock:
            self.sessions_peak = 0
            self.sessions_total = 0
        if self.meter is not None:
            self.meter.reset_peak()

    def stop(self):
        self.controller.stop()

    def _session_open(self):
        with self.lock:
            self.sessions_open += 1
            self.sessions_total += 1
            self.sessions_peak = max(self.sessions_peak, self.sessions_open)
        if self.meter is not None:
            self.meter.open()

    def _session_close(self):
        with self.lock:
            self.sessions_open -= 1
        if self.meter is not None:
            self.meter.close()

    def rcpt_reply_for(self, addr):
        with self.lock:
            reply = self.rcpt_replies.get(addr.lower())
            rule = self.rcpt_rule
        if reply is None and rule is not None:
            reply = rule(addr)
        return reply or "250 2.1.5 recipient ok"

    def accept_all(self):
        with self.lock:
            self.rcpt_replies = {}
            self.rcpt_rule = None
            self.mail_reply = None
            self.data_reply = None

    # -- queries

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def to(self, rcpt):
        """Accepted transactions that include rcpt."""
        rcpt = rcpt.lower()
        return [m for m in self.snapshot() if rcpt in (r.lower() for r in m.rcpt_tos)]

    def from_null_to(self, addr):
        """Messages from <> (DSNs) addressed to addr."""
        addr = addr.lower()
        return [
            m
            for m in self.snapshot()
            if m.mail_from == "" and addr in (r.lower() for r in m.rcpt_tos)
        ]

    def rcpt_attempt_count(self, rcpt):
        rcpt = rcpt.lower()
        with self.lock:
            return sum(1 for a, _ in self.rcpt_attempts if a.lower() == rcpt)

    def wait_to(self, rcpt, timeout=WAIT, count=1):
        return wait_for(
            lambda: (lambda ms: ms if len(ms) >= count else None)(self.to(rcpt)),
            timeout,
            desc=f"{count} message(s) to {rcpt} at the sink",
        )

    def wait_dsn(self, addr, timeout=WAIT):
        return wait_for(
            lambda: self.from_null_to(addr), timeout, desc=f"a DSN from <> to {addr} at the sink"
        )


# --------------------------------------------------------------------------
# Byte-exact SMTP client


@dataclass
class Reply:
    code: int
    lines: list  # text after "NNN-" / "NNN " of each line
    raw: bytes

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def enh(self):
        """Enhanced status code of the first line, or None."""
        if not self.lines:
            return None
        first = self.lines[0].split(" ", 1)[0]
        return first if ENH_RE.match(first) else None

    def __str__(self):
        return self.raw.decode("utf-8", "replace").rstrip()


class RawSMTP:
    """A client that sends exactly the bytes it is given."""

    def __init__(self, port, source=None, host="127.0.0.1", timeout=10.0 * SLOW):
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply from server in time; have %r" % self.buf[:200])
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no reply from server in time; have %r" % self.buf[:200])
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise EOFError("server closed the connection; have %r" % self.buf[:200])
        self.buf += chunk

    def read_line(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, timeout=None):
        """Read one complete (possibly multi-line) reply."""
        raw = b""
        lines = []
        code = None
        while True:
            ln = self.read_line(timeout)
            raw += ln + b"\r\n"
            m = re.match(rb"^(\d{3})([ -])(.*)$", ln)
            assert m, f"malformed reply line {ln!r}"
            c = int(m.group(1))
            assert code is None or c == code, f"code changed inside a reply: {raw!r}"
            code = c
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return Reply(code, lines, raw)

    def cmd(self, line, timeout=None):
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def greeting(self):
        r = self.reply()
        assert r.code == 220, f"greeting {r}"
        return r

    def ehlo(self, name="client.test"):
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, f"EHLO {r}"
        return r

    def wait_closed(self, timeout=None):
        """True when the server closes the connection before the deadline
        (any bytes it sends first are kept in buf)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while True:
                self._fill(deadline)
        except EOFError:
            return True
        except (TimeoutError, OSError):
            return self.eof


def ehlo_keywords(reply):
    """{KEYWORD: params} from an EHLO reply (first line is the greeting)."""
    out = {}
    for ln in reply.lines[1:]:
        parts = ln.split(None, 1)
        if parts:
            out[parts[0].upper()] = parts[1] if len(parts) > 1 else ""
    return out


def message(subject, body=b"hello\r\n", sender="sender@src.test", to="rcpt@example.org", extra=b""):
    """A small RFC 5322 message with CRLF line ends."""
    if isinstance(body, str):
        body = body.encode()
    return (
        b"From: " + sender.encode() + b"\r\n"
        b"To: " + to.encode() + b"\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + uid().encode() + b"@src.test>\r\n" + extra + b"\r\n" + body
    )


def split_received(data):
    """Split relayed data into (list of prepended Received header fields,
    the rest). Fields are unfolded strings."""
    fields = []
    rest = data
    while rest[:9].lower() == b"received:":
        end = 0
        while True:
            nl = rest.find(b"\r\n", end)
            assert nl >= 0, "unterminated Received header"
            end = nl + 2
            if rest[end : end + 1] not in (b" ", b"\t"):
                break
        fields.append(b" ".join(rest[:end].split()).decode("utf-8", "replace"))
        rest = rest[end:]
    return fields, rest


# --------------------------------------------------------------------------
# DSN parsing (RFC 3464)


def _unfold(v):
    return " ".join(str(v).split())


def parse_dsn(data):
    """(message, per-message fields, [per-recipient field blocks], parts)
    of a multipart/report DSN; asserts the RFC 3464 structure."""
    msg = email.message_from_bytes(data)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert (msg.get_param("report-type") or "").lower() == "delivery-status", msg["Content-Type"]
    parts = msg.get_payload()
    assert isinstance(parts, list) and len(parts) >= 2, "a report has at least two parts"
    assert parts[0].get_content_type() == "text/plain", parts[0].get_content_type()
    ds = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    assert len(ds) == 1, [p.get_content_type() for p in parts]
    assert parts[1] is ds[0], "message/delivery-status must be the second part"
    blocks = ds[0].get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, "per-message and per-recipient fields"
    return msg, blocks[0], blocks[1:], parts


def dsn_field(block, name):
    v = block.get(name)
    return None if v is None else _unfold(v)


def dsn_recipient_block(rcpt_blocks, addr):
    """The per-recipient block whose Final-Recipient is addr."""
    found = []
    for b in rcpt_blocks:
        fr = dsn_field(b, "Final-Recipient") or ""
        typ, _, val = fr.partition(";")
        if val.strip().lower() == addr.lower():
            assert typ.strip().lower() in ("rfc822", "utf-8"), fr
            found.append(b)
    assert len(found) == 1, f"one block for {addr}, have {[dsn_field(b, 'Final-Recipient') for b in rcpt_blocks]}"
    return found[0]


# --------------------------------------------------------------------------
# MX delivery: sinks on several loopback addresses, a real DNS server


class SessionMeter:
    """Counts open sessions over several sinks (Sink(meter=...)): the peak
    of their sum, for a global connection limit."""

    def __init__(self):
        self.lock = threading.Lock()
        self.current = 0
        self.peak = 0

    def open(self):
        with self.lock:
            self.current += 1
            self.peak = max(self.peak, self.current)

    def close(self):
        with self.lock:
            self.current -= 1

    def reset_peak(self):
        with self.lock:
            self.peak = self.current


def _bindable(host, port, kind):
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_on(hosts, udp=False, tries=100):
    """A port free for TCP (and UDP when udp) on every address of hosts a
    moment ago: several sinks on distinct loopback addresses share it, the
    way every MX host listens on port 25."""
    for _ in range(tries):
        port = free_port(hosts[0])
        if all(_bindable(h, port, socket.SOCK_STREAM) for h in hosts) and (
            not udp or all(_bindable(h, port, socket.SOCK_DGRAM) for h in hosts)
        ):
            return port
    raise AssertionError(f"no port free on all of {hosts}")


# DNS record types used by the tests
DNS_A, DNS_MX, DNS_TXT = 1, 15, 16
DNS_NOERROR, DNS_SERVFAIL, DNS_NXDOMAIN, DNS_REFUSED = 0, 2, 3, 5


def _dns_name(msg, off, depth=0):
    """(dotted name, offset after it) of a possibly compressed name."""
    labels = []
    end = None
    for _ in range(128):
        ln = msg[off]
        if ln == 0:
            off += 1
            break
        if ln & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((ln & 0x3F) << 8) | msg[off + 1]
            continue
        labels.append(msg[off + 1 : off + 1 + ln].decode("ascii", "replace"))
        off += 1 + ln
    else:
        raise ValueError("DNS name too long or looping")
    return ".".join(labels) + ".", (end if end is not None else off)


def dns_query(port, name, qtype, host="127.0.0.1", timeout=1.0):
    """One UDP query; returns (rcode, [(type, ttl, value)]) for the answer
    section. Values: A -> "1.2.3.4", MX -> (pref, "host."), TXT -> [bytes],
    others -> raw rdata. Raises OSError/TimeoutError when nobody answers."""
    tid = int.from_bytes(os.urandom(2), "big")
    qname = b"".join(bytes([len(lb)]) + lb.encode() for lb in name.rstrip(".").split(".") if lb)
    pkt = (
        tid.to_bytes(2, "big")
        + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + qname
        + b"\x00"
        + qtype.to_bytes(2, "big")
        + b"\x00\x01"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(pkt)
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = s.recv(4096)
            except socket.timeout:
                raise TimeoutError(f"no DNS answer from {host}:{port}")
            if len(msg) >= 12 and int.from_bytes(msg[:2], "big") == tid:
                break
    rcode = msg[3] & 0x0F
    qd = int.from_bytes(msg[4:6], "big")
    an = int.from_bytes(msg[6:8], "big")
    off = 12
    for _ in range(qd):
        _, off = _dns_name(msg, off)
        off += 4
    answers = []
    for _ in range(an):
        _, off = _dns_name(msg, off)
        typ = int.from_bytes(msg[off : off + 2], "big")
        ttl = int.from_bytes(msg[off + 4 : off + 8], "big")
        rdlen = int.from_bytes(msg[off + 8 : off + 10], "big")
        rd = off + 10
        rdata = msg[rd : rd + rdlen]
        if typ == DNS_A and rdlen == 4:
            val = socket.inet_ntoa(rdata)
        elif typ == DNS_MX:
            val = (int.from_bytes(rdata[:2], "big"), _dns_name(msg, rd + 2)[0])
        elif typ == DNS_TXT:
            val, i = [], 0
            while i < len(rdata):
                val.append(rdata[i + 1 : i + 1 + rdata[i]])
                i += 1 + rdata[i]
        else:
            val = rdata
        answers.append((typ, ttl, val))
        off = rd + rdlen
    return rcode, answers


class Dnsmasq:
    """dnsmasq on 127.0.0.1:port serving only what the test declares, under
    .test (anything else under .test is NXDOMAIN, other names are REFUSED).
    Records are added before start() (or before restart(), to change them);
    stop() takes the server away mid-test (DNS down). TTLs are 0, so a
    restarted server's records are seen at once."""

    READY_NAME = "dnsmasq-ready.test"

    def __init__(self, workdir, port=None):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = port or free_port_on(["127.0.0.1"], udp=True)
        self.log_path = os.path.join(workdir, "dnsmasq.log")
        self.proc = None
        self.clear()

    # -- records

    def clear(self):
        self.args = [f"--host-record={self.READY_NAME},127.0.0.1"]

    def mx(self, domain, host, pref=10):
        self.args.append(f"--mx-host={domain},{host},{pref}")
        return self

    def null_mx(self, domain):
        """RFC 7505: the single record "0 ." ("." as the target)."""
        self.args.append(f"--mx-host={domain},.,0")
        return self

    def a(self, name, addr):
        self.args.append(f"--host-record={name},{addr}")
        return self

    def txt(self, name, text):
        self.args.append(f"--txt-record={name},{text}")
        return self

    def mx_host(self, domain, host, addr, pref=10):
        """An MX record and the A record of its target."""
        self.mx(domain, host, pref)
        return self.a(host, addr)

    # -- process

    def argv(self):
        return [
            "dnsmasq",
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            f"--pid-file={os.path.join(self.workdir, 'dnsmasq.pid')}",
            "--local=/test/",
            "--local-ttl=0",
            "--log-queries",
            "--log-facility=-",
            *self.args,
        ]

    def start(self, timeout=10.0):
        assert not self.running(), "dnsmasq already running"
        with open(self.log_path, "ab") as log:
            log.write(b"=== dnsmasq start ===\n")
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                raise AssertionError(f"dnsmasq exited with {rc}:\n{self.log_tail()}")
            try:
                rcode, ans = dns_query(self.port, self.READY_NAME, DNS_A, timeout=0.2)
                if rcode == DNS_NOERROR and ans:
                    return self
            except (OSError, TimeoutError):
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(f"dnsmasq not answering in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def query(self, name, qtype):
        return dns_query(self.port, name, qtype)

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "\n".join(f.read().splitlines()[-n:])
        except OSError:
            return ""


def reject_count(port, reason):
    """tern_smtp_rejects_total{reason=...} on metrics_listen 127.0.0.1:port."""
    import re
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5 * SLOW) as r:
        text = r.read().decode()
    m = re.search(r'^tern_smtp_rejects_total\{reason="%s"\} (\d+)$' % reason, text, re.M)
    return int(m.group(1)) if m else 0
