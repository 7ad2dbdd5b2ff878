"""
Fixtures for the end-to-end tests. TERN_TEST_WORKERS=N sets workers = N in
every config the fixtures write.

  sink        a running Sink (sysutil.Sink): the smarthost every ternd relays to
  make_tern   make_tern(start=True, **settings) -> a Tern (ternd from $TERN_BUILD)
              with a config file written into the test's directory
  tern        make_tern() with the default settings
  dnsmasq     a sysutil.Dnsmasq (not started: add records, then start();
              stop()/restart() mid-test), stopped at teardown
  make_sink   make_sink(host, port=None, meter=None, **server_kw) -> a started
              Sink on that loopback address (server_kw: aiosmtpd options such
              as tls_context), stopped at teardown

At teardown every ternd still running gets SIGTERM and must exit 0 within
30 s; with TERN_ASAN its stderr must hold no sanitizer report.
"""

import json
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from sysutil import (
    ASAN,
    SLOW,
    WAIT,
    RawSMTP,
    Dnsmasq,
    Sink,
    asan_errors,
    free_port,
    parse_log,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
# Started as root, ternd runs its relay and keys process as `user`: the
# tests make an account of their own for that (tern_user) and remove it.
TEST_USER = f"terntest{os.getpid()}" if os.geteuid() == 0 else None
BUILD = Path(os.environ.get("TERN_BUILD") or (REPO / "build")).resolve()
START_DEADLINE = 10.0 * (2 if ASAN else 1)
TEST_DEADLINE = 120 * (2 if ASAN else 1)


def tool_env():
    env = dict(os.environ)
    env.pop("TERN_CONFIG", None)
    if ASAN:
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1"
    return env


def binary(name):
    p = BUILD / name
    assert p.is_file() and os.access(p, os.X_OK), f"{p} not built (TERN_BUILD={BUILD})"
    return str(p)


class Tern:
    """One ternd instance with its own config, port and spool."""

    def __init__(self, workdir, sink, settings):
        self.workdir = Path(workdir)
        # Short path: the control socket lives in the spool (sun_path is 108 bytes).
        self.shortdir = Path(tempfile.mkdtemp(prefix="tern", dir="/tmp"))
        # Searchable, as /var/spool is: the relay (another user when the
        # tests run as root) reaches the maildrop beside the spool by path.
        os.chmod(self.shortdir, 0o711)
        self.spool = self.shortdir / "spool"
        self.port = free_port()
        self.conf = self.workdir / "tern.conf"
        self.stderr_path = self.workdir / "ternd.stderr"
        self.proc = None
        self.preexec = None  # callable run in the child before exec (e.g. setrlimit)
        self.expect_dead = False
        self.tool_asan = []  # sanitizer lines seen in ternctl / tern-sendmail output
        self.settings = {
            "hostname": "tern.test",
            "smtp_listen": f"127.0.0.1:{self.port}",
            "spool_dir": str(self.spool),
            "relay_networks": "127.0.0.1/32",
            "relay_domains": "inbound.test",
            "smarthost": f"127.0.0.1:{sink.port}" if sink else "",
            "smarthost_tls": "none",
            "retry_initial": "1s",
            "retry_max": "2s",
            "max_queue_lifetime": "1h",
        }
        # TERN_TEST_WORKERS=N runs every ternd of the suite with N receive
        # loops (races show up where sessions run on several threads).
        if os.environ.get("TERN_TEST_WORKERS"):
            self.settings["workers"] = os.environ["TERN_TEST_WORKERS"]
        if TEST_USER:
            self.settings["user"] = TEST_USER
        self.update(**settings)

    # -- configuration

    def update(self, **changes):
        """Change settings (None removes one) and rewrite the file."""
        for k, v in changes.items():
            if v is None:
                self.settings.pop(k, None)
            else:
                self.settings[k] = str(v)
        self.write_config()

    def write_config(self, text=None):
        if text is None:
            text = "# written by tests/system/conftest.py\n" + "".join(
                f"{k} = {v}\n" for k, v in self.settings.items()
            )
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.conf)

    # -- process

    def start(self, wait=True, args=()):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.expect_dead = False
        with open(self.stderr_path, "ab") as err:
            err.write(b"=== ternd start ===\n")
            err.flush()
            self.proc = subprocess.Popen(
                [binary("ternd"), "-c", str(self.conf), *args],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=tool_env(),
                cwd=str(self.workdir),
                preexec_fn=self.preexec,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=START_DEADLINE):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(f"ternd exited with {rc} during start:\n{self.log_tail()}")
            try:
                with RawSMTP(self.port, timeout=2.0 * SLOW) as c:
                    g = c.reply()
                    if g.code == 220:
                        c.send(b"QUIT\r\n")
                        c.wait_closed(2.0 * SLOW)  # the session is gone before tests start
                        return
                    last = str(g)
            except (OSError, EOFError, TimeoutError) as e:
                last = repr(e)
            time.sleep(0.05)
        raise AssertionError(f"ternd not ready in {timeout}s ({last}):\n{self.log_tail()}")

    def children(self):
        """The pids of ternd's child processes (the relay and the keys process)."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(x) for x in f.read().split()]

    def relay_pid(self):
        """The relay: the child that holds the smtp_listen socket (the one
        whose descriptors, memory and limits the SMTP load shows in)."""
        inodes = set()
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(path) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if int(cols[1].split(":")[1], 16) == self.port and cols[3] == "0A":
                        inodes.add(f"socket:[{cols[9]}]")

        def find():
            for k in self.children():
                try:
                    fds = os.listdir(f"/proc/{k}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        if os.readlink(f"/proc/{k}/fd/{fd}") in inodes:
                            return k
                    except OSError:
                        pass
            return None

        return wait_for(find, START_DEADLINE, desc=f"the relay listening on {self.port}")

    def prlimit_relay(self, resource_id, limits):
        """prlimit(2) on the relay, done as its user (root here may lack
        CAP_SYS_RESOURCE, which another user's process would need)."""
        pid = self.relay_pid()
        code = ("import resource,sys\n"
                "resource.prlimit(int(sys.argv[1]), int(sys.argv[2]),"
                " (int(sys.argv[3]), int(sys.argv[4])))\n")
        st = os.stat(f"/proc/{pid}")

        def become():
            if os.geteuid() == 0 and st.st_uid != 0:
                os.setgroups([])
                os.setgid(st.st_gid)
                os.setuid(st.st_uid)

        subprocess.run(["/usr/bin/python3", "-c", code, str(pid), str(resource_id),
                        str(limits[0]), str(limits[1])], check=True, preexec_fn=become,
                       timeout=30)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        assert self.running(), "ternd is not running"
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        """Signal and wait; returns (exit status, seconds taken)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"ternd did not exit within {timeout}s of signal {sig}")
        return rc, time.monotonic() - t0

    def kill9(self):
        """kill -9 of the whole daemon, as systemd's KillMode=control-group
        does: the parent and its children at once, so that no relay is left
        to finish what it held while the next ternd starts."""
        self.expect_dead = True
        try:
            kids = self.children()
        except OSError:
            kids = []
        self.proc.kill()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

        def gone(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except OSError:
                return True

        for k in kids:
            wait_for(lambda: gone(k), 10, desc=f"ternd's child {k} gone")
        wait_for(lambda: not self.listening(), 10, desc=f"port {self.port} closed")

    def listening(self):
        """Is anything listening on smtp_listen's port?"""
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(path) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if int(cols[1].split(":")[1], 16) == self.port and cols[3] == "0A":
                        return True
        return False

    # -- log

    def log_text(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_mark(self):
        return len(self.log_text())

    def events(self, event=None, since=0, **match):
        """Parsed log records, filtered by event name and exact key values."""
        out = []
        for rec in parse_log(self.log_text()[since:]):
            if event is not None and rec.get("event") != event:
                continue
            if all(str(rec.get(k)) == str(v) for k, v in match.items()):
                out.append(rec)
        return out

    def wait_event(self, event, timeout=WAIT, since=0, **match):
        return wait_for(
            lambda: self.events(event, since=since, **match),
            timeout,
            desc=f"log event {event} {match}; log tail:\n{self.log_tail()}",
        )[0]

    def qid_of(self, sender, timeout=WAIT):
        """The qid of the (single) message received from sender."""
        recs = wait_for(
            lambda: self.events("received", **{"from": sender}),
            timeout,
            desc=f"smtp received from={sender}",
        )
        assert len(recs) == 1, f"one received line for {sender}: {recs}"
        qid = recs[0].get("qid")
        assert qid and qid != "-", recs[0]["_raw"]
        return qid

    # -- spool

    def queued(self):
        """Queue ids of the messages in the queue, as `ternctl queue list`
        shows them (from the running daemon, or read from the spool while
        it is stopped)."""
        p = self.ctl("queue", "list", "--json")
        assert p.returncode == 0, f"ternctl queue list failed: {p.stderr}"
        return sorted(json.loads(line)["id"] for line in p.stdout.splitlines() if line.strip())

    # -- clients

    def smtp(self, source=None):
        s = smtplib.SMTP(timeout=15 * SLOW, source_address=(source, 0) if source else None)
        code, msg = s.connect("127.0.0.1", self.port)
        assert code == 220, (code, msg)
        return s

    def raw(self, source=None):
        c = RawSMTP(self.port, source=source)
        c.greeting()
        return c

    def send(self, sender, rcpts, data, source=None):
        """One transaction with smtplib; returns the reply to the data."""
        with self.smtp(source) as s:
            s.ehlo("client.test")
            code, msg = s.mail(sender)
            assert code == 250, (code, msg)
            for r in rcpts:
                code, msg = s.rcpt(r)
                assert code == 250, (r, code, msg)
            code, msg = s.data(data)
            assert code == 250, (code, msg)
            return msg.decode()

    def _run(self, argv, input=None, timeout=30 * SLOW):
        p = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=tool_env(),
            cwd=str(self.workdir),
        )
        bad = asan_errors(p.stderr.decode(errors="replace"))
        self.tool_asan.extend(bad)
        assert not bad, f"sanitizer report from {argv[0]}:\n{p.stderr.decode(errors='replace')}"
        return p

    def ternd(self, *args):
        """Run ternd to completion (for --check and usage errors)."""
        return self._run([binary("ternd"), *args])

    def ctl(self, *args):
        return self._run([binary("ternctl"), "-c", str(self.conf), *args])

    def sendmail(self, args, stdin):
        return self._run([binary("tern-sendmail"), "-C", str(self.conf), *args], input=stdin)

    # -- teardown

    def finish(self):
        """Stop if running; return a list of problems."""
        problems = []
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is None:
                try:
                    rc, took = self.stop(signal.SIGTERM, 30.0)
                    if rc != 0:
                        problems.append(f"ternd exited {rc} after SIGTERM at teardown")
                except AssertionError as e:
                    problems.append(str(e))
            elif not self.expect_dead and rc != 0:
                problems.append(f"ternd died during the test with status {rc}")
        if ASAN:
            bad = asan_errors(self.log_text())
            if bad:
                problems.append("sanitizer report in ternd stderr:\n" + "\n".join(bad[:20]))
        if problems:
            problems.append("log tail:\n" + self.log_tail())
        shutil.rmtree(self.shortdir, ignore_errors=True)
        return problems


# What the suite needs from the machine beyond the build, each with the
# Debian package that provides it (scripts/install-deps.sh --test installs
# them all). Checked once at the start: a missing piece fails the run at
# once with its package name, not dozens of tests later with a riddle.
PYTHON_MODULES = [("aiosmtpd", "python3-aiosmtpd"), ("dkim", "python3-dkim"),
                  ("nacl", "python3-nacl"), ("yaml", "python3-yaml"),
                  ("Milter", "python3-milter")]
PROGRAMS = [("swaks", "swaks"), ("dnsmasq", "dnsmasq-base"), ("openssl", "openssl"),
            ("/usr/sbin/postfix", "postfix"), ("/usr/sbin/sendmail", "postfix"),
            ("/usr/sbin/postqueue", "postfix"), ("chromium", "chromium"),
            # the DNSSEC-signed test DNS of the DANE tests (dnssec.py)
            ("/usr/sbin/nsd", "nsd"), ("/usr/sbin/unbound", "unbound"), ("ldns-signzone", "ldnsutils"),
            ("ldns-keygen", "ldnsutils"),
            # real rspamd in milter mode (test_milter.py)
            ("rspamd", "rspamd")]
# swaks --support lines ("=== TLS supported") and what makes them so.
SWAKS_FEATURES = [("TLS", "libnet-ssleay-perl"), ("Basic AUTH", "perl")]
# Postfix's SASL client (test_postfix_client) needs the PLAIN and LOGIN plugins.
SASL_PLUGINS = [("libplain.so", "libsasl2-modules"), ("liblogin.so", "libsasl2-modules")]


def missing_test_dependencies():
    """[(what, Debian package)] for every missing piece."""
    import importlib.util

    missing = []
    for mod, pkg in PYTHON_MODULES:
        if importlib.util.find_spec(mod) is None:
            missing.append((f"python module {mod}", pkg))
    for prog, pkg in PROGRAMS:
        if shutil.which(prog) is None:
            missing.append((f"program {prog}", pkg))
    if shutil.which("swaks") is not None:
        p = subprocess.run(["swaks", "--support"], capture_output=True, timeout=30)
        out = p.stdout.decode(errors="replace")
        for feature, pkg in SWAKS_FEATURES:
            if f"=== {feature} supported" not in out:
                missing.append((f"swaks {feature} support", pkg))
    sasl_dirs = [Path("/usr/lib/sasl2"), *Path("/usr/lib").glob("*/sasl2")]
    for plugin, pkg in SASL_PLUGINS:
        if not any(any(d.glob(f"{plugin}*")) for d in sasl_dirs):
            missing.append((f"Cyrus SASL plugin {plugin}", pkg))
    return missing


def pytest_sessionstart(session):
    missing = missing_test_dependencies()
    if missing:
        pkgs = sorted({pkg for _, pkg in missing})
        lines = "\n".join(f"  {what}: install {pkg}" for what, pkg in missing)
        pytest.exit(f"the system tests need:\n{lines}\n"
                    f"run scripts/install-deps.sh --test (apt-get install {' '.join(pkgs)})",
                    returncode=3)


@pytest.fixture(autouse=True)
def _deadline():
    """Hard cap per test so that one hang cannot stall the suite."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_DEADLINE}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TEST_DEADLINE)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session")
def tern_user():
    """The account ternd's relay and keys process run as (None when the
    tests do not run as root: ternd then stays the user it is)."""
    if TEST_USER is None:
        yield None
        return
    # Another suite may be adding its own account at this moment: useradd
    # then finds /etc/passwd locked and asks to try again.
    for attempt in range(20):
        p = subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                            "--shell", "/usr/sbin/nologin", TEST_USER],
                           capture_output=True, text=True)
        if p.returncode == 0:
            break
        assert "lock" in p.stderr and attempt < 19, f"useradd: {p.stderr}"
        time.sleep(0.5)
    yield TEST_USER
    for _ in range(20):
        if subprocess.run(["userdel", TEST_USER], capture_output=True).returncode not in (1, 10):
            break  # 1, 10: passwd or group file locked by another suite's account change
        time.sleep(0.5)


def let_user_through(path):
    """Let the relay's user reach files under path (x on the directories
    up to /tmp), as it reaches /etc/tern in production."""
    p = Path(path)
    while str(p) not in ("/", "/tmp"):
        st = p.stat()
        os.chmod(p, st.st_mode | 0o011)
        p = p.parent


def give_to_user(path):
    """Make path (a file the relay reads itself, e.g. smarthost_auth_file)
    the relay user's."""
    if TEST_USER:
        import pwd
        pw = pwd.getpwnam(TEST_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


@pytest.fixture
def sink():
    s = Sink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def make_tern(tmp_path, sink, tern_user):
    made = []
    let_user_through(tmp_path)

    def make(start=True, **settings):
        d = tmp_path / f"tern{len(made)}"
        d.mkdir()
        t = Tern(d, sink, settings)
        made.append(t)
        if start:
            t.start()
        return t

    yield make
    problems = []
    for t in made:
        problems.extend(t.finish())
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def tern(make_tern):
    return make_tern()


@pytest.fixture
def dnsmasq(tmp_path):
    d = Dnsmasq(str(tmp_path / "dnsmasq"))
    yield d
    d.stop()


@pytest.fixture
def dnssec(tmp_path):
    """A sysutil-style DNSSEC world (tests/system/dnssec.py): add zones and
    records, then start(); point dns_resolvers at .resolver."""
    from dnssec import DnssecDns

    d = DnssecDns(tmp_path / "dnssec")
    yield d
    d.stop()


@pytest.fixture
def make_sink():
    made = []

    def make(host, port=None, meter=None, **server_kw):
        s = Sink(port=port, host=host, meter=meter, **server_kw)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
