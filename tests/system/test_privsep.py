"""Running as a service: the process split (a root parent, a keys process
and the relay, both as `user`, without capabilities, with no_new_privs and
seccomp), TLS, DKIM and AUTH through the keys process, reload and signals,
one daemon per spool, IPv6 listeners beside IPv4 ones, and --check."""

import fcntl
import os
import pwd
import signal
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import TEST_USER, binary, give_to_user, tool_env
from sysutil import SLOW, WAIT, free_port, holds_for, message, uid, wait_for
from test_dkim import dual_tern, verify_all
from test_tls_auth import PASSWORD, add_user, client_ctx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (starts ternd as root)")


def children(pid):
    """The pids of pid's child processes."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def processes(t):
    """(parent, [children]) of a running ternd; two children."""
    kids = wait_for(lambda: len(children(t.proc.pid)) == 2 and children(t.proc.pid),
                    desc="ternd's two children")
    return t.proc.pid, kids


def listening_pid(kids, port):
    """Which child holds the listening socket of port (the relay)."""
    inode = None
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if int(cols[1].split(":")[1], 16) == port and cols[3] == "0A":
                    inode = cols[9]
    assert inode, f"nothing listens on {port}"
    for k in kids:
        for fd in os.listdir(f"/proc/{k}/fd"):
            try:
                if os.readlink(f"/proc/{k}/fd/{fd}") == f"socket:[{inode}]":
                    return k
            except OSError:
                pass
    raise AssertionError(f"no child holds port {port}")


def make_cert(d, name, kind, cn="tern.test"):
    """A self-signed certificate; kind "rsa" or "ec". Key mode 0600, root's."""
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    newkey = ["rsa:2048"] if kind == "rsa" else ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", *newkey, "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}"],
        check=True, capture_output=True, timeout=60,
    )
    key.chmod(0o600)
    return cert, key


@pytest.fixture
def secure_tern(make_tern, tmp_path):
    """ternd started as root with STARTTLS, smtps, AUTH and root-only keys."""

    def make(kind="ec", **settings):
        d = tmp_path / f"sec{uid()}"
        d.mkdir()
        cert, key = make_cert(d, "srv", kind)
        sub, smtps = free_port(), free_port()
        base = dict(tls_cert_file=cert, tls_key_file=key, auth_users_file=d / "users",
                    submission_listen=f"127.0.0.1:{sub}", smtps_listen=f"127.0.0.1:{smtps}",
                    auth_failure_delay="0s")
        base.update(settings)
        t = make_tern(start=False, **base)
        add_user(t, "alice", PASSWORD)
        t.start()
        t.sub_port, t.smtps_port, t.cert, t.key, t.users = sub, smtps, cert, key, d / "users"
        return t

    return make


def test_every_child_runs_as_user_without_privileges(secure_tern):
    t = secure_tern()
    parent, kids = processes(t)
    assert status(parent)["Uid"][0] == "0", "the parent stays root (it binds and reloads)"
    pw = pwd.getpwnam(TEST_USER)
    for k in kids:
        st = status(k)
        assert st["Uid"] == [str(pw.pw_uid)] * 4, (k, st["Uid"])
        assert st["Gid"] == [str(pw.pw_gid)] * 4, (k, st["Gid"])
        assert st["Groups"] == [str(pw.pw_gid)], (k, st["Groups"])
        for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
            assert int(st[cap][0], 16) == 0, (k, cap, st[cap])
        assert st["NoNewPrivs"] == ["1"], k
        assert st["Seccomp"] == ["2"], k
    relay = listening_pid(kids, t.port)
    keys = [k for k in kids if k != relay][0]
    # Neither the relay nor the keys process holds any file of the secrets.
    for k in kids:
        for fd in os.listdir(f"/proc/{k}/fd"):
            try:
                target = os.readlink(f"/proc/{k}/fd/{fd}")
            except OSError:
                continue
            assert target not in (str(t.key), str(t.users)), (k, target)
    # The keys process is not dumpable: /proc/PID/mem is root's, not the user's.
    assert os.stat(f"/proc/{keys}/mem").st_uid == 0


def try_open_as_user(path):
    """errno of open(path) by the relay's uid (0 when it opens)."""
    pw = pwd.getpwnam(TEST_USER)
    code = ("import os,sys\n"
            "try:\n os.close(os.open(sys.argv[1], os.O_RDONLY)); print(0)\n"
            "except OSError as e: print(e.errno)\n")

    def drop():
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    p = subprocess.run(["/usr/bin/python3", "-c", code, str(path)], capture_output=True,
                       preexec_fn=drop, timeout=30)
    return int(p.stdout)


def test_relay_user_cannot_open_the_secrets(secure_tern, tmp_path):
    import errno
    t = secure_tern()
    assert try_open_as_user(t.cert) == 0, "the certificate itself is public"
    assert try_open_as_user(t.key) == errno.EACCES
    assert try_open_as_user(t.users) == errno.EACCES


def starttls_handshake(port, version):
    ctx = client_ctx()
    ctx.minimum_version = ctx.maximum_version = version
    s = smtplib.SMTP("127.0.0.1", port, timeout=15 * SLOW)
    s.ehlo("client.test")
    s.starttls(context=ctx)
    got = s.sock.version()
    s.ehlo("client.test")
    s.login("alice", PASSWORD)
    s.quit()
    return got


def smtps_handshake(port, version, mech):
    ctx = client_ctx()
    ctx.minimum_version = ctx.maximum_version = version
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=15 * SLOW)
    s.ehlo("client.test")
    got = s.sock.version()
    s.user, s.password = "alice", PASSWORD
    code, _ = s.auth(mech, getattr(s, f"auth_{mech.lower()}"), initial_response_ok=False)
    assert code == 235
    s.quit()
    return got


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_tls_and_auth_through_the_keys_process(secure_tern, kind):
    t = secure_tern(kind)
    for v, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        assert starttls_handshake(t.sub_port, v) == name
        for mech in ("PLAIN", "LOGIN"):
            assert smtps_handshake(t.smtps_port, v, mech) == name
    # The certificate served is the configured one.
    der = ssl.PEM_cert_to_DER_cert(t.cert.read_text())
    c = socket.create_connection(("127.0.0.1", t.smtps_port), timeout=10 * SLOW)
    with client_ctx().wrap_socket(c, server_hostname="tern.test") as s:
        assert s.getpeercert(binary_form=True) == der
    # A wrong password is still refused.
    s = smtplib.SMTP_SSL("127.0.0.1", t.smtps_port, context=client_ctx(), timeout=15 * SLOW)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        s.login("alice", "not it")
    s.close()


def test_static_rsa_key_exchange_refused(secure_tern):
    t = secure_tern("rsa")
    ctx = client_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("kRSA")  # only RSA key exchange: the key would decrypt
    c = socket.create_connection(("127.0.0.1", t.smtps_port), timeout=10 * SLOW)
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(c, server_hostname="tern.test").close()
    c.close()
    assert starttls_handshake(t.sub_port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


def test_dkim_signed_by_the_keys_process(make_tern, sink):
    t, keys = dual_tern(make_tern)
    for f in t.workdir.glob("*.key"):
        assert try_open_as_user(f) != 0, f"{f} readable by the relay's user"
    rcpt = f"r-{uid()}@example.org"
    t.send(f"s@a.test", [rcpt], message("keys", sender="s@a.test"))
    tags = verify_all(sink.wait_to(rcpt)[0].data, keys, 2)
    assert sorted(tg["a"] for tg in tags) == ["ed25519-sha256", "rsa-sha256"]


def test_reload_new_certificate_and_listener(secure_tern):
    t = secure_tern("rsa")
    new_cert, new_key = make_cert(t.cert.parent, "new", "ec")
    extra = free_port()
    mark = t.log_mark()
    t.update(tls_cert_file=new_cert, tls_key_file=new_key,
             submission_listen=f"127.0.0.1:{extra}")
    t.send_signal(signal.SIGHUP)
    t.wait_event("reloaded", since=mark)
    der = ssl.PEM_cert_to_DER_cert(new_cert.read_text())
    c = socket.create_connection(("127.0.0.1", t.smtps_port), timeout=10 * SLOW)
    with client_ctx().wrap_socket(c, server_hostname="tern.test") as s:
        assert s.getpeercert(binary_form=True) == der
    # The new address (bound by the root parent) serves; the old one is gone.
    assert starttls_handshake(extra, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", t.sub_port), timeout=5).close()
    # A bad key keeps the running generation.
    bad = t.cert.parent / "bad.key"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    mark = t.log_mark()
    t.update(tls_key_file=bad)
    t.send_signal(signal.SIGHUP)
    ev = t.wait_event("reload_failed", since=mark)
    assert "tls_key_file" in ev["errors"], ev
    assert starttls_handshake(extra, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


def test_killing_the_keys_process_stops_ternd(secure_tern):
    t = secure_tern()
    _, kids = processes(t)
    keys = [k for k in kids if k != listening_pid(kids, t.port)][0]
    os.kill(keys, signal.SIGKILL)
    rc = t.proc.wait(timeout=30 * SLOW)
    t.expect_dead = True
    assert rc != 0
    ev = t.wait_event("child_died")
    assert ev["process"] == "keys", ev


def test_killing_the_relay_stops_ternd(tern):
    _, kids = processes(tern)
    os.kill(listening_pid(kids, tern.port), signal.SIGKILL)
    assert tern.proc.wait(timeout=30 * SLOW) != 0
    tern.expect_dead = True
    assert tern.wait_event("child_died")["process"] == "relay"


def test_common_signals_kill_nothing(tern, sink):
    parent, kids = processes(tern)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):
        for p in [parent, *kids]:
            os.kill(p, sig)
    assert holds_for(lambda: tern.running() and len(children(parent)) == 2, 1.0)
    tern.send("a@example.com", [f"r-{uid()}@example.org"], message("alive"))
    rc, took = tern.stop()
    assert rc == 0 and took < 30


def test_second_daemon_on_the_spool_exits(tern, make_tern, sink):
    other = make_tern(start=False, spool_dir=tern.spool)
    sock = tern.spool / "ctl.sock"
    before = os.stat(sock).st_ino
    other.start(wait=False)
    rc = other.proc.wait(timeout=30 * SLOW)
    assert rc == 1, other.log_tail()
    other.expect_dead = True
    assert f"in use by another ternd (pid {tern.proc.pid})" in other.log_text()
    assert os.stat(sock).st_ino == before, "the running ternd's socket was replaced"
    assert tern.ctl("queue", "list").returncode == 0
    tern.send("a@example.com", [f"r-{uid()}@example.org"], message("still the one"))


def test_root_owned_spool_handed_to_user(make_tern):
    t = make_tern(start=False, smarthost="[127.0.0.1]:9")  # nothing delivers: mail stays
    t.start()
    t.send("a@example.com", [f"r-{uid()}@example.org"], message("kept"))
    queued = t.queued()
    assert len(queued) == 1
    t.stop()
    for root, dirs, files in os.walk(t.spool):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), 0, 0)
    os.chown(t.spool, 0, 0)
    t.start()
    pw = pwd.getpwnam(TEST_USER)
    for root, dirs, files in os.walk(t.spool):
        for n in [".", *dirs, *files]:
            assert os.lstat(os.path.join(root, n)).st_uid == pw.pw_uid, (root, n)
    # The queue is read in the background once ternd listens (a receive
    # loop thread may greet before the main loop begins reading it).
    wait_for(lambda: t.queued() == queued, WAIT, desc="the message queued after the restart")


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("pair", [("127.0.0.1", "[::1]"), ("0.0.0.0", "[::]")])
def test_ipv4_and_ipv6_on_one_port(make_tern, pair):
    port = free_port()
    t = make_tern(start=False, smtp_listen=f"{pair[0]}:{port} {pair[1]}:{port}")
    t.port = port
    t.start()
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(fam) as s:
            s.settimeout(10 * SLOW)
            s.connect((host, port))
            assert s.recv(100).startswith(b"220 ")


def check(t):
    p = t.ternd("-c", str(t.conf), "--check")
    return p.returncode, p.stderr.decode()


def test_check_fails_on_what_would_stop_the_start(make_tern, tmp_path):
    t = make_tern(start=False)
    assert check(t)[0] == 0
    t.update(user="no-such-user-here")
    rc, err = check(t)
    assert rc == 2 and 'user "no-such-user-here"' in err, err
    t.update(user=TEST_USER, smtp_listen="192.0.2.77:2525")  # not an address of ours
    rc, err = check(t)
    assert rc == 2 and "smtp_listen: cannot listen on 192.0.2.77:2525" in err, err
    t.update(smtp_listen="localhost:2525")
    rc, err = check(t)
    assert rc == 2 and "smtp_listen" in err and "IP address" in err, err
    port = free_port()
    t.update(smtp_listen=f"0.0.0.0:{port}", submission_listen=f"127.0.0.1:{port}")
    rc, err = check(t)
    assert rc == 2 and "overlaps" in err, err
    t.update(smtp_listen=f"127.0.0.1:{port}", submission_listen=None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    t.update(spool_dir=blocker / "spool")
    rc, err = check(t)
    assert rc == 2 and f"{blocker / 'spool'}: Not a directory" in err, err
    other = tmp_path / "others"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    t.update(spool_dir=other)
    rc, err = check(t)
    assert rc == 2 and f"spool directory {other}: owned by uid 65534" in err, err
    # an Ed25519 certificate: no way to sign for it from the keys process
    t.update(spool_dir=t.spool)
    cert, key = tmp_path / "ed.crt", tmp_path / "ed.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=tern.test"],
                   check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    t.update(tls_cert_file=cert, tls_key_file=key)
    rc, err = check(t)
    assert rc == 2 and "only RSA and ECDSA certificates" in err, err
    t.update(tls_cert_file=None, tls_key_file=None, spool_dir=other)
    # ... and start-up refuses the same.
    t.start(wait=False)
    assert t.proc.wait(timeout=30 * SLOW) != 0
    t.expect_dead = True


def test_default_configuration_file(tmp_path):
    # The file is the machine's, not the test's: a suite running beside this
    # one (tests/system/run-both.sh) takes its turn.
    with open("/tmp/tern-test-etc.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        default_configuration_file(tmp_path)


def default_configuration_file(tmp_path):
    path = "/etc/tern/tern.conf"
    if os.path.exists(path):
        pytest.skip("this machine has a real /etc/tern/tern.conf")
    made_dir = not os.path.isdir("/etc/tern")
    os.makedirs("/etc/tern", exist_ok=True)
    spool = tmp_path / "spool"
    try:
        users = tmp_path / "users"
        with open(path, "w") as f:
            f.write(f"spool_dir = {spool}\nsmtp_listen = 127.0.0.1:{free_port()}\n"
                    f"user = {TEST_USER}\nhostname = default.test\n"
                    f"auth_users_file = {users}\n")
        # ternctl reads the file: passwd writes the users file it names.
        p = subprocess.run([binary("ternctl"), "passwd", "bob"], input=b"pw\n",
                           capture_output=True, env=tool_env(), timeout=30)
        assert p.returncode == 0, p.stderr
        assert users.read_text().startswith("bob:"), users.read_text()
        p = subprocess.run([binary("ternd"), "--check"], capture_output=True, env=tool_env(),
                           timeout=30)
        assert p.returncode == 0, p.stderr
        assert path.encode() in p.stdout, p.stdout
        os.remove(path)
        p = subprocess.run([binary("ternd"), "--check", "-o", f"user={TEST_USER}",
                            "-o", f"spool_dir={spool}"], capture_output=True, env=tool_env(),
                           timeout=30)
        assert p.returncode == 0 and b"(defaults)" in p.stdout, (p.stdout, p.stderr)
    finally:
        if os.path.exists(path):
            os.remove(path)
        if made_dir:
            os.rmdir("/etc/tern")


def test_started_as_user_keeps_the_split(make_tern, tmp_path):
    """Not root: the same three processes, all as the user who started it."""
    pw = pwd.getpwnam(TEST_USER)
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, pw.pw_uid, pw.pw_gid)
    cert, key = make_cert(home, "srv", "ec")
    os.chown(key, pw.pw_uid, pw.pw_gid)
    t = make_tern(start=False, spool_dir=home / "spool", tls_cert_file=cert, tls_key_file=key,
                  user="no-such-user-matters-not")

    def become():
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    t.preexec = become
    t.spool = home / "spool"
    t.start()
    parent, kids = processes(t)
    for p in [parent, *kids]:
        assert status(p)["Uid"] == [str(pw.pw_uid)] * 4, p
    for k in kids:
        st = status(k)
        assert st["NoNewPrivs"] == ["1"] and st["Seccomp"] == ["2"], k
        assert int(st["CapEff"][0], 16) == 0, k
    assert starttls_plain(t.port) == "TLSv1.3"


def starttls_plain(port):
    s = smtplib.SMTP("127.0.0.1", port, timeout=15 * SLOW)
    s.ehlo("client.test")
    s.starttls(context=client_ctx())
    got = s.sock.version()
    s.quit()
    return got


def test_relay_left_by_a_killed_parent_keeps_the_spool(make_tern, sink):
    """kill -9 of the parent alone: the relay, still finishing a message,
    holds the spool's lock, so a new ternd on the spool exits 1 until the
    relay is gone, and then starts. The relay is stopped (SIGSTOP) while the
    new one tries: a relay that finishes quickly would otherwise be gone
    before the new one looks, on a slow machine."""
    t = make_tern()
    relay = t.relay_pid()
    c = t.raw()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@src.test>").code == 250
    assert c.cmd(f"RCPT TO:<r-{uid()}@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: half\r\n\r\nthe relay waits for the rest\r\n")
    os.kill(relay, signal.SIGSTOP)
    try:
        t.proc.kill()  # the parent only
        t.proc.wait()
        t.expect_dead = True
        assert os.path.exists(f"/proc/{relay}"), "the relay finishes its session"
        other = make_tern(start=False, spool_dir=t.spool)
        other.start(wait=False)
        rc = other.proc.wait(timeout=30 * SLOW)
        assert rc == 1, other.log_tail()
        assert "in use by another ternd" in other.log_text()
    finally:
        os.kill(relay, signal.SIGCONT)
    c.close()

    def gone():
        try:
            with open(f"/proc/{relay}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    wait_for(gone, 15 * SLOW, desc="the orphaned relay gone")
    other.start()
    assert other.ctl("queue", "list").returncode == 0
