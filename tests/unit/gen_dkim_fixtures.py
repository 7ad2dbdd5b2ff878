#!/usr/bin/python3
"""Make tests/unit/dkim_fixtures.h: messages signed by dkimpy (python3-dkim)
with an RSA-2048 and an Ed25519 key, in every canonicalization, and the key
records, for test_authres.c. Run it again only to change the fixtures:
    /usr/bin/python3 tests/unit/gen_dkim_fixtures.py > tests/unit/dkim_fixtures.h
    clang-format -i tests/unit/dkim_fixtures.h
"""
import base64
import subprocess
import sys
import tempfile

import dkim
import nacl.signing

MSG = (b"Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
       b"From: Alice  Example <alice@example.com>\r\n"
       b"To: bob@example.net\r\n"
       b"Subject:  a  folded\r\n\tsubject   with  spaces \r\n"
       b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
       b"Message-ID: <fixture@example.com>\r\n"
       b"\r\n"
       b"Hello  Bob,   \r\n"
       b"\ttabs\tand  spaces \t\r\n"
       b".a line that starts with a dot\r\n"
       b"\r\n"
       b"bye\r\n"
       b"\r\n"
       b"\r\n")


def c_str(b):
    out = []
    for i in range(0, len(b), 60):
        chunk = b[i:i + 60]
        s = "".join(chr(c) if 32 <= c < 127 and chr(c) not in '"\\?' else "\\%03o" % c
                    for c in chunk)
        out.append('    "%s"' % s)
    return "\n".join(out) if out else '    ""'


def main():
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["openssl", "genrsa", "-out", d + "/k.pem", "2048"], check=True,
                       capture_output=True)
        rsa_priv = open(d + "/k.pem", "rb").read()
        pub = subprocess.run(["openssl", "rsa", "-in", d + "/k.pem", "-pubout", "-outform",
                              "DER"], check=True, capture_output=True).stdout
    rsa_rec = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)
    seed = nacl.signing.SigningKey.generate()
    ed_priv = base64.b64encode(bytes(seed))
    ed_rec = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(seed.verify_key))
    heads = [b"from", b"to", b"subject", b"date", b"message-id"]
    fx = []
    for alg, key, sel in ((b"rsa-sha256", rsa_priv, b"rsa"), (b"ed25519-sha256", ed_priv, b"ed")):
        for hc in (b"simple", b"relaxed"):
            for bc in (b"simple", b"relaxed"):
                sig = dkim.sign(MSG, sel, b"example.com", key, canonicalize=(hc, bc),
                                include_headers=heads, signature_algorithm=alg)
                fx.append(("%s %s/%s" % (alg.decode(), hc.decode(), bc.decode()), sig + MSG))
    sig = dkim.sign(MSG, b"rsa", b"example.com", rsa_priv, canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=heads, length=True)
    fx.append(("rsa-sha256 l=", sig + MSG))
    w = sys.stdout.write
    w("/* Made by gen_dkim_fixtures.py (dkimpy): do not edit. */\n")
    w("static const char fx_rsa_record[] =\n%s;\n" % c_str(rsa_rec))
    w("static const char fx_ed_record[] =\n%s;\n" % c_str(ed_rec))
    w("static const struct {\n    const char *name, *msg;\n} fx_signed[] = {\n")
    for name, m in fx:
        w('    { "%s",\n%s },\n' % (name, c_str(m)))
    w("};\n")


main()
