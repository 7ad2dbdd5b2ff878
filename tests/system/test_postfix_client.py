"""A real Postfix relays through tern: a private Postfix instance
(own config, queue and data directories under /tmp, no smtpd listening at
all, chroot off, logging to a file through postlogd) with `relayhost` set to
tern's submission port, STARTTLS required and SASL credentials from a
static: map. Mail is injected with Postfix's sendmail -C DIR. The system
Postfix instance is never touched. Needs root (Postfix drops to the postfix
user and the postdrop group)."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from sysutil import SLOW, free_port, message, split_received, uid, wait_for
from test_tls_auth import add_user, make_cert

USER = "pfclient"
PASSWORD = "postfix relay secret"
POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
POSTQUEUE = "/usr/sbin/postqueue"
# Postfix's queue manager tries new mail at once; this bounds the wait.
DELIVERY_WAIT = 20.0 * SLOW

MASTER_CF = """\
# written by tests/system/test_postfix_client.py: no smtpd (the smtp inet
# service is absent), every service with chroot off (5th column n)
#smtp     inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running_as(pid, program):
    """Is pid alive and still that program (not a reused pid)?"""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == program
    except OSError:
        return False


def run(argv, timeout=30, **kw):
    return subprocess.run(argv, capture_output=True, timeout=timeout * SLOW, **kw)


class PrivatePostfix:
    """One Postfix instance rooted in its own directory under /tmp (0755, so
    the postfix user can reach its data directory)."""

    def __init__(self, relay_port, user, password):
        self.root = Path(tempfile.mkdtemp(prefix="ternpf", dir="/tmp"))
        self.root.chmod(0o755)
        self.etc = self.root / "etc"
        self.spool = self.root / "spool"
        self.data = self.root / "data"
        self.maillog = self.root / "maillog"
        for d in (self.etc, self.spool, self.data):
            d.mkdir()
        shutil.chown(self.data, "postfix")
        self.relay_port = relay_port
        self.started = False
        self.write_config(user, password)

    def write_config(self, user, password):
        main_cf = f"""\
# written by tests/system/test_postfix_client.py
compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
myhostname = client.test
mydomain = client.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{self.relay_port}
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = static:{{{user}:{password}}}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_sasl_auth_soft_bounce = yes
maillog_file = {self.maillog}
maillog_file_prefixes = {self.root}
biff = no
append_dot_mydomain = no
"""
        (self.etc / "main.cf").write_text(main_cf)
        (self.etc / "master.cf").write_text(MASTER_CF)

    def postfix(self, *args):
        return run([POSTFIX, "-c", str(self.etc), *args])

    def start(self):
        p = self.postfix("start")
        self.started = True
        assert p.returncode == 0, (
            f"cannot start a private Postfix in {self.root} (rc {p.returncode}):\n"
            f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}\n"
            f"maillog:\n{self.log_tail()}"
        )
        self.wait(self.master_pid, 10 * SLOW, "the Postfix master pid file")

    def reload(self):
        """postfix reload, which only signals the master: wait until it has
        re-read its configuration and every queue manager and delivery
        process started before (with the old configuration in memory) has
        exited, so that the next delivery attempt uses the new one."""
        old = self.daemon_pids("qmgr", "smtp")  # {pid: program}
        before = self.log_count("postfix/master", "reload --")
        p = self.postfix("reload")
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        self.wait(lambda: self.log_count("postfix/master", "reload --") > before, 10 * SLOW,
                  "the Postfix master's 'reload' line")
        self.wait(lambda: not any(running_as(p, prog) for p, prog in old.items()), 10 * SLOW,
                  f"the Postfix processes {old} to exit after the reload")

    def flush(self):
        p = run([POSTQUEUE, "-c", str(self.etc), "-f"])
        assert p.returncode == 0, p.stderr.decode(errors="replace")

    def daemon_pids(self, *programs):
        """{pid: program} of the given Postfix programs that have logged."""
        return {int(m.group(2)): m.group(1)
                for m in re.finditer(r" postfix/(\w+)\[(\d+)\]:", self.log_text())
                if m.group(1) in programs}

    def log_count(self, program, text):
        """Lines of the maillog from program (e.g. "postfix/smtp") holding text."""
        return sum(1 for ln in self.log_text().splitlines()
                   if f" {program}[" in ln and text in ln)

    def master_pid(self):
        try:
            pid = int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def sendmail(self, sender, rcpt, data):
        p = run([SENDMAIL, "-C", str(self.etc), "-f", sender, "-i", rcpt], input=data)
        assert p.returncode == 0, (
            f"postfix sendmail failed (rc {p.returncode}): "
            f"{p.stderr.decode(errors='replace')}\nmaillog:\n{self.log_tail()}"
        )

    def queue(self):
        """postqueue -j: one dict per queued message."""
        p = run([POSTQUEUE, "-c", str(self.etc), "-j"])
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        return [json.loads(ln) for ln in p.stdout.decode().splitlines() if ln.strip()]

    def log_text(self):
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait(self, pred, timeout, what):
        """wait_for, with the maillog as it is at the deadline in the failure."""
        try:
            return wait_for(pred, timeout, desc=what)
        except AssertionError as e:
            raise AssertionError(f"{e}; postfix maillog:\n{self.log_tail()}") from None

    def stop(self):
        if self.started:
            pid = self.master_pid()
            self.postfix("stop")
            if pid is not None:
                try:
                    wait_for(lambda: self.master_pid() != pid, 10 * SLOW, desc="postfix stop")
                except AssertionError:
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postfix_relay(make_tern, tmp_path):
    """ternd with STARTTLS+AUTH on submission_listen and user USER, and a
    private Postfix relaying to it; both stopped at teardown."""
    for prog in (POSTFIX, SENDMAIL, POSTQUEUE):
        assert os.access(prog, os.X_OK), f"{prog} missing: this test needs Postfix installed"
    assert os.geteuid() == 0, "this test runs a private Postfix instance and needs root"
    made = []

    def make(password=PASSWORD):
        d = tmp_path / f"pf{uid()}"
        d.mkdir()
        cert, key = make_cert(d, "tern")
        sub = free_port()
        t = make_tern(
            start=False,
            tls_cert_file=cert,
            tls_key_file=key,
            auth_users_file=d / "users",
            submission_listen=f"127.0.0.1:{sub}",
            auth_failure_delay="0s",
        )
        add_user(t, USER, PASSWORD)
        t.start()
        pf = PrivatePostfix(sub, USER, password)
        made.append(pf)
        pf.start()
        return t, pf

    yield make
    for pf in made:
        pf.stop()


def test_postfix_relayhost_with_sasl(postfix_relay, sink):
    t, pf = postfix_relay()
    u = uid()
    rcpt = f"pf-{u}@example.org"
    pf.sendmail("sender@client.test", rcpt,
                message(f"via postfix {u}", sender="sender@client.test", to=rcpt))
    msgs = pf.wait(lambda: sink.to(rcpt), DELIVERY_WAIT, "the message at the sink")
    assert len(msgs) == 1, msgs
    m = msgs[0]
    assert m.mail_from == "sender@client.test", m.mail_from
    fields, _ = split_received(m.data)
    assert len(fields) >= 2, fields  # tern's, then Postfix's pickup one
    assert "with ESMTPSA" in fields[0], fields[0]
    assert "client.test" in fields[0], fields[0]
    assert "by client.test (Postfix" in fields[1], fields[1]
    rec = t.wait_event("received", user=USER)
    assert rec.get("from") == "sender@client.test", rec["_raw"]
    assert str(rec.get("tls", "")).startswith("TLSv1."), rec["_raw"]
    # Postfix saw its own delivery succeed, and its queue is empty.
    pf.wait(lambda: "status=sent" in pf.log_text(), 10 * SLOW, "status=sent in the maillog")
    pf.wait(lambda: pf.queue() == [], 10 * SLOW, "an empty Postfix queue")
    assert PASSWORD not in t.log_text(), "the password reached tern's log"


def test_postfix_wrong_password_stays_queued(postfix_relay, sink):
    t, pf = postfix_relay(password="not the password")
    u = uid()
    rcpt = f"pfbad-{u}@example.org"
    pf.sendmail("sender@client.test", rcpt,
                message(f"bad auth {u}", sender="sender@client.test", to=rcpt))

    # Postfix's showq gives the reason as soon as the delivery agent logged
    # it, while the message may still be in the active queue: wait for both.
    def deferred_with_535():
        # The deferral reason shows (from the defer log) while the message
        # is still in the active queue: wait for the queue move as well.
        for q in pf.queue():
            if q.get("queue_name") != "deferred":
                continue
            for r in q.get("recipients", []):
                if (q.get("queue_name") == "deferred" and r.get("address") == rcpt
                        and "535" in r.get("delay_reason", "")):
                    return q
        return None

    q = pf.wait(deferred_with_535, DELIVERY_WAIT, "a deferred message with a 535 reason")
    assert q["queue_name"] == "deferred", q
    reason = q["recipients"][0]["delay_reason"]
    assert "SASL authentication failed" in reason and "5.7.8" in reason, reason
    t.wait_event("auth_failed")
    assert not t.events("received"), "tern accepted mail after a failed AUTH"
    assert sink.to(rcpt) == [], "the message reached the sink"
    assert not sink.snapshot(), sink.snapshot()

    # Fix the credentials, reload (see PrivatePostfix.reload), flush: the
    # same message now goes through.
    pf.write_config(USER, PASSWORD)
    pf.reload()
    pf.flush()
    m = pf.wait(lambda: sink.to(rcpt), DELIVERY_WAIT, "the message after the fix")[0]
    assert "with ESMTPSA" in split_received(m.data)[0][0]
    t.wait_event("received", user=USER)
