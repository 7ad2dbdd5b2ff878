#!/usr/bin/python3
"""Verify tern's DKIM signatures with dkimpy (python3-dkim), an independent
implementation of RFC 6376 and RFC 8463.

Usage: verify_dkim.py DIR

DIR/keys.txt holds one "NAME TXT-VALUE" line per published key record
(NAME is SELECTOR._domainkey.DOMAIN); DIR/expect.txt one "FILE N" line per
message file of DIR that must carry exactly N DKIM-Signature fields, every
one of which must verify against those records (no real DNS is used).
Exit status 0 when every message passes, 1 otherwise (each failure printed).
"""

import os
import sys

import dkim


def main():
    d = sys.argv[1]
    records = {}
    with open(os.path.join(d, "keys.txt"), "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                name, value = line.split(b" ", 1)
                records[name.lower().rstrip(b".")] = value

    def dnsfunc(name, timeout=5):
        return records.get(name.lower().rstrip(b"."))

    bad = 0
    checked = 0
    with open(os.path.join(d, "expect.txt")) as f:
        expect = [ln.split() for ln in f if ln.strip()]
    for fname, n in expect:
        with open(os.path.join(d, fname), "rb") as f:
            msg = f.read()
        n = int(n)
        sigs = [ln for ln in msg.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                if ln.lower().startswith(b"dkim-signature:")]
        if len(sigs) != n:
            print(f"{fname}: {len(sigs)} DKIM-Signature fields, want {n}")
            bad += 1
            continue
        v = dkim.DKIM(msg, minkey=1024)
        for i in range(n):
            try:
                ok = v.verify(idx=i, dnsfunc=dnsfunc)
            except dkim.DKIMException as e:
                ok = False
                print(f"{fname}: signature {i}: {e}")
            if not ok:
                print(f"{fname}: signature {i} does not verify")
                bad += 1
            checked += 1
    print(f"verify_dkim: {checked} signatures checked, {bad} failures")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
