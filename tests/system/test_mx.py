"""Direct delivery by MX: a real DNS server (dnsmasq on a loopback
port, .test names only) and sinks on distinct loopback addresses that all
listen on delivery_port, the way every MX host listens on port 25.

Addresses: 127.0.0.2 is src.test's MX (where DSNs to senders go), the MX
hosts of the domains under test are 127.0.0.3 and up. A host "down" is an
address where no sink was started (connection refused at once)."""

import json
import re
import socket
import threading
import time

import pytest

from sysutil import (
    SLOW,
    WAIT,
    SessionMeter,
    dsn_field,
    dsn_recipient_block,
    free_port_on,
    holds_for,
    message,
    parse_dsn,
    split_received,
    uid,
    wait_for,
)

ADDRS = [f"127.0.0.{i}" for i in range(2, 10)]
DSN_ADDR = "127.0.0.2"
PROMPT = 5.0 * SLOW  # "promptly": a permanent DNS failure is bounced within this


class MX:
    """One test's world: DNS records, sinks on ADDRS at one port, ternd
    delivering by MX through that DNS server."""

    def __init__(self, dnsmasq, make_sink, make_tern):
        self.dns = dnsmasq
        self._make_sink = make_sink
        self._make_tern = make_tern
        self.port = free_port_on(ADDRS)
        # The senders' domain, so that DSNs have somewhere to go.
        self.dns.mx_host("src.test", "mx.src.test", DSN_ADDR)

    def sink(self, addr, port=None, meter=None):
        return self._make_sink(addr, port or self.port, meter)

    def dsn_sink(self):
        return self.sink(DSN_ADDR)

    def tern(self, **settings):
        conf = {
            "smarthost": None,  # deliver by MX
            "dns_resolvers": f"127.0.0.1:{self.dns.port}",
            "delivery_port": self.port,
            "connect_timeout": "2s",
            "ip_family": "ipv4",
        }
        conf.update(settings)
        return self._make_tern(**conf)


@pytest.fixture
def mx(dnsmasq, make_sink, make_tern):
    return MX(dnsmasq, make_sink, make_tern)


def send_each(tern, sender, rcpts, tag):
    """One transaction per recipient; returns the rcpts."""
    for i, r in enumerate(rcpts):
        tern.send(sender, [r], message(f"{tag} {i}", sender=sender, to=r))
    return rcpts


def delivered_to(sinks):
    """Every recipient accepted over all sinks (with repeats)."""
    return [r.lower() for s in sinks for m in s.snapshot() for r in m.rcpt_tos]


def wait_all(sinks, rcpts, timeout=WAIT):
    want = sorted(r.lower() for r in rcpts)

    def done():
        got = [r for r in delivered_to(sinks) if r in want]
        return len(got) >= len(want)

    wait_for(done, timeout, desc=f"{len(want)} recipients at the sinks")
    got = sorted(r for r in delivered_to(sinks) if r in want)
    assert got == want, f"each recipient exactly once: missing/dup {set(want) ^ set(got)}"


def qids_of(tern, sender, n):
    def got():
        rs = tern.events("received", **{"from": sender})
        return rs if len(rs) >= n else None

    return [r["qid"] for r in wait_for(got, desc=f"{n} received lines from {sender}")]


def dsn_status(tx, rcpt):
    """(Status, Diagnostic-Code) of rcpt's block in a DSN transaction."""
    _, body = split_received(tx.data)
    _, _, per_rcpt, _ = parse_dsn(body)
    blk = dsn_recipient_block(per_rcpt, rcpt)
    assert (dsn_field(blk, "Action") or "").lower() == "failed", blk
    return (dsn_field(blk, "Status") or "").split()[0], dsn_field(blk, "Diagnostic-Code") or ""


# --------------------------------------------------------------------------
# The DNS server itself (the fixture must serve what the tests rely on)


def test_dnsmasq_serves_the_records(dnsmasq):
    dnsmasq.mx_host("a.test", "mx1.a.test", "127.0.0.3", 10)
    dnsmasq.mx("a.test", "mx2.a.test", 20)
    dnsmasq.null_mx("null.test")
    dnsmasq.a("imp.test", "127.0.0.4")
    dnsmasq.start()
    rc, ans = dnsmasq.query("a.test", 15)
    assert rc == 0 and sorted(v for t, _, v in ans if t == 15) == [
        (10, "mx1.a.test."),
        (20, "mx2.a.test."),
    ]
    assert dnsmasq.query("mx1.a.test", 1) == (0, [(1, 0, "127.0.0.3")])
    assert dnsmasq.query("null.test", 15) == (0, [(15, 0, (0, "."))]), "RFC 7505 null MX"
    assert dnsmasq.query("imp.test", 15) == (0, []), "no MX: NOERROR, no data"
    assert dnsmasq.query("nx.test", 15)[0] == 3, "NXDOMAIN"
    dnsmasq.stop()
    with pytest.raises((OSError, TimeoutError)):
        dnsmasq.query("a.test", 15)
    dnsmasq.clear()
    dnsmasq.a("b.test", "127.0.0.5")
    dnsmasq.restart()
    assert dnsmasq.query("b.test", 1) == (0, [(1, 0, "127.0.0.5")])
    assert dnsmasq.query("a.test", 15)[0] == 3, "the restart dropped the old records"


# --------------------------------------------------------------------------
# MX selection


def test_preferred_mx_gets_the_mail(mx):
    mx.dns.mx_host("pref.test", "mx1.pref.test", "127.0.0.3", 10)
    mx.dns.mx_host("pref.test", "mx2.pref.test", "127.0.0.4", 20)
    mx.dns.start()
    s1, s2 = mx.sink("127.0.0.3"), mx.sink("127.0.0.4")
    tern = mx.tern()
    u = uid()
    rcpts = send_each(tern, f"p-{u}@src.test", [f"r{i}-{u}@pref.test" for i in range(4)], "pref")
    wait_all([s1], rcpts)
    assert s2.snapshot() == [], "the less preferred MX got mail while the preferred one was up"
    assert tern.events("deferred") == []
    for tx in s1.snapshot():
        assert tx.mail_from == f"p-{u}@src.test"


def test_preferred_mx_down_next_one(mx):
    mx.dns.mx_host("pref.test", "mx1.pref.test", "127.0.0.3", 10)  # nothing listens
    mx.dns.mx_host("pref.test", "mx2.pref.test", "127.0.0.4", 20)
    mx.dns.start()
    s2 = mx.sink("127.0.0.4")
    tern = mx.tern()
    u = uid()
    sender = f"pd-{u}@src.test"
    rcpts = send_each(tern, sender, [f"r{i}-{u}@pref.test" for i in range(3)], "pref down")
    wait_all([s2], rcpts)
    # failover happens inside one attempt: nothing was deferred
    assert tern.events("deferred") == [], [r["_raw"] for r in tern.events("deferred")]
    for q in qids_of(tern, sender, 3):
        d = tern.wait_event("delivered", qid=q)
        relay = str(d.get("relay"))
        assert "127.0.0.4" in relay or "mx2.pref.test" in relay, d["_raw"]


def test_mx_target_without_address_next_one(mx):
    # the preferred MX names a host that does not exist: use the next MX
    mx.dns.mx("ghost.test", "nohost.ghost.test", 10)
    mx.dns.mx_host("ghost.test", "mx2.ghost.test", "127.0.0.4", 20)
    mx.dns.start()
    s2 = mx.sink("127.0.0.4")
    tern = mx.tern()
    u = uid()
    rcpts = send_each(tern, f"g-{u}@src.test", [f"r-{u}@ghost.test"], "ghost")
    wait_all([s2], rcpts)


def test_equal_preference_spreads(mx):
    mx.dns.mx_host("eq.test", "mxa.eq.test", "127.0.0.3", 10)
    mx.dns.mx_host("eq.test", "mxb.eq.test", "127.0.0.4", 10)
    mx.dns.start()
    sa, sb = mx.sink("127.0.0.3"), mx.sink("127.0.0.4")
    # one message per connection, so that each is a fresh choice of MX
    tern = mx.tern(delivery_max_msgs_per_conn=1)
    u = uid()
    rcpts = send_each(tern, f"eq-{u}@src.test", [f"r{i}-{u}@eq.test" for i in range(20)], "eq")
    wait_all([sa, sb], rcpts)
    na, nb = len(sa.snapshot()), len(sb.snapshot())
    # a fair shuffle puts all 20 on one host with probability 2^-19
    assert na >= 1 and nb >= 1, f"equal-preference MX hosts not shuffled: {na} / {nb}"


def test_implicit_mx(mx):
    mx.dns.a("imp.test", "127.0.0.3")  # no MX record: the domain's own address
    mx.dns.start()
    s = mx.sink("127.0.0.3")
    tern = mx.tern()
    u = uid()
    rcpts = send_each(tern, f"i-{u}@src.test", [f"r-{u}@imp.test"], "implicit")
    wait_all([s], rcpts)


# --------------------------------------------------------------------------
# Permanent and temporary DNS failures


def test_null_mx_prompt_dsn(mx):
    mx.dns.null_mx("null.test")
    mx.dns.mx_host("good.test", "mx.good.test", "127.0.0.3")
    mx.dns.start()
    dsn_sink, good = mx.dsn_sink(), mx.sink("127.0.0.3")
    tern = mx.tern()
    u = uid()
    sender = f"n-{u}@src.test"
    bad, ok = f"nobody-{u}@null.test", f"ok-{u}@good.test"
    t0 = time.monotonic()
    tern.send(sender, [bad, ok], message(f"null mx {u}", sender=sender))
    qid = tern.qid_of(sender)
    dsn = dsn_sink.wait_dsn(sender, timeout=PROMPT)
    took = time.monotonic() - t0
    assert took < PROMPT, f"null MX bounce took {took:.1f}s"
    assert len(dsn) == 1 and dsn[0].mail_from == ""
    status, diag = dsn_status(dsn[0], bad)
    assert status == "5.1.10", (status, diag)
    b = tern.wait_event("bounced", qid=qid, to=bad)
    assert str(b.get("reason")).startswith("556 5.1.10"), b["_raw"]
    assert tern.events("deferred", qid=qid) == [], "a null MX is not retried"
    # only the null-MX recipient is reported; the other one is delivered
    _, body = split_received(dsn[0].data)
    for blk in parse_dsn(body)[2]:
        assert ok not in (dsn_field(blk, "Final-Recipient") or "")
    wait_all([good], [ok])
    wait_for(lambda: tern.queued() == [], desc="queue empty")
    assert len(dsn_sink.from_null_to(sender)) == 1


def test_nxdomain_dsn(mx):
    mx.dns.start()
    dsn_sink = mx.dsn_sink()
    tern = mx.tern()
    u = uid()
    sender = f"nx-{u}@src.test"
    bad = f"x-{u}@nx-{u}.test"
    t0 = time.monotonic()
    tern.send(sender, [bad], message(f"nxdomain {u}", sender=sender))
    qid = tern.qid_of(sender)
    dsn = dsn_sink.wait_dsn(sender, timeout=PROMPT)
    assert time.monotonic() - t0 < PROMPT
    status, diag = dsn_status(dsn[0], bad)
    assert status == "5.1.2", (status, diag)
    b = tern.wait_event("bounced", qid=qid, to=bad)
    assert "5.1.2" in str(b.get("reason")), b["_raw"]
    assert tern.events("deferred", qid=qid) == []
    wait_for(lambda: tern.queued() == [], desc="queue empty")


def test_dns_down_defers_then_delivers(mx):
    mx.dns.mx_host("d1.test", "mx.d1.test", "127.0.0.3")
    mx.dns.mx_host("d2.test", "mx.d2.test", "127.0.0.3")
    mx.dns.start()
    s = mx.sink("127.0.0.3")
    dsn_sink = mx.dsn_sink()
    tern = mx.tern()
    u = uid()
    # the whole path works while DNS is up
    send_each(tern, f"up-{u}@src.test", [f"a-{u}@d1.test"], "dns up")
    wait_all([s], [f"a-{u}@d1.test"])
    # DNS goes away: a new domain (nothing cached) is deferred, not bounced
    mx.dns.stop()
    sender, rcpt = f"down-{u}@src.test", f"b-{u}@d2.test"
    tern.send(sender, [rcpt], message(f"dns down {u}", sender=sender))
    qid = tern.qid_of(sender)
    d = tern.wait_event("deferred", qid=qid)
    assert d.get("to") == rcpt, d["_raw"]
    assert re.match(r"^4\d\d\b", str(d.get("reason"))), d["_raw"]
    # it keeps being retried (retry_initial 1s), never bounced
    wait_for(lambda: len(tern.events("deferred", qid=qid)) >= 2, desc="a second deferral")
    assert tern.events("bounced", qid=qid) == []
    assert qid in tern.queued()
    assert s.to(rcpt) == []
    # DNS is back: a flush delivers it
    mx.dns.start()
    tern.ctl("queue", "flush")
    tern.wait_event("delivered", qid=qid, timeout=PROMPT)
    wait_all([s], [rcpt])
    wait_for(lambda: qid not in tern.queued(), desc="queue file removed")
    assert dsn_sink.from_null_to(sender) == [] or all(
        "delayed" in m.data.decode(errors="replace").lower() for m in dsn_sink.from_null_to(sender)
    ), "no failure DSN for a message that was delivered"


# --------------------------------------------------------------------------
# Grouping and limits


def test_one_transaction_per_destination(mx):
    doms = {"a.test": "127.0.0.3", "b.test": "127.0.0.4", "c.test": "127.0.0.5"}
    for d, addr in doms.items():
        mx.dns.mx_host(d, f"mx.{d}", addr)
    mx.dns.start()
    sinks = {d: mx.sink(addr) for d, addr in doms.items()}
    tern = mx.tern()
    u = uid()
    rcpts = {
        "a.test": [f"a1-{u}@a.test", f"a2-{u}@a.test"],
        "b.test": [f"b1-{u}@b.test"],
        "c.test": [f"c1-{u}@c.test", f"c2-{u}@c.test", f"c3-{u}@c.test"],
    }
    order = [rcpts["c.test"][0], rcpts["a.test"][0], rcpts["b.test"][0], rcpts["c.test"][1]]
    order += [rcpts["a.test"][1], rcpts["c.test"][2]]  # domains interleaved
    sender = f"split-{u}@src.test"
    data = message(f"split {u}", sender=sender)
    tern.send(sender, order, data)
    for d, s in sinks.items():
        wait_all([s], rcpts[d])
    for d, s in sinks.items():
        txs = s.snapshot()
        assert len(txs) == 1, f"{d}: {len(txs)} transactions, want one"
        assert sorted(r.lower() for r in txs[0].rcpt_tos) == sorted(rcpts[d])
        assert txs[0].mail_from == sender
        assert split_received(txs[0].data)[1] == data


def test_max_rcpts_per_txn(mx):
    mx.dns.mx_host("many.test", "mx.many.test", "127.0.0.3")
    mx.dns.start()
    s = mx.sink("127.0.0.3")
    tern = mx.tern(max_rcpts_per_txn=2)
    u = uid()
    rcpts = [f"m{i}-{u}@many.test" for i in range(5)]
    sender = f"mr-{u}@src.test"
    tern.send(sender, rcpts, message(f"many {u}", sender=sender))
    wait_all([s], rcpts)
    sizes = sorted(len(tx.rcpt_tos) for tx in s.snapshot())
    assert sizes == [1, 2, 2], sizes


def test_per_destination_concurrency(mx):
    mx.dns.mx_host("c1.test", "mx.c1.test", "127.0.0.3")
    mx.dns.mx_host("c2.test", "mx.c2.test", "127.0.0.4")
    mx.dns.start()
    meter = SessionMeter()
    s1 = mx.sink("127.0.0.3", meter=meter)
    s2 = mx.sink("127.0.0.4", meter=meter)
    s1.data_delay = s2.data_delay = 0.3
    tern = mx.tern(delivery_concurrency=2)
    u = uid()
    sender = f"cc-{u}@src.test"
    r1 = [f"x{i}-{u}@c1.test" for i in range(10)]
    r2 = [f"y{i}-{u}@c2.test" for i in range(10)]
    send_each(tern, sender, [r for pair in zip(r1, r2) for r in pair], "conc")
    wait_all([s1], r1)
    wait_all([s2], r2)
    assert s1.sessions_peak <= 2 and s2.sessions_peak <= 2, (s1.sessions_peak, s2.sessions_peak)
    # the limit is per destination: both were used to the full, at once
    assert s1.sessions_peak == 2 and s2.sessions_peak == 2, (s1.sessions_peak, s2.sessions_peak)
    assert meter.peak > 2, f"the two domains never delivered in parallel (peak {meter.peak})"


def test_global_connection_limit(mx):
    doms = {"g1.test": "127.0.0.3", "g2.test": "127.0.0.4", "g3.test": "127.0.0.5"}
    for d, addr in doms.items():
        mx.dns.mx_host(d, f"mx.{d}", addr)
    mx.dns.start()
    meter = SessionMeter()
    sinks = [mx.sink(addr, meter=meter) for addr in doms.values()]
    for s in sinks:
        s.data_delay = 0.3
    tern = mx.tern(delivery_concurrency=10, max_connections=3)
    u = uid()
    rcpts = [f"z{i}-{u}@{d}" for i in range(6) for d in doms]
    send_each(tern, f"gl-{u}@src.test", rcpts, "global")
    wait_all(sinks, rcpts)
    assert meter.peak <= 3, f"max_connections=3 but {meter.peak} sessions at once"


# --------------------------------------------------------------------------
# Routing


def test_route_literal_wins_over_mx(mx):
    mx.dns.mx_host("rt.test", "mx.rt.test", "127.0.0.3")
    mx.dns.mx_host("sub.rt.test", "mx.sub.rt.test", "127.0.0.3")
    mx.dns.start()
    by_mx = mx.sink("127.0.0.3")
    p2 = free_port_on(["127.0.0.5"])
    routed = mx.sink("127.0.0.5", port=p2)
    tern = mx.tern(routes=f"rt.test=[127.0.0.5]:{p2}")
    u = uid()
    a, b = f"a-{u}@rt.test", f"b-{u}@sub.rt.test"
    sender = f"rl-{u}@src.test"
    tern.send(sender, [a, b], message(f"route {u}", sender=sender))
    wait_all([routed], [a])
    # "rt.test" matches that domain only; its subdomain goes by its MX
    wait_all([by_mx], [b])
    assert by_mx.to(a) == [] and routed.to(b) == []


def test_route_via_mx_of_named_host(mx):
    mx.dns.mx_host("relay.test", "mx.relay.test", "127.0.0.6")
    mx.dns.mx_host("relay2.test", "mx.relay2.test", "127.0.0.7")
    mx.dns.mx_host("a.rn.test", "mx.a.rn.test", "127.0.0.3")
    mx.dns.mx_host("rn.test", "mx.rn.test", "127.0.0.4")
    mx.dns.mx_host("ported.test", "mx.ported.test", "127.0.0.3")
    mx.dns.start()
    sub_mx, parent_mx = mx.sink("127.0.0.3"), mx.sink("127.0.0.4")
    relay = mx.sink("127.0.0.6")
    p2 = free_port_on(["127.0.0.7"])
    relay2 = mx.sink("127.0.0.7", port=p2)
    tern = mx.tern(routes=f".rn.test=relay.test ported.test=relay2.test:{p2}")
    u = uid()
    sub, parent, ported = f"s-{u}@a.rn.test", f"p-{u}@rn.test", f"q-{u}@ported.test"
    sender = f"rm-{u}@src.test"
    tern.send(sender, [sub, parent, ported], message(f"route mx {u}", sender=sender))
    # ".rn.test" covers subdomains (via relay.test's MX at delivery_port)...
    wait_all([relay], [sub])
    # ...but not rn.test itself, which goes by its own MX
    wait_all([parent_mx], [parent])
    # host:port: relay2.test's MX, at that port
    wait_all([relay2], [ported])
    assert sub_mx.snapshot() == [], "a routed domain was delivered by its own MX"


def test_route_failover(mx):
    mx.dns.start()
    s6 = mx.sink("127.0.0.6")  # 127.0.0.5 is down
    tern = mx.tern(routes=f"fo.test=[127.0.0.5]:{mx.port},[127.0.0.6]:{mx.port}")
    u = uid()
    rcpts = send_each(tern, f"rf-{u}@src.test", [f"r{i}-{u}@fo.test" for i in range(2)], "rfo")
    wait_all([s6], rcpts)
    assert tern.events("deferred") == []


def test_sender_routes_and_precedence(mx):
    mx.dns.mx_host("dom.test", "mx.dom.test", "127.0.0.3")
    mx.dns.start()
    by_mx = mx.sink("127.0.0.3")
    routed = mx.sink("127.0.0.5")
    smarthost = mx.sink("127.0.0.7")
    by_sender = mx.sink("127.0.0.9")
    u = uid()
    plain = mx.tern()
    # without the sender route, mail from own.test goes by MX
    plain.send(f"s0-{u}@own.test", [f"t0-{u}@dom.test"], message("mx", sender=f"s0-{u}@own.test"))
    wait_all([by_mx], [f"t0-{u}@dom.test"])
    plain.stop()
    tern = mx.tern(
        sender_routes=f"own.test=[127.0.0.9]:{mx.port}",
        routes=f"rt.test=[127.0.0.5]:{mx.port}",
        smarthost=f"[127.0.0.7]:{mx.port}",
    )
    cases = [
        (f"s1-{u}@own.test", f"t1-{u}@dom.test", by_sender),  # sender_routes > smarthost
        (f"s2-{u}@other.test", f"t2-{u}@dom.test", smarthost),  # smarthost > MX
        (f"s3-{u}@own.test", f"t3-{u}@rt.test", routed),  # routes > sender_routes
    ]
    for sender, rcpt, _ in cases:
        tern.send(sender, [rcpt], message("prec", sender=sender, to=rcpt))
    for sender, rcpt, want in cases:
        wait_all([want], [rcpt])
        for other in (by_mx, routed, smarthost, by_sender):
            if other is not want:
                assert other.to(rcpt) == [], f"{rcpt} from {sender} also at {other.host}"


def test_smarthost_list_first_one_used(mx):
    s6, s7 = mx.sink("127.0.0.6"), mx.sink("127.0.0.7")
    tern = mx.tern(smarthost=f"[127.0.0.6]:{mx.port} [127.0.0.7]:{mx.port}")
    u = uid()
    rcpts = send_each(tern, f"sh-{u}@src.test", [f"r{i}-{u}@any.test" for i in range(3)], "sh")
    wait_all([s6], rcpts)
    assert s7.snapshot() == []


def test_smarthost_failover(mx):
    p7 = free_port_on(["127.0.0.7"])
    s7 = mx.sink("127.0.0.7", port=p7)  # 127.0.0.6 is down
    tern = mx.tern(smarthost=f"[127.0.0.6]:{mx.port} [127.0.0.7]:{p7}")
    u = uid()
    rcpts = send_each(tern, f"sf-{u}@src.test", [f"r{i}-{u}@any.test" for i in range(3)], "sfo")
    wait_all([s7], rcpts)
    assert tern.events("deferred") == [], "failover happens inside one attempt"


# --------------------------------------------------------------------------
# Operator view


class FailingHost:
    """A listener that answers every connection with a 421 greeting and
    closes it: an MX host that is up but refuses service. Counts the
    connections, which a refused connect() cannot show."""

    def __init__(self, addr, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.accepted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            try:
                c.sendall(b"421 4.3.2 failing host, go away\r\n")
            except OSError:
                pass
            c.close()

    def stop(self):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def failing_host():
    made = []

    def make(addr, port):
        h = FailingHost(addr, port)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def test_failing_destination_backed_off_as_whole(mx, failing_host):
    mx.dns.mx_host("bad.test", "mx.bad.test", "127.0.0.3")
    mx.dns.mx_host("fine.test", "mx.fine.test", "127.0.0.4")
    mx.dns.start()
    bad = failing_host("127.0.0.3", mx.port)
    fine = mx.sink("127.0.0.4")
    tern = mx.tern(retry_initial="1m", retry_max="1h")
    u = uid()
    s1 = f"b1-{u}@src.test"
    tern.send(s1, [f"x-{u}@bad.test"], message("first", sender=s1))
    q1 = tern.qid_of(s1)
    d = tern.wait_event("deferred", qid=q1)
    assert "421" in str(d.get("reason")) or "4.3.2" in str(d.get("reason")), d["_raw"]
    tried = bad.accepted
    assert tried >= 1
    # more mail for the failing destination waits for its backoff; mail for
    # another destination is not held up by it
    more = [f"y{i}-{u}@bad.test" for i in range(4)]
    send_each(tern, f"b2-{u}@src.test", more, "more")
    t0 = time.monotonic()
    send_each(tern, f"b3-{u}@src.test", [f"z-{u}@fine.test"], "fine")
    wait_all([fine], [f"z-{u}@fine.test"], timeout=PROMPT)
    assert time.monotonic() - t0 < PROMPT
    assert holds_for(lambda: bad.accepted == tried, 2.0), (
        f"{bad.accepted - tried} new connections to a destination in backoff"
    )
    # a flush retries it at once
    tern.ctl("queue", "flush")
    wait_for(lambda: bad.accepted > tried, PROMPT, desc="a connection after the flush")


def summary_rows(tern):
    p = tern.ctl("queue", "summary", "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(ln) for ln in p.stdout.decode().splitlines() if ln.strip()]
    return {r["destination"]: r for r in rows}


def test_queue_summary_shows_destination_error(mx):
    mx.dns.mx_host("down.test", "mx.down.test", "127.0.0.3")  # nothing listens
    mx.dns.mx_host("up.test", "mx.up.test", "127.0.0.4")
    mx.dns.start()
    up = mx.sink("127.0.0.4")
    tern = mx.tern(retry_initial="1m", retry_max="1h")
    u = uid()
    s1, s2 = f"q1-{u}@src.test", f"q2-{u}@src.test"
    tern.send(s1, [f"a-{u}@down.test", f"b-{u}@down.test"], message("q1", sender=s1))
    q1 = tern.qid_of(s1)
    tern.wait_event("deferred", qid=q1)
    # (the destination may now be backed off: q2's down.test recipient may
    # wait without an attempt of its own)
    tern.send(s2, [f"c-{u}@down.test", f"d-{u}@up.test"], message("q2", sender=s2))
    wait_all([up], [f"d-{u}@up.test"])
    def with_error():
        r = summary_rows(tern)
        return r if r.get("mx:down.test", {}).get("last_error") else None

    rows = wait_for(with_error, desc="summary row mx:down.test with its last error")
    down = rows["mx:down.test"]
    assert down["messages"] == 2 and down["recipients"] == 3, down
    assert abs(down["oldest"] - time.time()) < 120, down
    assert "mx:up.test" not in rows, rows
    # the text form names the destination and its error too
    p = tern.ctl("queue", "summary")
    assert p.returncode == 0
    line = [ln for ln in p.stdout.decode().splitlines() if "mx:down.test" in ln]
    assert len(line) == 1, p.stdout
    assert down["last_error"][:20] in line[0], (line, down)
