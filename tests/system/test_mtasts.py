

def test_policy_server_with_wrong_certificate_is_webpki_invalid(world, tmp_path):
    world.sts_txt("1")
    world.dns.start()
    # mta-sts.sts.test answers with a certificate for another name.
    world.web.httpd.server_close()
    world.web = PolicyServer(world.web_addr, *world.wrong)
    world.web.policy("enforce")
    world.web.start()
    s = world.sink(cert=world.wrong)
    t = world.tern(tls_rpt="yes")
    send(t, "no policy")
    wait_for(lambda: s.snapshot(), desc="delivered as without a policy")
    ev = t.wait_event("no_policy", result="sts-webpki-invalid")
    assert "https://mta-sts.sts.test" in ev["reason"]
    text = next((t.spool / "tlsrpt").iterdir()).read_text()
    assert "\tno-policy-found\tsts-webpki-invalid\t" in text
