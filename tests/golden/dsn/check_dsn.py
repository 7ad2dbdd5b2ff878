#!/usr/bin/python3
"""Check every DSN (*.eml) in this directory with Python's email package.

Each file must parse without defects as an RFC 3464 / RFC 6522
multipart/report (report-type=delivery-status) with a human-readable part,
a (global-)delivery-status part whose fields are well formed, and, when
present, the returned original (message/rfc822, message/global,
text/rfc822-headers or message/global-headers). Lines must be CRLF and at
most 998 octets; a non-SMTPUTF8 report must be 7-bit in its own headers and
parts 1-2. Exit status 0 when every file passes, 1 otherwise.

Usage: check_dsn.py [DIR]   (default: the directory of this script)
"""

import email
import email.parser
import email.policy
import os
import re
import sys

STATUS_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
DATE_RE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|"
                     r"Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d [+-]\d{4}$")
SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}
ACTION_CLASS = {"failed": "45", "delayed": "4", "delivered": "2", "relayed": "2",
                "expanded": "2"}

# Values known for the files written by tests/unit/test_dsn.c.
EXPECT = {
    "failed.eml": {
        "to": "alice@example.org",
        "envid": "QQ+2B314",
        "rcpts": [{
            "Original-Recipient": "rfc822;bob+2Bx@example.com",
            "Final-Recipient": "rfc822; bob@example.com",
            "Action": "failed",
            "Status": "5.1.1",
            "Remote-MTA": "dns; mx.example.com",
            "Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.com>: Recipient address "
                               "rejected: User unknown in virtual mailbox table",
        }],
        "orig_subject": "Lunch",
        "orig_body": "Shall we meet at noon?\r\n-- \r\nAlice\r\n",
    },
}


class CheckError(Exception):
    pass


def need(cond, what):
    if not cond:
        raise CheckError(what)


def unfold(value):
    return re.sub(r"\r?\n[ \t]+", " ", str(value)).strip()


def check_lines(raw, ascii_upto):
    need(raw.endswith(b"\r\n"), "does not end with CRLF")
    for no, line in enumerate(raw.split(b"\r\n")[:-1], 1):
        need(b"\n" not in line and b"\r" not in line, "bare CR or LF in line %d" % no)
        need(len(line) <= 998, "line %d has %d octets" % (no, len(line)))
    head = raw[:ascii_upto]
    need(all(b < 0x80 and b != 0 for b in head), "8-bit or NUL octet in headers or parts 1-2")


def split_blocks(text):
    """Blocks of header-style fields separated by empty lines (for the
    global type, which the email package leaves unparsed)."""
    parser = email.parser.Parser(policy=email.policy.default)
    blocks = [b for b in re.split(r"\r?\n\r?\n", text.strip("\r\n")) if b.strip()]
    return [parser.parsestr(b + "\r\n", headersonly=True) for b in blocks]


def raw_bodies(raw, boundary):
    """The body octets of each part, cut at the delimiters (RFC 2046 §5.1.1):
    the email package parses the RFC 6533 global types as if they were one
    embedded message, so those are read from here instead."""
    delim = b"\r\n--" + boundary.encode()
    pieces = raw.split(delim)[1:]
    bodies = []
    for piece in pieces:
        if piece.startswith(b"--"):
            break
        need(piece.startswith(b"\r\n"), "text after a delimiter")
        head_end = piece.find(b"\r\n\r\n")
        need(head_end >= 0, "part without a header/body separator")
        bodies.append(piece[head_end + 4:])
    return bodies


def status_blocks(part, raw_body):
    ctype = part.get_content_type()
    if ctype == "message/delivery-status":
        payload = part.get_payload()
        need(isinstance(payload, list), "delivery-status payload not parsed into blocks")
        return payload
    return split_blocks(raw_body.decode("utf-8"))


def check_status(part, raw_body, expect):
    blocks = status_blocks(part, raw_body)
    need(len(blocks) >= 2, "delivery-status needs per-message and per-recipient blocks")
    msg_fields = blocks[0]
    need(unfold(msg_fields.get("Reporting-MTA", "")).startswith("dns; "), "Reporting-MTA")
    arrival = msg_fields.get("Arrival-Date")
    if arrival is not None:
        need(DATE_RE.match(unfold(arrival)), "Arrival-Date format: %r" % arrival)
    if expect and "envid" in expect:
        need(unfold(msg_fields.get("Original-Envelope-Id", "")) == expect["envid"],
             "Original-Envelope-Id")
    actions = []
    for i, rcpt in enumerate(blocks[1:]):
        final = unfold(rcpt.get("Final-Recipient", ""))
        need(re.match(r"^(rfc822|utf-8); \S", final), "Final-Recipient %r" % final)
        action = unfold(rcpt.get("Action", ""))
        need(action in ACTION_CLASS, "Action %r" % action)
        status = unfold(rcpt.get("Status", ""))
        need(STATUS_RE.match(status), "Status %r" % status)
        need(status[0] in ACTION_CLASS[action], "Status %s with Action %s" % (status, action))
        diag = rcpt.get("Diagnostic-Code")
        if diag is not None:
            need(re.match(r"^(smtp|X-[\w-]+); ", unfold(diag)), "Diagnostic-Code %r" % diag)
        for field in ("Last-Attempt-Date", "Will-Retry-Until"):
            if rcpt.get(field) is not None:
                need(DATE_RE.match(unfold(rcpt[field])), "%s format" % field)
        if expect and i < len(expect["rcpts"]):
            for key, want in expect["rcpts"][i].items():
                got = unfold(rcpt.get(key, ""))
                need(got == want, "%s: %r, want %r" % (key, got, want))
        actions.append(action)
    if expect:
        need(len(actions) == len(expect["rcpts"]), "recipient count")
    return actions


def check_returned(part, raw_body, expect, utf8):
    ctype = part.get_content_type()
    if ctype == "message/rfc822":
        payload = part.get_payload()
        need(isinstance(payload, list) and len(payload) == 1, "message/rfc822 payload")
        orig = payload[0]
        need(not orig.defects, "returned message defects: %r" % orig.defects)
        need(len(orig.keys()) > 0, "returned message has no header fields")
        if expect:
            need(orig["Subject"] == expect["orig_subject"], "returned Subject")
            body = orig.get_payload()
            need(body == expect["orig_body"], "returned body %r" % body)
    elif ctype in ("text/rfc822-headers", "message/global-headers", "message/global"):
        need(utf8 or ctype == "text/rfc822-headers", "%s in a non-SMTPUTF8 report" % ctype)
        orig = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw_body)
        need(len(orig.keys()) > 0, "returned header section is empty")
        if ctype != "message/global":
            need(orig.get_payload() in ("", None), "headers part carries a body")
        if expect:
            need(orig["Subject"] == expect["orig_subject"], "returned Subject")
    else:
        raise CheckError("unexpected third part %s" % ctype)


def check_file(path):
    name = os.path.basename(path)
    expect = EXPECT.get(name)
    with open(path, "rb") as f:
        raw = f.read()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    need(not msg.defects, "defects: %r" % msg.defects)
    need(msg.get_content_type() == "multipart/report", "not multipart/report")
    need(msg.get_param("report-type") == "delivery-status", "report-type")
    boundary = msg.get_boundary()
    need(boundary and len(boundary) <= 70, "boundary")
    need(re.match(r"^Mail Delivery System <MAILER-DAEMON@[^>]+>$", str(msg["From"])), "From")
    need(str(msg["Auto-Submitted"]) == "auto-replied", "Auto-Submitted")
    need(str(msg["MIME-Version"]) == "1.0", "MIME-Version")
    need(re.match(r"^<[^<>@\s]+@[^<>@\s]+>$", str(msg["Message-ID"])), "Message-ID")
    need(DATE_RE.match(unfold(msg["Date"])) and msg["Date"].datetime is not None, "Date")
    need(str(msg["Subject"]) in SUBJECTS.values(), "Subject %r" % msg["Subject"])
    if expect:
        addrs = msg["To"].addresses
        need(len(addrs) == 1 and addrs[0].addr_spec == expect["to"], "To %r" % msg["To"])

    parts = msg.get_payload()
    need(isinstance(parts, list) and len(parts) in (2, 3), "need 2 or 3 parts")
    for p in parts:
        need(not p.defects, "part defects: %r" % p.defects)
    human, report = parts[0], parts[1]
    need(human.get_content_type() == "text/plain", "part 1 is not text/plain")
    utf8 = report.get_content_type() == "message/global-delivery-status"
    need(utf8 or report.get_content_type() == "message/delivery-status", "part 2 type")

    bodies = raw_bodies(raw, boundary)
    need(len(bodies) == len(parts), "parts found by the email package and by delimiters differ")
    actions = check_status(report, bodies[1], expect)
    text = human.get_content()
    for rcpt in status_blocks(report, bodies[1])[1:]:
        addr = unfold(rcpt["Final-Recipient"]).split("; ", 1)[1]
        need("<%s>" % addr in text, "part 1 does not name %s" % addr)
    if "failed" in actions:
        want = SUBJECTS["failed"]
    elif "delayed" in actions:
        want = SUBJECTS["delayed"]
    else:
        want = SUBJECTS["success"]
    need(str(msg["Subject"]) == want, "Subject does not match the actions")

    if len(parts) == 3:
        check_returned(parts[2], bodies[2], expect, utf8)
    elif expect:
        raise CheckError("the original is missing")

    # Octet-level checks: CRLF, line lengths, 7-bit up to the third part.
    delim = b"\r\n--" + boundary.encode() + b"\r\n"
    idx = -1
    for _ in range(3):
        idx = raw.find(delim, idx + 1)
        if idx < 0:
            break
    check_lines(raw, 0 if utf8 else (idx if idx >= 0 else len(raw)))
    need(raw.count(b"\r\n--" + boundary.encode() + b"--\r\n") == 1, "closing delimiter")


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    files = sorted(f for f in os.listdir(directory) if f.endswith(".eml"))
    if not files:
        print("check_dsn: no .eml files in %s" % directory, file=sys.stderr)
        return 1
    bad = 0
    for f in files:
        try:
            check_file(os.path.join(directory, f))
            print("ok   %s" % f)
        except (CheckError, Exception) as e:  # any crash of the parser is a failure too
            bad += 1
            print("FAIL %s: %s" % (f, e))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
