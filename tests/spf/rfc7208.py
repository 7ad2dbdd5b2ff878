#!/usr/bin/python3
"""
RFC 7208 conformance: runs every case of the openspf test suite (YAML) through
tests/spf/spf_suite (the SPF evaluator behind a fake resolver serving each
scenario's zone data) and compares the results. Any listed alternative
result counts; "explanation" is checked when given ("DEFAULT": the evaluator
used its default text). Explanations are compared case-insensitively: the
suite's expected %{ir} text has uppercase hex digits, RFC 7208 §7.4 lowercase,
and DNS names are case-insensitive.

usage: rfc7208.py SPF_SUITE_BINARY SUITE.yml
Prints one line per failure and a summary; exit 1 on any failure.
"""

import subprocess
import sys

import yaml


def hx(s):
    if isinstance(s, str):
        s = s.encode("utf-8", "surrogateescape")
    return s.hex() if s else "-"


def zone_lines(zonedata):
    out = ["R"]
    for name, recs in zonedata.items():
        has_txt = any(isinstance(r, dict) and "TXT" in r for r in recs)
        for r in recs:
            if r == "TIMEOUT":
                out.append(f"T {hx(name)}")
                continue
            for typ, val in r.items():
                if typ == "SPF":
                    # RFC 7208 drops type SPF; the suite expects drivers to
                    # serve SPF data as TXT when the name has no TXT records.
                    if has_txt:
                        continue
                    typ = "TXT"
                if typ == "TXT" and val == "NONE":
                    out.append(f"Z {hx(name)} NONE -")
                    continue
                if typ == "TXT" and isinstance(val, list):
                    val = "".join(val)
                if typ == "MX":
                    val = f"{val[0]} {val[1] or '.'}"
                out.append(f"Z {hx(name)} {typ} {hx(val)}")
    return out


def main():
    binary, suite = sys.argv[1], sys.argv[2]
    with open(suite, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    lines, cases = [], {}
    for si, doc in enumerate(docs):
        lines.extend(zone_lines(doc.get("zonedata") or {}))
        for name, t in doc["tests"].items():
            cid = f"s{si}-{len(cases)}"
            cases[cid] = (doc["description"], name, t)
            lines.append(f"C {cid} {hx(str(t['host']))} {hx(t['mailfrom'])} {hx(t['helo'])}")
    p = subprocess.run([binary], input="\n".join(lines) + "\n", capture_output=True, text=True,
                       timeout=300)
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        print(f"spf_suite exited with status {p.returncode}")
        return 1
    got = {}
    for ln in p.stdout.splitlines():
        cid, res, dflt, exp = ln.split(" ")
        got[cid] = (res, dflt == "1", "" if exp == "-" else bytes.fromhex(exp).decode("latin-1"))
    failed = 0
    for cid, (section, name, t) in cases.items():
        want = t["result"] if isinstance(t["result"], list) else [t["result"]]
        if cid not in got:
            print(f"FAIL {section} / {name}: no result")
            failed += 1
            continue
        res, dflt, exp = got[cid]
        problem = None
        if res not in want:
            problem = f"result {res}, want {'|'.join(want)}"
        elif "explanation" in t and res == "fail":
            wexp = t["explanation"]
            if wexp == "DEFAULT":
                if not dflt:
                    problem = f"explanation {exp!r}, want the default"
            elif dflt or exp.lower() != wexp.lower():
                problem = f"explanation {exp!r}{' (default)' if dflt else ''}, want {wexp!r}"
        if problem:
            failed += 1
            print(f"FAIL {section} / {name}: {problem}")
    total = len(cases)
    print(f"RFC 7208 test suite: {total - failed}/{total} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
