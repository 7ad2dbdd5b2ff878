"""The inbound gateway settings: always_bcc (the compliance archive) and
relay_recipients (the backup MX accepts only the addresses it knows)."""

import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import give_to_user
from sysutil import SLOW, WAIT, holds_for, uid, wait_for

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
