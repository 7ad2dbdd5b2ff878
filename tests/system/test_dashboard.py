"""The dashboard on metrics_listen: its JSON API read with urllib (every
endpoint, bounded answers, bad requests refused, the page's security
headers), and the page itself in a real headless Chromium that runs its
script against a live ternd: the counts and the destinations table fill in
from the API and follow the mail sent."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

from sysutil import SLOW, free_port, message, wait_for

EVENTS_MAX = 50


def get(port, path, method="GET", data=None, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10 * SLOW) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def api(port, path):
    code, headers, body = get(port, path)
    assert code == 200, (path, code, body)
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    return json.loads(body)


def start(make_tern):
    port = free_port()
    t = make_tern(metrics_listen=f"127.0.0.1:{port}", retry_initial="1h", retry_max="1h")
    return t, port


def test_dashboard_api(make_tern, sink):
    t, port = start(make_tern)
    with t.smtp() as s:
        s.ehlo("client.test")
        for i in range(40):
            s.sendmail("sender@src.test", ["ok@dest.test"], message(f"m{i}"))
    # The destination (the smarthost) keeps its last error until a delivery
    # succeeds: the deferral comes after the others.
    sink.wait_to("ok@dest.test", count=40)
    t.send("late@src.test", ["tempfail@dest.test"], message("deferred"))
    t.wait_event("deferred")
    qid = t.qid_of("late@src.test")

    def summary_settled():
        s = api(port, "/api/summary")
        return s if s["tern_messages_delivered_total"] == 40 else None

    s = wait_for(summary_settled, desc="40 deliveries counted")
    assert s["tern_messages_received_total"] == 41
    assert s["tern_messages_deferred_total"] == 1
    assert s["tern_messages_bounced_total"] == 0
    assert s["tern_queue_messages"] == 1
    assert s["rates"]["received_per_s"] >= 0

    tp = api(port, "/api/throughput")
    assert len(tp["minutes"]) == 60
    assert sum(m["in"] for m in tp["minutes"]) == 41
    assert sum(m["out"] for m in tp["minutes"]) == 40

    def dest_row():
        d = api(port, "/api/destinations")["destinations"]
        return d if d and d[0].get("last_error") else None

    rows = wait_for(dest_row, desc="the deferred message's destination with its error")
    assert len(rows) == 1 and rows[0]["messages"] == 1, rows
    assert rows[0]["last_error"].startswith("451 "), rows

    def events_full():
        e = api(port, "/api/events")["events"]
        return e if len(e) == EVENTS_MAX else None

    # 41 received, 40 delivered, 1 deferred: more than the answer holds.
    events = wait_for(events_full, desc="the recent events capped")
    assert events[0]["time"] >= events[-1]["time"]
    assert any(e["event"] == "deferred" and e["id"] == qid for e in events), events

    reasons = api(port, "/api/deferrals")["reasons"]
    assert len(reasons) == 1 and reasons[0]["count"] == 1, reasons
    assert reasons[0]["sample"].startswith(reasons[0]["reason"]), reasons

    for q in (qid, "tempfail@dest.test"):
        m = api(port, "/api/message?q=" + urllib.request.quote(q))
        assert [e["event"] for e in m["events"]] == ["received", "deferred"], (q, m)
        assert all(e["id"] == qid for e in m["events"])
    assert api(port, "/api/message?q=nobody%40nowhere.test")["events"] == []

    # The live state of a message still queued, as `ternctl queue show`
    # has it: each recipient's status, attempts, next attempt, last error.
    m = api(port, "/api/message?q=" + qid)
    assert [x["id"] for x in m["queued"]] == [qid], m
    rcpts = m["queued"][0]["recipients"]
    assert [r["address"] for r in rcpts] == ["tempfail@dest.test"], rcpts
    assert rcpts[0]["status"] == "deferred" and rcpts[0]["attempts"] == 1, rcpts
    assert rcpts[0]["next_attempt"] > time.time() + 600, rcpts  # retry_initial=1h
    assert rcpts[0]["last_error"].startswith("451 "), rcpts
    # Found by address: only what is still queued is live.
    assert api(port, "/api/message?q=ok%40dest.test")["queued"] == []

    # Bad requests.
    assert get(port, "/api/message")[0] == 400
    assert get(port, "/api/message?x=1")[0] == 400
    assert get(port, "/api/message?q=" + "a" * 400)[0] == 400
    assert get(port, "/api/summary?x=1")[0] == 400
    assert get(port, "/api/nothing")[0] == 404
    assert get(port, "/api/summary", method="POST", data=b"{}")[0] in (405, 501)
    assert get(port, "/api/summary", method="DELETE")[0] in (405, 501)

    # The page and its parts, with the headers that keep it to itself.
    for path, ctype in (("/", "text/html"), ("/app.js", "text/javascript"),
                        ("/app.css", "text/css")):
        code, headers, body = get(port, path)
        assert code == 200 and headers["Content-Type"].startswith(ctype), (path, headers)
        assert headers["X-Content-Type-Options"] == "nosniff"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp, csp
    page = get(port, "/")[2].decode()
    assert "<script>" not in page and "http://" not in page and "https://" not in page
    assert 'data-metric="tern_messages_delivered_total"' in page
    script = get(port, "/app.js")[2].decode()
    assert "innerHTML" not in script


def chromium(tmp_path, url, what, budget_ms=6000):
    """Run headless Chromium on url for budget_ms of virtual time (the page
    polls every 2 s) with what (--dump-dom, --screenshot=PATH)."""
    exe = shutil.which("chromium")
    assert exe, "chromium is needed (scripts/install-deps.sh --test)"
    # --no-sandbox: Chromium refuses to run as root otherwise.
    return subprocess.run(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'chromium'}", f"--virtual-time-budget={budget_ms}",
         "--window-size=1200,1500", what, url],
        capture_output=True, timeout=90 * SLOW)


def chromium_dom(tmp_path, url):
    """The page's DOM after its script ran."""
    p = chromium(tmp_path, url, "--dump-dom")
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    return p.stdout.decode()


def metric_values(dom):
    return {m.group(1): m.group(2) for m in
            re.finditer(r'data-metric="([a-z_]+)"[^>]*>([^<]*)<', dom)}


def destinations(dom):
    return re.findall(r'<tr data-destination="([^"]*)"', dom)


def test_dashboard_in_browser(make_tern, sink, tmp_path):
    t, port = start(make_tern)
    url = f"http://127.0.0.1:{port}/"
    dom = chromium_dom(tmp_path, url)
    # No admin_token_file: the page offers no queue actions.
    assert re.search(r'<section id="steer" hidden', dom), dom
    assert "read-only" in dom
    before = metric_values(dom)
    assert before["tern_messages_delivered_total"] == "0", before
    assert before["tern_messages_received_total"] == "0", before

    t.send("sender@src.test", ["ok@dest.test"], message("one"))
    t.send("sender@src.test", ["ok@dest.test"], message("two"))
    t.send("sender@src.test", ["tempfail@dest.test"], message("stays"))
    sink.wait_to("ok@dest.test", count=2)
    t.wait_event("deferred")
    want = [r["destination"] for r in wait_for(
        lambda: api(port, "/api/destinations")["destinations"], desc="a destination")]

    def grown():
        dom = chromium_dom(tmp_path, url)
        v = metric_values(dom)
        if v.get("tern_messages_delivered_total") != "2" or not destinations(dom):
            return None
        return v, destinations(dom)

    after, rows = wait_for(grown, timeout=60 * SLOW, desc="the page shows the deliveries")
    assert after["tern_messages_received_total"] == "3", after
    assert after["tern_messages_deferred_total"] == "1", after
    assert rows == want, (rows, want)

    # TERN_DASH_SCREENSHOT=PATH: the README's picture (docs/dashboard.png).
    shot = os.environ.get("TERN_DASH_SCREENSHOT")
    if shot:
        p = chromium(tmp_path, url, f"--screenshot={os.path.abspath(shot)}")
        assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]


TOKEN = "s3cret-dashboard-token-0123"


def post(port, path, token=TOKEN, origin="own", referer=None):
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if origin == "own":
        headers["Origin"] = f"http://127.0.0.1:{port}"
    elif origin is not None:
        headers["Origin"] = origin
    if referer is not None:
        headers["Referer"] = referer
    code, _, body = get(port, path, method="POST", data=b"", headers=headers)
    return code, json.loads(body) if body else None


def test_dashboard_token_by_reload(make_tern, sink, tmp_path):
    t, port = start(make_tern)
    assert api(port, "/api/summary")["actions"] is False
    code, body = post(port, "/api/queue/flush")
    assert code == 403 and "read-only" in body["error"], body
    # Refused, the running configuration staying: a token too short, a file
    # that group may read, one owned by someone else.
    token_file = tmp_path / "admin-token"
    token_file.write_text("short\n")
    token_file.chmod(0o600)
    t.update(admin_token_file=token_file)
    for bad in ("short", "group", "owner"):
        if bad == "group":
            token_file.write_text(TOKEN + "\n")
            token_file.chmod(0o640)
        elif bad == "owner":
            token_file.chmod(0o600)
            os.chown(token_file, 65534, 65534)
        mark = t.log_mark()
        t.send_signal(signal.SIGHUP)
        rec = t.wait_event("reload_failed", since=mark)
        assert "admin_token_file" in rec["_raw"], rec
        assert api(port, "/api/summary")["actions"] is False
    # A good one turns the actions on; removing the setting turns them off.
    os.chown(token_file, 0, 0)
    mark = t.log_mark()
    t.send_signal(signal.SIGHUP)
    t.wait_event("reloaded", since=mark)
    wait_for(lambda: api(port, "/api/summary")["actions"], desc="the actions on")
    assert post(port, "/api/queue/flush")[0] == 200
    assert post(port, "/api/queue/flush", token="wrong-token-0123456789")[0] == 401
    t.update(admin_token_file=None)
    mark = t.log_mark()
    t.send_signal(signal.SIGHUP)
    t.wait_event("reloaded", since=mark)
    assert api(port, "/api/summary")["actions"] is False
    assert post(port, "/api/queue/flush")[0] == 403


def test_dashboard_actions(make_tern, sink, tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    t = make_tern(metrics_listen=f"127.0.0.1:{port}", retry_initial="1h", retry_max="1h",
                  admin_token_file=token_file)
    assert api(port, "/api/summary")["actions"] is True
    t.send("a@src.test", ["tempfail@dest.test"], message("kept"))
    t.send("b@src.test", ["tempfail@dest.test"], message("deleted"))
    qid = t.qid_of("a@src.test")
    gone = t.qid_of("b@src.test")
    t.wait_event("deferred", qid=qid)
    t.wait_event("deferred", qid=gone)
    hold = f"/api/queue/hold?id={qid}"

    # Refused: no token, a wrong one, another site's page, no origin at all,
    # a GET, a bad or unknown id.
    assert post(port, hold, token=None)[0] == 401
    assert post(port, hold, token=TOKEN + "x")[0] == 401
    assert post(port, hold, token=TOKEN[:-1])[0] == 401
    assert post(port, hold, origin="http://evil.test")[0] == 403
    assert post(port, hold, origin=f"http://127.0.0.1:{port}.evil.test")[0] == 403
    assert post(port, hold, origin=None)[0] == 403
    assert post(port, hold, origin=None, referer="http://evil.test/")[0] == 403
    assert get(port, hold)[0] == 405
    assert post(port, "/api/queue/hold?id=../../etc")[0] == 400
    assert post(port, "/api/queue/hold")[0] == 400
    assert post(port, "/api/queue/delete?id=0123456789abcdef")[0] == 404
    assert not t.events("dashboard_action")
    held = lambda: [r for r in api(port, "/api/destinations")["destinations"] if r.get("held")]
    assert not held()

    # Delete one.
    assert post(port, f"/api/queue/delete?id={gone}")[0] == 200
    t.wait_event("dashboard_action", action="delete", qid=gone)
    wait_for(lambda: gone not in t.queued(), desc="the message deleted")

    # Hold (from the page, as its Referer says), release, flush.
    code, body = post(port, hold, origin=None, referer=f"http://127.0.0.1:{port}/")
    assert code == 200 and body == {"done": "hold", "id": qid}, body
    rec = t.wait_event("dashboard_action", action="hold", qid=qid)
    assert rec["client"] == "127.0.0.1", rec
    wait_for(held, desc="the message held")
    # Released, it is tried at once (and deferred again: the sink still
    # refuses); only then may it be accepted, so that the flush below
    # finds it still queued.
    since = len(t.log_text())
    assert post(port, f"/api/queue/release?id={qid}")[0] == 200
    t.wait_event("dashboard_action", action="release", qid=qid)
    t.wait_event("deferred", since=since, qid=qid)
    sink.accept_all()
    assert post(port, f"/api/queue/flush?id={qid}")[0] == 200
    sink.wait_to("tempfail@dest.test")
    wait_for(lambda: qid not in t.queued(), desc="the flushed message delivered")

    # Flush everything.
    code, body = post(port, "/api/queue/flush")
    assert code == 200 and body == {"done": "flush", "id": None}, body
    t.wait_event("dashboard_action", action="flush")
