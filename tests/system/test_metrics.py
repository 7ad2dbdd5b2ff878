"""/metrics end to end: mail through ternd to the sink with one delivery,
one deferral, one bounce (whose DSN is delivered too), one relay-denied
RCPT, one failed AUTH, one message too big and one unknown command; the scrape is read with a strict parser of the
Prometheus text format (0.0.4) and every count is checked."""

import base64
import json
import re
import urllib.request

from sysutil import SLOW, RawSMTP, free_port, message, wait_for
from test_tls_auth import PASSWORD, add_user

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(
    rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? (-?[0-9]+(?:\.[0-9]+)?|\+Inf|NaN)$"
)
ONE_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def unescape(v):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def parse(text):
    """{(name, frozenset(labels)): value} and {family: type}; asserts that
    the text is valid: HELP then TYPE once per family before its samples,
    every sample line well formed, label values escaped."""
    assert text.endswith("\n")
    types, helps, samples = {}, set(), {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name) and name not in helps, line
            helps.add(name)
            current = name
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert name == current and name not in types and typ in TYPES, line
            types[name] = typ
            continue
        m = SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        family = name
        if types.get(current) == "histogram":
            family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert family == current and current in types, f"{line!r} outside its family"
        lab = frozenset((k, unescape(v)) for k, v in ONE_LABEL.findall(labels))
        key = (name, lab)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)
    return samples, types


def scrape(port):
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5 * SLOW) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(r.read().decode())


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def with_labels(samples, name):
    return {lab: v for (n, lab), v in samples.items() if n == name}


def test_metrics_count_what_happened(make_tern, sink, tmp_path):
    port = free_port()
    t = make_tern(
        start=False,
        metrics_listen=f"127.0.0.1:{port}",
        retry_initial="1h",
        retry_max="1h",
        auth_users_file=tmp_path / "users",
        auth_allow_plaintext_loopback="yes",
        auth_failure_delay="0s",
    )
    add_user(t, "alice", PASSWORD)
    t.start()
    before, _ = scrape(port)  # the start-up's readiness probe connected already
    conns = value(before, "tern_smtp_connections_total")

    t.send("sender@src.test", ["ok@dest.test"], message("delivered"))
    t.send("sender@src.test", ["tempfail@dest.test"], message("deferred"))
    t.send("sender@src.test", ["permfail@dest.test"], message("bounced"))
    sink.wait_to("ok@dest.test")
    sink.wait_dsn("sender@src.test")
    t.wait_event("deferred")

    # A client outside relay_networks may not relay.
    c = RawSMTP(t.port, source="127.0.0.2")
    c.greeting()
    c.cmd("EHLO outside.test")
    assert c.cmd("MAIL FROM:<a@outside.test>").code == 250
    r = c.cmd("RCPT TO:<b@elsewhere.test>")
    assert (r.code, r.enh) == (554, "5.7.1"), r
    c.close()
    # Too big, and a command that does not exist.
    c = RawSMTP(t.port)
    c.greeting()
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@src.test> SIZE=999999999999").code == 552
    assert c.cmd("FROB").code == 500
    c.close()
    # A wrong password.
    c = RawSMTP(t.port)
    c.greeting()
    c.cmd("EHLO client.test")
    token = base64.b64encode(b"\0alice\0not it").decode()
    r = c.cmd(f"AUTH PLAIN {token}")
    assert r.code == 535, r
    c.close()

    def settled():
        s, _ = scrape(port)
        return (
            value(s, "tern_messages_delivered_total") == 2
            and value(s, "tern_smtp_auth_failures_total") == 1
            and value(s, "tern_smtp_sessions") == 0
        )

    wait_for(settled, desc="the DSN delivered and the sessions gone")
    s, types = scrape(port)

    # The contract's series, counting messages.
    assert value(s, "tern_messages_received_total") == 3
    assert value(s, "tern_messages_delivered_total") == 2  # ok@ and the DSN
    assert value(s, "tern_messages_deferred_total") == 1
    assert value(s, "tern_messages_bounced_total") == 1
    assert value(s, "tern_queue_messages") == 1
    assert types["tern_queue_messages"] == "gauge"
    for n in ("received", "delivered", "deferred", "bounced"):
        assert types[f"tern_messages_{n}_total"] == "counter"
    # Recipients.
    assert value(s, "tern_recipients_delivered_total") == 2
    assert value(s, "tern_recipients_deferred_total") == 1
    assert value(s, "tern_recipients_bounced_total") == 1
    assert value(s, "tern_recipients_expired_total") == 0
    assert value(s, "tern_queue_recipients") == 1
    assert value(s, "tern_queue_oldest_message_age_seconds") >= 0
    # By result and TLS state (smarthost_tls = none).
    assert value(s, "tern_deliveries_total", result="delivered", tls="none") == 2
    assert value(s, "tern_deliveries_total", result="delivered", tls="tls") == 0
    assert value(s, "tern_deliveries_total", result="deferred", tls="none") == 1
    assert value(s, "tern_deliveries_total", result="bounced", tls="none") == 1
    # Per destination: everything went through the smarthost.
    dests = with_labels(s, "tern_destination_recipients_total")
    named = {dict(lab)["destination"] for lab in dests}
    assert "other" in named and len(named) == 2, named
    delivered = sum(v for lab, v in dests.items() if dict(lab)["result"] == "delivered")
    assert delivered == 2
    # Rejects by reason, AUTH failures.
    rejects = {
        dict(lab)["reason"]: v for lab, v in with_labels(s, "tern_smtp_rejects_total").items()
    }
    assert rejects["relay_denied"] == 1
    assert rejects["auth_failed"] == 1
    assert rejects["size"] == 1
    assert rejects["protocol"] == 1
    assert sum(rejects.values()) == 4, rejects
    # Connections: 3 sends + 3 raw clients in; at least one connection out.
    assert value(s, "tern_smtp_connections_total") == conns + 6
    assert value(s, "tern_delivery_connections_total") >= 1
    assert value(s, "tern_delivery_connections") >= 0
    # The latency histogram: both deliveries within the first minute.
    assert types["tern_delivery_latency_seconds"] == "histogram"
    assert value(s, "tern_delivery_latency_seconds_count") == 2
    assert value(s, "tern_delivery_latency_seconds_bucket", le="60") == 2
    assert value(s, "tern_delivery_latency_seconds_bucket", le="+Inf") == 2
    assert value(s, "tern_delivery_latency_seconds_sum") < 120
    buckets = sorted(
        (float(dict(lab)["le"]), v)
        for lab, v in with_labels(s, "tern_delivery_latency_seconds_bucket").items()
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    # /status keeps its keys and shows the new counters too.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5 * SLOW) as r:
        st = json.loads(r.read())
    assert (st["received"], st["queue_messages"], st["queue_recipients"]) == (3, 1, 1)
    assert st["delivered"] == 2 and st["deferred"] == 1 and st["bounced"] == 1  # recipients
    assert st["rejects"]["relay_denied"] == 1 and st["auth_failures"] == 1
    assert st["connections_in"] == conns + 6 and "workers" in st and "spool" in st
    # The version.
    info = with_labels(s, "tern_build_info")
    assert len(info) == 1 and list(info.values()) == [1.0]
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+.*", dict(next(iter(info)))["version"])


def test_parser_is_strict():
    """The parser above refuses what the format forbids."""
    good = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"q\\\"\\n\"} 1\n"
    s, _ = parse(good)
    assert s[("a_total", frozenset({("l", 'q"\n')}))] == 1
    for bad in (
        "a_total 1\n",  # no HELP/TYPE
        "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"q\"x\"} 1\n",  # bad escape
        "# HELP a_total x\n# TYPE a_total counter\na_total 1 2 3\n",
        "# HELP a_total x\n# TYPE a_total counter\nb_total 1\n",  # outside its family
    ):
        try:
            parse(bad)
        except AssertionError:
            continue
        raise AssertionError(f"accepted {bad!r}")
