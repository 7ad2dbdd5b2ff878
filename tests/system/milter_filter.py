"""A milter filter for test_milter.py, written with Debian's python3-milter
(libmilter underneath): run as `python3 milter_filter.py SOCKET LOG`. What
it does depends on words in the Subject; every callback it sees is
appended to LOG as one JSON line, so tests can check what tern sent."""
import json
import os
import sys
import threading
import time

import Milter

SOCKET, LOG = sys.argv[1], sys.argv[2]
lock = threading.Lock()


def note(**kw):
    with lock, open(LOG, "a") as f:
        f.write(json.dumps(kw) + "\n")


class Filter(Milter.Base):
    def __init__(self):
        self.subject = ""
        self.headers = []
        self.chunks = b""
        self.rcpts = []

    def connect(self, hostname, family, hostaddr):
        note(step="connect", hostname=hostname, addr=str(hostaddr[0]) if hostaddr else None,
             port=hostaddr[1] if hostaddr else None, client_port=self.getsymval("{client_port}"),
             client_addr=self.getsymval("{client_addr}"), j=self.getsymval("j"),
             daemon=self.getsymval("{daemon_name}"))
        return Milter.CONTINUE

    def hello(self, name):
        note(step="helo", name=name)
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        # A connection may carry several messages.
        self.subject, self.headers, self.chunks, self.rcpts = "", [], b"", []
        self.mailfrom = mailfrom
        note(step="mail", addr=mailfrom, mail_addr=self.getsymval("{mail_addr}"),
             auth_authen=self.getsymval("{auth_authen}"), auth_type=self.getsymval("{auth_type}"))
        if "mailreject" in mailfrom:
            self.setreply("553", "5.7.1", "Sender refused by the test filter")
            return Milter.REJECT
        if "mailtempfail" in mailfrom:
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        self.rcpts.append(to)
        note(step="rcpt", addr=to, rcpt_addr=self.getsymval("{rcpt_addr}"))
        if "refuse" in to:
            return Milter.REJECT
        return Milter.CONTINUE

    def header(self, name, value):
        self.headers.append((name, value))
        if name.lower() == "subject":
            self.subject = value
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def abort(self):
        note(step="abort")
        return Milter.CONTINUE

    def body(self, chunk):
        self.chunks += chunk
        return Milter.CONTINUE

    def eom(self):
        s = self.subject
        note(step="eom", subject=s, qid=self.getsymval("i"), headers=self.headers,
             body=self.chunks.decode("utf-8", "replace"), rcpts=self.rcpts)
        if "stall" in s:
            time.sleep(20)
            return Milter.CONTINUE
        if "reject" in s:
            self.setreply("554", "5.7.1", "Rejected by the test filter")
            return Milter.REJECT
        if "tempfail" in s:
            return Milter.TEMPFAIL
        if "discard" in s:
            return Milter.DISCARD
        if "quarantine" in s:
            self.quarantine("test quarantine")
        if "addheader" in s:
            self.addheader("X-Milter-Added", "yes")
        if "insheader" in s:
            self.addheader("X-Milter-Top", "first", 0)
        if "chgheader" in s:
            self.chgheader("X-Change", 1, "changed")
        if "delheader" in s:
            self.chgheader("X-Delete", 1, "")
        if "replbody" in s:
            self.replacebody(b"replaced by the filter\r\n")
        if "addrcpt" in s:
            self.addrcpt("<added@example.com>")
        if "delrcpt" in s:
            self.delrcpt("<gone@example.com>")
        if "chgfrom" in s:
            self.chgfrom("<new-sender@example.com>")
        return Milter.ACCEPT


def main():
    Milter.factory = Filter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT
                     | Milter.DELRCPT | Milter.CHGFROM | Milter.QUARANTINE)
    # The relay (another user under privilege separation) must be able to
    # connect to a unix socket: it needs write permission on it.
    os.umask(0)
    Milter.runmilter("ternmiltertest", SOCKET, 60)


main()
