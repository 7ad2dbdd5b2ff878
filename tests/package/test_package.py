"""
The Debian package, end to end (make package-test; root, Debian 12):
build it from a clean export of the checkout with dpkg-buildpackage, run
lintian, install it with dpkg -i beside the Postfix that the test suite
installs, run the installed ternd as systemd would run tern.service (its
ExecStart line, as the packaged account, with its UMask and LimitNOFILE and a
notify socket) on a test configuration in /etc/tern/tern.conf, relay one
message handed to the installed tern-sendmail to a sink, stop it, and purge
the package. The machine is left as it was: the test refuses to start when
tern is installed or its paths exist, and removes the account it made.
"""

import grp
import os
import pwd
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "system"))
from sysutil import WAIT, Sink, free_port, uid  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "tern"
# Everything the package puts on the machine, or makes there.
PATHS = [
    "/etc/tern",
    "/var/spool/tern",
    "/lib/systemd/system/tern.service",
    "/usr/sbin/ternd",
    "/usr/sbin/ternctl",
    "/usr/sbin/tern-sendmail",
    "/usr/lib/sysusers.d/tern.conf",
    "/usr/lib/tmpfiles.d/tern.conf",
    "/usr/share/man/man8/ternd.8.gz",
    "/etc/systemd/system/multi-user.target.wants/tern.service",
]
BUILD_TIMEOUT = 1800


def run(argv, timeout=120, check=True, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def dpkg(*args):
    """dpkg, waiting out another dpkg or apt holding the lock (the machine
    is shared with other work)."""
    deadline = time.monotonic() + 300
    while True:
        p = run(["dpkg", *args], timeout=300, check=False)
        if p.returncode == 0:
            return p
        if "lock" not in p.stderr or time.monotonic() > deadline:
            raise AssertionError(f"dpkg {args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        time.sleep(1)


def package_status(name):
    p = run(["dpkg-query", "-W", "-f=${Status}", name], check=False)
    return p.stdout if p.returncode == 0 else "not-installed"


def account_entries():
    """The passwd and group entries of the account (None when absent)."""
    try:
        u = tuple(pwd.getpwnam(ACCOUNT))
    except KeyError:
        u = None
    try:
        g = tuple(grp.getgrnam(ACCOUNT))[:3]
    except KeyError:
        g = None
    return u, g


def failure_lines(out):
    """The lines that say why a test failed (cmocka's ERROR with the line
    before it, meson's FAIL), which a long build log pushes out of its tail."""
    lines = out.splitlines()
    keep = []
    for i, line in enumerate(lines):
        if "[  ERROR   ]" in line or " FAIL " in line or line.startswith("ERROR:"):
            keep.extend(lines[max(0, i - 1):i + 1])
    return "\n".join(keep[-60:])


@pytest.fixture(scope="module")
def debs():
    """The .deb files built by scripts/build-deb.sh (dpkg-buildpackage -b
    -us -uc on a clean export of the checkout)."""
    assert os.geteuid() == 0, "the package test installs a package: run it as root"
    if package_status("tern").startswith("install"):
        pytest.fail("tern is installed on this machine: the test would remove it")
    there = [p for p in PATHS if os.path.lexists(p)]
    if there:
        pytest.fail(f"{there} exist: the test would replace or remove them")
    work = Path(tempfile.mkdtemp(prefix="tern-pkg."))
    p = run([str(REPO / "scripts" / "build-deb.sh"), str(work)], timeout=BUILD_TIMEOUT,
            check=False)
    assert p.returncode == 0, (f"build-deb.sh failed:\n{failure_lines(p.stdout)}\n"
                               f"{p.stdout[-6000:]}\n{p.stderr[-4000:]}")
    found = {d.name.split("_")[0]: d for d in work.glob("*.deb")}
    assert {"tern", "tern-mta"} <= set(found), sorted(found)
    yield found, work
    shutil.rmtree(work, ignore_errors=True)


def test_lintian_clean(debs):
    """No error and no warning, pedantic tags included (the remaining
    informational ones are explained in the README)."""
    found, work = debs
    changes = next(work.glob("*.changes"))
    p = run(["lintian", "--fail-on", "error,warning", "--pedantic", str(changes)], timeout=600,
            check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    tags = [l for l in p.stdout.splitlines() if l[:2] in ("E:", "W:", "P:")]
    assert not tags, "\n".join(tags)


def test_tern_mta_is_the_sendmail_alternative(debs):
    """tern-mta (not installed here: it would replace Postfix) links the
    system's sendmail to tern-sendmail and is a mail-transport-agent like
    the others, so that dpkg swaps one for the other; tern itself is not."""
    found, _ = debs
    fields = {f: run(["dpkg-deb", "-f", str(found["tern-mta"]), f]).stdout.strip()
              for f in ("Provides", "Conflicts", "Replaces", "Depends")}
    for f in ("Provides", "Conflicts", "Replaces"):
        assert fields[f] == "mail-transport-agent", fields
    assert fields["Depends"].startswith("tern (>="), fields
    listing = run(["dpkg-deb", "-c", str(found["tern-mta"])]).stdout
    for link in ("./usr/sbin/sendmail -> tern-sendmail",
                 "./usr/lib/sendmail -> ../sbin/tern-sendmail"):
        assert link in listing, listing
    tern_fields = run(["dpkg-deb", "-f", str(found["tern"]), "Provides", "Conflicts"]).stdout
    assert "mail-transport-agent" not in tern_fields, tern_fields
    assert "sendmail" not in run(["dpkg-deb", "-c", str(found["tern"])]).stdout.replace(
        "tern-sendmail", "")


def unit_service(path):
    """The [Service] settings of a unit file (the last of repeated keys)."""
    out, section = {}, None
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def exec_start(service):
    """ExecStart as argv: systemd's prefixes (@-:+!) are not used and
    specifiers or variables would need systemd, so both are refused."""
    cmd = service["ExecStart"]
    assert cmd and cmd[0] not in "@-:+!", f"unexpected prefix in ExecStart={cmd}"
    assert "$" not in cmd and "%" not in cmd, f"ExecStart={cmd} needs systemd to expand"
    argv = shlex.split(cmd)
    assert os.path.isabs(argv[0]), argv
    return argv


def as_service(service, account):
    """preexec_fn: what systemd does for tern.service before exec that
    matters here: LimitNOFILE, UMask, and the account (User= if the unit
    sets one, else the packaged account, as the test cannot start it as root
    without the privilege separation it does not test)."""
    pw = pwd.getpwnam(service.get("User", account))
    # systemd raises the hard limit too; a container may not let us.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = int(service["LimitNOFILE"])
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)
    umask = int(service.get("UMask", "0022"), 8)

    def pre():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
        os.umask(umask)
        os.chdir("/")

    return pre


def notify_socket(tmpdir):
    """A notify socket as systemd gives Type=notify services (the service
    account must be able to send to it)."""
    path = os.path.join(tmpdir, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    os.chmod(path, 0o777)
    s.settimeout(WAIT)
    return s, path


def next_state(sock):
    try:
        data = sock.recv(4096).decode()
    except socket.timeout:
        raise AssertionError(f"no sd_notify message within {WAIT}s")
    return dict(l.split("=", 1) for l in data.splitlines() if "=" in l)


def test_install_run_relay_purge(debs):
    found, _ = debs
    before_account = account_entries()
    postfix_before = package_status("postfix")
    tmpdir = tempfile.mkdtemp(prefix="tern-pkg-run.")
    os.chmod(tmpdir, 0o755)
    sink = Sink()
    sink.start()
    proc = None
    installed = False
    try:
        installed = True  # purged at the end even if the install fails halfway
        dpkg("-i", str(found["tern"]))
        check_installed(postfix_before)

        # The shipped example: valid, and the file read without -c.
        service = unit_service("/lib/systemd/system/tern.service")
        argv = exec_start(service)
        p = run([argv[0], "--check"], check=False, preexec_fn=as_service(service, ACCOUNT))
        assert p.returncode == 0, p.stderr
        assert "/etc/tern/tern.conf is valid" in p.stdout, p.stdout

        port = free_port()
        Path("/etc/tern/tern.conf").write_text(
            "# written by tests/package/test_package.py\n"
            "hostname = tern.test\n"
            f"smtp_listen = 127.0.0.1:{port}\n"
            "relay_networks = 127.0.0.0/8\n"
            f"smarthost = [127.0.0.1]:{sink.port}\n"
            "smarthost_tls = none\n"
            "spool_dir = /var/spool/tern\n"
        )

        sock, sock_path = notify_socket(tmpdir)
        log_path = os.path.join(tmpdir, "ternd.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": sock_path},
                preexec_fn=as_service(service, ACCOUNT),
            )
        st = next_state(sock)
        assert st.get("READY") == "1", (st, Path(log_path).read_text())

        # tern-sendmail without -C submits to the smtp_listen of the default file.
        rcpt = f"rcpt-{uid()}@example.org"
        env = {k: v for k, v in os.environ.items() if k != "TERN_CONFIG"}
        p = run(
            ["/usr/sbin/tern-sendmail", "-f", "sender@tern.test", rcpt],
            input="Subject: package test\n\nrelayed by the installed tern\n",
            env=env,
        )
        msgs = sink.wait_to(rcpt)
        assert msgs[0].mail_from == "sender@tern.test"
        assert b"relayed by the installed tern" in msgs[0].data
        # ternctl without -c finds the daemon through the default file.
        p = run(["/usr/sbin/ternctl", "queue", "summary"], env=env, check=False)
        assert p.returncode == 0, p.stderr

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, Path(log_path).read_text()
        proc = None
        assert next_state(sock).get("STOPPING") == "1"
        sock.close()
        log = Path(log_path).read_text()
        assert "main stopped" in log, log

        dpkg("--purge", "tern")
        installed = False
        left = [p for p in PATHS if os.path.lexists(p)]
        assert not left, f"left after purge: {left}"
        assert package_status("tern") in ("not-installed", "unknown ok not-installed")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        if installed:
            dpkg("--purge", "tern")
        if before_account == (None, None):
            # The package made the account; Debian leaves system accounts on
            # purge, the test takes it away again.
            run(["userdel", ACCOUNT], check=False)
            run(["groupdel", ACCOUNT], check=False)
        sink.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert account_entries() == before_account
    assert package_status("postfix") == postfix_before


def check_installed(postfix_before):
    """What dpkg -i must have made: the account, the spool, the unit, the
    manual pages; Postfix untouched."""
    pw = pwd.getpwnam(ACCOUNT)
    assert pw.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin"), pw
    st = os.stat("/var/spool/tern")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (pw.pw_uid, pw.pw_gid, 0o700)
    assert os.path.isfile("/etc/tern/tern.conf")
    assert "/etc/tern/tern.conf" in run(["dpkg-query", "-W", "-f=${Conffiles}", "tern"]).stdout
    for page in ("ternd", "tern.conf", "ternctl", "tern-sendmail"):
        run(["man", "-w", page])
    p = run(["systemd-analyze", "verify", "/lib/systemd/system/tern.service"], check=False)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr
    # Beside Postfix: its sendmail is still the system's.
    assert package_status("postfix") == postfix_before
    if postfix_before.startswith("install"):
        assert run(["dpkg", "-S", "/usr/sbin/sendmail"]).stdout.startswith("postfix")
