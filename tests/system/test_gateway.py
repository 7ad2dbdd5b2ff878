"""The inbound gateway settings: always_bcc (the compliance archive) and
relay_recipients (the backup MX accepts only the addresses it knows)."""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import give_to_user
from sysutil import SLOW, WAIT, free_port, holds_for, uid, wait_for

ARCHIVE = "archive@vault.test"


def message(subject, to="someone@example.org"):
    return (f"From: sender@src.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@src.test>\r\n\r\n"
            f"body of {subject}\r\n.leading dot line\r\n").encode()


def split_head(data):
    """The archive copy's X-Tern-Envelope-* fields (unfolded) and the rest."""
    m = re.match(rb"X-Tern-Envelope-From: (.*)\r\nX-Tern-Envelope-To:((?:.*\r\n)(?:[ \t].*\r\n)*)",
                 data)
    assert m, data[:300]
    to = m.group(2).replace(b"\r\n", b"")
    return m.group(1).decode(), [a.strip() for a in to.decode().split(",")], data[m.end():], m


def wait_archive(sink, subject, timeout=WAIT):
    return wait_for(lambda: [t for t in sink.to(ARCHIVE) if subject.encode() in t.data],
                    timeout, desc=f"the archive copy of {subject!r}")[0]


# -- always_bcc


def test_archive_copy_is_the_message_with_the_envelope_above(make_tern, sink):
    tern = make_tern(always_bcc=ARCHIVE)
    u = uid()
    to, cc, bcc = f"to-{u}@example.org", f"cc-{u}@example.org", f"hidden-{u}@example.org"
    subject = f"archived {u}"
    tern.send(f"s-{u}@src.test", [to, cc, bcc], message(subject, to=to))
    arch = wait_archive(sink, subject)
    real = sink.wait_to(to)[0]
    # Its own transaction: nobody else's server sees the archive address,
    # and the archive's sees nobody else.
    assert [r.lower() for r in arch.rcpt_tos] == [ARCHIVE]
    assert ARCHIVE not in [r.lower() for r in real.rcpt_tos]
    assert sorted(r.lower() for r in real.rcpt_tos) == sorted([to, cc, bcc])
    sender, rcpts, rest, _ = split_head(arch.data)
    assert sender == f"<s-{u}@src.test>"
    assert rcpts == [to, cc, bcc], rcpts  # Bcc listed, the archive not
    assert rest == real.data, "the archive copy is the delivered message byte for byte"
    assert arch.mail_from == f"s-{u}@src.test"
    # No trace of the archive in what the recipients get.
    assert ARCHIVE.encode() not in real.data
    # The log and the journal name it like any recipient.
    qid = tern.qid_of(f"s-{u}@src.test")
    tern.wait_event("delivered", qid=qid, to=ARCHIVE)
    wait_for(lambda: tern.queued() == [], desc="queue empty")


def test_archive_copy_carries_our_dkim_signature(make_tern, sink):
    from test_dkim import Keys, keygen, verify_all
    tern = make_tern(start=False, always_bcc=ARCHIVE)
    keys = Keys()
    keygen(tern, keys, "src.test", "sel", "--algorithm", "ed25519")
    tern.update(dkim_sign=" ".join(keys.entries))
    tern.start()
    u = uid()
    to = f"signed-{u}@example.org"
    subject = f"signed {u}"
    tern.send(f"s-{u}@src.test", [to], message(subject, to=to))
    arch = wait_archive(sink, subject)
    real = sink.wait_to(to)[0]
    _, rcpts, rest, _ = split_head(arch.data)
    assert rcpts == [to]
    assert rest == real.data
    assert rest.startswith(b"DKIM-Signature:"), rest[:200]
    verify_all(rest, keys, 1)


def test_archive_folds_a_long_recipient_list(make_tern, sink):
    tern = make_tern(always_bcc=ARCHIVE)
    u = uid()
    rcpts = [f"recipient-number-{i}-{u}@example.org" for i in range(12)]
    subject = f"many {u}"
    tern.send(f"s-{u}@src.test", rcpts, message(subject, to=rcpts[0]))
    arch = wait_archive(sink, subject)
    _, got, _, m = split_head(arch.data)
    assert got == rcpts
    lines = m.group(0).split(b"\r\n")[1:-1]
    assert len(lines) > 1, "folded"
    for line in lines:
        assert len(line) <= 78, line
    for line in lines[1:]:
        assert line.startswith(b" "), line


def test_archive_null_sender_and_local_submission(make_tern, sink):
    tern = make_tern(always_bcc=ARCHIVE)
    u = uid()
    subject = f"nullsender {u}"
    with tern.smtp() as s:
        s.ehlo("client.test")
        assert s.mail("<>")[0] == 250
        assert s.rcpt(f"n-{u}@example.org")[0] == 250
        assert s.data(message(subject))[0] == 250
    sender, rcpts, _, _ = split_head(wait_archive(sink, subject).data)
    assert sender == "<>" and rcpts == [f"n-{u}@example.org"]
    # tern-sendmail while ternd is down: the maildrop's pickup archives too.
    rc, _ = tern.stop()
    assert rc == 0
    subject = f"picked {u}"
    p = tern.sendmail([f"p-{u}@example.org"], f"Subject: {subject}\n\nlocal\n".encode())
    assert p.returncode == 0, p.stderr
    tern.start()
    arch = wait_archive(sink, subject)
    _, rcpts, rest, _ = split_head(arch.data)
    assert rcpts == [f"p-{u}@example.org"]
    assert rest == sink.wait_to(f"p-{u}@example.org")[0].data


def test_archive_shown_in_the_queue_and_survives_kill9(make_tern, sink):
    tern = make_tern(always_bcc=ARCHIVE)
    u = uid()
    sink.rcpt_replies[ARCHIVE] = "451 4.3.0 archive busy"
    subject = f"kill9 {u}"
    rcpt = f"k-{u}@example.org"
    tern.send(f"s-{u}@src.test", [rcpt], message(subject, to=rcpt))
    qid = tern.qid_of(f"s-{u}@src.test")
    tern.wait_event("deferred", qid=qid, to=ARCHIVE)
    sink.wait_to(rcpt)
    p = tern.ctl("queue", "list", "--json")
    assert p.returncode == 0, p.stderr
    (entry,) = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    assert [(r["address"], r.get("archive")) for r in entry["recipients"]] == [(ARCHIVE, True)]
    p = tern.ctl("queue", "list")
    assert f"{ARCHIVE} (archive, deferred)" in p.stdout.decode(), p.stdout
    p = tern.ctl("queue", "show", qid, "--json")
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert [r.get("archive") for r in shown["recipients"] if r["address"] == ARCHIVE] == [True]
    tern.kill9()
    sink.rcpt_replies.clear()
    tern.start()
    arch = wait_archive(sink, subject)
    _, rcpts, rest, _ = split_head(arch.data)
    assert rcpts == [rcpt]
    assert rest == sink.wait_to(rcpt)[0].data
    wait_for(lambda: tern.queued() == [], desc="queue empty")
    assert len(sink.to(rcpt)) == 1


def test_archive_never_in_a_dsn(make_tern, sink):
    tern = make_tern(always_bcc=ARCHIVE)
    u = uid()
    sender = f"s-{u}@src.test"
    bad = f"permfail-{u}@example.org"
    sink.rcpt_replies[ARCHIVE] = f"550 5.1.1 <{ARCHIVE}>: archive refused (sink)"
    subject = f"bounce {u}"
    with tern.smtp() as s:
        s.ehlo("client.test")
        assert s.mail(sender, ["RET=FULL"])[0] == 250
        assert s.rcpt(bad)[0] == 250
        assert s.data(message(subject, to=bad))[0] == 250
    qid = tern.qid_of(sender)
    dsn = sink.wait_dsn(sender)[0]
    assert bad.encode() in dsn.data
    assert ARCHIVE.encode() not in dsn.data, "the sender never learns of the archive"
    tern.wait_event("bounced", qid=qid, to=ARCHIVE)
    wait_for(lambda: tern.queued() == [], desc="queue empty")
    assert len(sink.from_null_to(sender)) == 1, "one DSN: the archive's failure makes none"
    # tern's own DSN is not archived.
    assert not [t for t in sink.to(ARCHIVE) if t.mail_from == ""]


def test_always_bcc_must_be_an_address(make_tern):
    tern = make_tern(start=False, always_bcc="not an address")
    p = tern.ternd("-c", str(tern.conf), "--check")
    assert p.returncode == 2
    assert b"always_bcc" in p.stderr, p.stderr


# -- relay_recipients


def write_list(path, text, mode=0o644):
    """Replace the file in one step (as an editor that renames does), or in
    place when it exists and mode is None."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def rcpt_reply(tern, addr, source="127.0.0.2"):
    """The reply to RCPT TO:<addr> from a client outside relay_networks."""
    c = tern.raw(source=source)
    try:
        c.cmd("EHLO outside.test")
        assert c.cmd("MAIL FROM:<someone@outside.test>").code == 250
        r = c.cmd(f"RCPT TO:<{addr}>")
        c.cmd("QUIT")
        return r
    finally:
        c.close()


def wait_not_loaded(tern, mark, probe):
    """The file is looked at when a recipient is: probe until the error is
    in the log."""
    wait_for(lambda: rcpt_reply(tern, probe) and tern.events("relay_recipients_not_loaded",
                                                             since=mark),
             WAIT, desc="relay_recipients_not_loaded in the log")


def gateway(make_tern, text, **settings):
    t = make_tern(start=False, **settings)
    lst = t.workdir / "relay_recipients"
    write_list(lst, text)
    t.update(relay_recipients=lst, relay_domains="inbound.test .sub.inbound.test whole.test")
    t.start()
    return t, lst


def test_relay_recipients_known_unknown_and_domain(make_tern, sink):
    port = free_port()
    tern, _ = gateway(make_tern, "# the mail store's users\nalice@inbound.test\n"
                      "  Bob@Inbound.Test.  ignored-value\n\n@whole.test\n"
                      "carol@x.sub.inbound.test\n", metrics_listen=f"127.0.0.1:{port}")
    u = uid()
    for addr in ("alice@inbound.test", "ALICE@INBOUND.TEST", "bob@inbound.test",
                 f"anyone-{u}@whole.test", f"anyone-{u}@WHOLE.test", "carol@x.sub.inbound.test"):
        r = rcpt_reply(tern, addr)
        assert r.code == 250, (addr, r)
    for addr in (f"nobody-{u}@inbound.test", f"alice@x.sub.inbound.test",
                 f"carol-{u}@x.sub.inbound.test"):
        r = rcpt_reply(tern, addr)
        assert (r.code, r.enh) == (550, "5.1.1"), (addr, r)
        assert "Recipient address rejected: unknown user" in r.text, r
    tern.wait_event("refused", to=f"nobody-{u}@inbound.test", reason="unknown recipient")
    # Other domains keep the relay rules: refused to outsiders, open to
    # relay_networks (whose outbound mail the list does not concern).
    assert rcpt_reply(tern, f"x-{u}@elsewhere.test").code == 554
    assert rcpt_reply(tern, f"x-{u}@elsewhere.test", source="127.0.0.1").code == 250
    # ... but relay_domains recipients are checked for every client.
    assert rcpt_reply(tern, f"nobody-{u}@inbound.test", source="127.0.0.1").code == 550
    # A whole message: known accepted, unknown refused, nothing queued for it.
    with tern.smtp(source="127.0.0.2") as s:
        s.ehlo("outside.test")
        assert s.mail(f"forged-{u}@victim.test")[0] == 250
        assert s.rcpt(f"nobody-{u}@inbound.test")[0] == 550
        assert s.rcpt("alice@inbound.test")[0] == 250
        assert s.data(message(f"gw {u}", to="alice@inbound.test"))[0] == 250
    got = sink.wait_to("alice@inbound.test")[0]
    assert got.rcpt_tos == ["alice@inbound.test"]
    wait_for(lambda: tern.queued() == [], desc="queue empty")
    assert not sink.from_null_to(f"forged-{u}@victim.test"), "no backscatter"
    tern.wait_event("relay_recipients_loaded", entries="4")
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5 * SLOW) as r:
        text = r.read().decode()
    m = re.search(r'^tern_smtp_rejects_total\{reason="recipient"\} (\d+)$', text, re.M)
    assert m and int(m.group(1)) >= 5, text


def test_relay_recipients_edited_while_running(make_tern):
    tern, lst = gateway(make_tern, "alice@inbound.test\n")
    u = uid()
    new = f"new-{u}@inbound.test"
    assert rcpt_reply(tern, new).code == 550
    # Rewritten in place (same inode), then replaced: both are noticed
    # without a reload.
    with open(lst, "a") as f:
        f.write(f"{new}\n")
    wait_for(lambda: rcpt_reply(tern, new).code == 250, WAIT, desc="the added address accepted")
    write_list(lst, f"{new}\n")
    wait_for(lambda: rcpt_reply(tern, "alice@inbound.test").code == 550, WAIT,
             desc="the removed address refused")
    assert rcpt_reply(tern, new).code == 250
    # A broken file keeps the list in use, with an error in the log.
    mark = tern.log_mark()
    write_list(lst, f"{new}\nnot an address line\n")
    wait_not_loaded(tern, mark, new)
    assert rcpt_reply(tern, new).code == 250
    # Logged once, not at every look (once a second) until it changes.
    assert holds_for(lambda: rcpt_reply(tern, new).code == 250 and
                     len(tern.events("relay_recipients_not_loaded", since=mark)) == 1, 2.5)
    assert rcpt_reply(tern, "alice@inbound.test").code == 550
    # So does a file that became untrusted, or went away.
    mark = tern.log_mark()
    write_list(lst, "alice@inbound.test\n", mode=0o666)
    wait_not_loaded(tern, mark, new)
    assert rcpt_reply(tern, "alice@inbound.test").code == 550
    mark = tern.log_mark()
    os.unlink(lst)
    wait_not_loaded(tern, mark, new)
    assert rcpt_reply(tern, new).code == 250
    # Fixed: taken at once.
    write_list(lst, "alice@inbound.test\n")
    wait_for(lambda: rcpt_reply(tern, "alice@inbound.test").code == 250, WAIT,
             desc="the fixed file in use")
    assert rcpt_reply(tern, new).code == 550
    # A reload reads it again.
    mark = tern.log_mark()
    tern.send_signal(signal.SIGHUP)
    tern.wait_event("relay_recipients_loaded", since=mark, entries="1")


def test_relay_recipients_checked_at_start(make_tern):
    tern = make_tern(start=False)
    lst = tern.workdir / "relay_recipients"
    tern.update(relay_recipients=lst)
    p = tern.ternd("-c", str(tern.conf), "--check")
    assert p.returncode == 2 and b"relay_recipients" in p.stderr, p.stderr
    write_list(lst, "alice@inbound.test\n", mode=0o664)
    p = tern.ternd("-c", str(tern.conf), "--check")
    assert p.returncode == 2, p.stderr
    assert b"relay_recipients" in p.stderr and b"writable by group or others" in p.stderr
    write_list(lst, "alice@inbound.test\nbad line here@\n")
    p = tern.ternd("-c", str(tern.conf), "--check")
    assert p.returncode == 2 and b"line 2" in p.stderr, p.stderr
    if os.geteuid() == 0:
        # Readable by root only: the relay's user could not read it.
        write_list(lst, "alice@inbound.test\n", mode=0o600)
        p = tern.ternd("-c", str(tern.conf), "--check")
        assert p.returncode == 2 and b"not readable" in p.stderr, p.stderr
        # The relay's own file is fine.
        give_to_user(lst)
        p = tern.ternd("-c", str(tern.conf), "--check")
        assert p.returncode == 0, p.stderr
    write_list(lst, "alice@inbound.test\n")
    p = tern.ternd("-c", str(tern.conf), "--check")
    assert p.returncode == 0, p.stderr
    # A broken file at start: ternd does not start.
    write_list(lst, "bad line here@\n")
    tern.start(wait=False)
    assert tern.proc.wait(30) != 0
    tern.expect_dead = True
    assert "relay_recipients" in tern.log_text()
