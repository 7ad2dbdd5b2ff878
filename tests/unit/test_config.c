/*
 * Unit tests for src/config: defaults, a file using every kind of value,
 * overrides, quoting and comments, every error message with its location,
 * check_files, and the golden files in tests/golden/config (NAME.conf is
 * loaded, NAME.err holds the exact expected error text, empty when good).
 * Each test runs in a fresh mkdtemp directory that is removed afterwards.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "util/log.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static char tmpdir[PATH_MAX];
static int olddir = -1;

static int
setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/tern-test-config.XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    olddir = open(".", O_RDONLY | O_DIRECTORY);
    if (olddir < 0 || chdir(tmpdir) < 0)
        return -1;
    return 0;
}

static int
teardown(void **state)
{
    DIR *d;
    struct dirent *de;
    /* A failed test may have left us elsewhere (the golden directory):
     * only ever clean up inside our own temporary directory. */
    if (chdir(tmpdir) < 0)
        return -1;
    d = opendir(".");
    while (d != NULL && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            unlink(de->d_name);
    }
    if (d != NULL)
        closedir(d);
    if (fchdir(olddir) < 0)
        return -1;
    close(olddir);
    return rmdir(tmpdir);
}

static void
write_file(const char *name, const char *text, size_t len, mode_t mode)
{
    int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(close(fd), 0);
}

/* Write text to tern.conf and load it; errors go to *errs. */
static struct config *
load_text(const char *text, const char *const *ov, size_t n_ov, bool check, struct buf *errs)
{
    if (text != NULL)
        write_file("tern.conf", text, strlen(text), 0644);
    return config_load(text ? "tern.conf" : NULL, ov, n_ov, check, errs);
}

static void
test_defaults(void **state)
{
    struct buf errs = BUF_INIT;
    struct config *c = config_load(NULL, NULL, 0, true, &errs);
    char a[64];
    assert_non_null(c);
    assert_int_equal(errs.len, 0);
    assert_int_equal(c->refs, 1);
    assert_null(c->path);
    assert_non_null(c->hostname);
    assert_true(strlen(c->hostname) > 0);
    assert_null(strchr(c->hostname, ' '));
    assert_int_equal(c->n_smtp_listen, 1);
    assert_string_equal(c->smtp_listen[0].host, "127.0.0.1");
    assert_int_equal(c->smtp_listen[0].port, 2525);
    assert_int_equal(c->n_submission_listen, 0);
    assert_int_equal(c->n_smtps_listen, 0);
    assert_string_equal(c->spool_dir, CONFIG_DEFAULT_SPOOL);
    assert_int_equal(c->n_relay_networks, 2);
    assert_int_equal(c->relay_networks[0].family, AF_INET);
    assert_int_equal(c->relay_networks[0].prefix, 8);
    assert_string_equal(inet_ntop(AF_INET, c->relay_networks[0].addr, a, sizeof(a)), "127.0.0.0");
    assert_int_equal(c->relay_networks[1].family, AF_INET6);
    assert_int_equal(c->relay_networks[1].prefix, 128);
    assert_int_equal(c->n_relay_domains, 0);
    assert_string_equal(c->smarthost.host, "");
    assert_null(c->smarthost_auth_file);
    assert_int_equal(c->smarthost_tls, TLS_OPPORTUNISTIC);
    assert_int_equal(c->delivery_port, 25);
    assert_int_equal(c->n_dns_resolvers, 0);
    assert_null(c->tls_cert_file);
    assert_null(c->tls_key_file);
    assert_null(c->tls_ca_file);
    assert_null(c->auth_users_file);
    assert_int_equal(c->n_dkim_sign, 0);
    assert_int_equal(c->max_message_size, 52428800);
    assert_int_equal(c->retry_initial_ms, 60000);
    assert_int_equal(c->retry_max_ms, 3600000);
    assert_int_equal(c->max_queue_lifetime_ms, 5 * 86400000LL);
    assert_string_equal(c->metrics_listen.host, "");
    assert_int_equal(c->log_format, LOGFMT_TEXT);
    assert_int_equal(c->max_recipients, 1000);
    assert_int_equal(c->max_sessions, 1000);
    assert_int_equal(c->max_sessions_per_ip, 100);
    assert_int_equal(c->reserved_sessions, 100); /* a tenth of max_sessions */
    assert_int_equal(c->workers, config_default_workers());
    assert_true(c->workers >= 1 && c->workers <= CONFIG_WORKERS_AUTO_MAX);
    assert_int_equal(c->max_errors, 20);
    assert_int_equal(c->smtp_timeout_ms, 300000);
    assert_int_equal(c->data_timeout_ms, 180000);
    assert_int_equal(c->min_data_rate, 500);
    assert_int_equal(c->delivery_concurrency, 20);
    assert_int_equal(c->delivery_max_msgs_per_conn, 100);
    assert_int_equal(c->connect_timeout_ms, 30000);
    assert_int_equal(c->delivery_timeout_ms, 300000);
    assert_int_equal(c->idle_conn_timeout_ms, 5000);
    assert_int_equal(c->log_level, LOG_INFO);
    config_unref(c);
    buf_fini(&errs);
}

static const char full_conf[] =
    "# every kind of value\n"
    "\n"
    "hostname = MX1.Example.ORG\n"
    "smtp_listen = 0.0.0.0:25 [::]:25\n"
    "submission_listen = 127.0.0.1:587\n"
    "smtps_listen = [::1]:465\n"
    "spool_dir = \"/var/spool/tern test\"   # quoted: keeps the space\n"
    "relay_networks = 10.1.2.3/8 192.168.0.0/16 2001:db8::/32 ::1\n"
    "relay_domains = Example.COM. backup.example.net b\303\274cher.de .Sub.Example.COM.\n"
    "smarthost = [192.0.2.1]:587\n"
    "smarthost_auth_file = smarthost.auth\n"
    "smarthost_tls = REQUIRED\n"
    "delivery_port = 2526\n"
    "dns_resolvers = 192.0.2.53 [2001:db8::53]:5353\n"
    "tls_cert_file = cert.pem\n"
    "tls_key_file = key.pem\n"
    "tls_ca_file = ca.pem\n"
    "auth_users_file = users\n"
    "dkim_sign = Example.COM:s2024:dkim.key example.net:sel.sub:dkim:2.key\n"
    "max_message_size = 10m\n"
    "retry_initial = 30s\n"
    "retry_max = 2h\n"
    "max_queue_lifetime = 3d\n"
    "metrics_listen = 127.0.0.1:9100\n"
    "log_format = json\n"
    "\tmax_recipients=50\n"
    "max_sessions = 10 # trailing comment\n"
    "max_sessions_per_ip = 3\n"
    "max_errors = 5\n"
    "smtp_timeout = 120\n"
    "data_timeout = 1m\n"
    "delivery_concurrency = 4\n"
    "delivery_max_msgs_per_conn = 7\n"
    "connect_timeout = 10s\n"
    "delivery_timeout = 2m\n"
    "idle_conn_timeout = 0\n"
    "log_level = debug"; /* no newline at the end */

/* A DKIM key that loads (check_files loads dkim_sign keys): Ed25519, PKCS#8. */
static const char dkim_key_pem[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEINsKVMCsuJTPnIMGY+YcmXMJiEiTGOeTkTXPQn5lAlUm\n"
    "-----END PRIVATE KEY-----\n";

static void
test_full_file(void **state)
{
    struct buf errs = BUF_INIT;
    static const char *const files[] = { "smarthost.auth", "cert.pem", "key.pem", "ca.pem", "users",
        "dkim.key", "dkim:2.key" };
    for (size_t i = 0; i < N(files); i++) {
        if (strstr(files[i], "dkim") != NULL)
            write_file(files[i], dkim_key_pem, strlen(dkim_key_pem), 0600);
        else
            write_file(files[i], "x\n", 2, 0600);
    }
    struct config *c = load_text(full_conf, NULL, 0, true, &errs);
    if (c == NULL)
        fail_msg("unexpected errors: %s", errs.data);
    assert_string_equal(c->path, "tern.conf");
    assert_string_equal(c->hostname, "MX1.Example.ORG");
    assert_int_equal(c->n_smtp_listen, 2);
    assert_string_equal(c->smtp_listen[0].host, "0.0.0.0");
    assert_string_equal(c->smtp_listen[1].host, "::");
    assert_int_equal(c->smtp_listen[1].port, 25);
    assert_int_equal(c->submission_listen[0].port, 587);
    assert_string_equal(c->smtps_listen[0].host, "::1");
    assert_string_equal(c->spool_dir, "/var/spool/tern test");
    assert_int_equal(c->n_relay_networks, 4);
    assert_int_equal(c->relay_networks[0].addr[0], 10);
    assert_int_equal(c->relay_networks[0].addr[1], 0); /* host bits cleared */
    assert_int_equal(c->relay_networks[3].prefix, 128);
    assert_int_equal(c->n_relay_domains, 4);
    assert_string_equal(c->relay_domains[0], "example.com");
    assert_string_equal(c->relay_domains[1], "backup.example.net");
    assert_string_equal(c->relay_domains[2], "b\303\274cher.de");
    assert_string_equal(c->relay_domains[3], ".sub.example.com"); /* subdomains */
    assert_string_equal(c->smarthost.host, "192.0.2.1");
    assert_int_equal(c->smarthost.port, 587);
    assert_string_equal(c->smarthost_auth_file, "smarthost.auth");
    assert_int_equal(c->smarthost_tls, TLS_REQUIRED);
    assert_int_equal(c->delivery_port, 2526);
    assert_int_equal(c->n_dns_resolvers, 2);
    assert_int_equal(c->dns_resolvers[0].port, 53);
    assert_string_equal(c->dns_resolvers[1].host, "2001:db8::53");
    assert_int_equal(c->dns_resolvers[1].port, 5353);
    assert_string_equal(c->tls_cert_file, "cert.pem");
    assert_string_equal(c->tls_key_file, "key.pem");
    assert_string_equal(c->tls_ca_file, "ca.pem");
    assert_string_equal(c->auth_users_file, "users");
    assert_int_equal(c->n_dkim_sign, 2);
    assert_string_equal(c->dkim_sign[0].domain, "example.com");
    assert_string_equal(c->dkim_sign[0].selector, "s2024");
    assert_string_equal(c->dkim_sign[0].keyfile, "dkim.key");
    assert_string_equal(c->dkim_sign[1].selector, "sel.sub");
    assert_string_equal(c->dkim_sign[1].keyfile, "dkim:2.key");
    assert_int_equal(c->max_message_size, 10 << 20);
    assert_int_equal(c->retry_initial_ms, 30000);
    assert_int_equal(c->retry_max_ms, 7200000);
    assert_int_equal(c->max_queue_lifetime_ms, 3 * 86400000LL);
    assert_string_equal(c->metrics_listen.host, "127.0.0.1");
    assert_int_equal(c->metrics_listen.port, 9100);
    assert_int_equal(c->log_format, LOGFMT_JSON);
    assert_int_equal(c->max_recipients, 50);
    assert_int_equal(c->max_sessions, 10);
    assert_int_equal(c->max_sessions_per_ip, 3);
    assert_int_equal(c->reserved_sessions, 1); /* computed from max_sessions = 10 */
    assert_int_equal(c->max_errors, 5);
    assert_int_equal(c->smtp_timeout_ms, 120000);
    assert_int_equal(c->data_timeout_ms, 60000);
    assert_int_equal(c->delivery_concurrency, 4);
    assert_int_equal(c->delivery_max_msgs_per_conn, 7);
    assert_int_equal(c->connect_timeout_ms, 10000);
    assert_int_equal(c->delivery_timeout_ms, 120000);
    assert_int_equal(c->idle_conn_timeout_ms, 0);
    assert_int_equal(c->log_level, LOG_DEBUG);

    /* References: the snapshot lives until the last one goes (ASan checks). */
    assert_ptr_equal(config_ref(c), c);
    assert_int_equal(c->refs, 2);
    config_unref(c);
    assert_int_equal(c->refs, 1);
    config_unref(c);
    config_unref(NULL);
    buf_fini(&errs);
}

static void
test_overrides(void **state)
{
    struct buf errs = BUF_INIT;
    static const char *const ov[] = {
        "smtp_listen=127.0.0.1:2600 [::1]:2600",
        "relay_domains=",
        "max_recipients = 7",
        "hostname=\"relay.example\"",
        "max_errors=1",
        "max_errors=2", /* later overrides win over earlier ones */
        "log_format=json # comment",
        "reserved_sessions=0", /* an explicit 0 wins over the computed default */
        "workers=64",
    };
    struct config *c = load_text("smtp_listen = 127.0.0.1:25\n"
                                 "relay_domains = example.com\n"
                                 "max_recipients = 9\n",
        ov, N(ov), false, &errs);
    if (c == NULL)
        fail_msg("unexpected errors: %s", errs.data);
    assert_int_equal(c->n_smtp_listen, 2);
    assert_int_equal(c->smtp_listen[0].port, 2600);
    assert_string_equal(c->smtp_listen[1].host, "::1");
    assert_int_equal(c->n_relay_domains, 0);
    assert_null(c->relay_domains);
    assert_int_equal(c->max_recipients, 7);
    assert_string_equal(c->hostname, "relay.example");
    assert_int_equal(c->max_errors, 2);
    assert_int_equal(c->log_format, LOGFMT_JSON);
    assert_int_equal(c->reserved_sessions, 0);
    assert_int_equal(c->workers, 64);
    config_unref(c);

    /* No file: built-in defaults plus overrides. */
    static const char *const ov2[] = { "spool_dir=/tmp/spool", "smarthost=relay.example.net" };
    c = config_load(NULL, ov2, N(ov2), false, &errs);
    assert_non_null(c);
    assert_null(c->path);
    assert_string_equal(c->spool_dir, "/tmp/spool");
    assert_string_equal(c->smarthost.host, "relay.example.net");
    assert_int_equal(c->smarthost.port, 25);
    assert_int_equal(c->max_recipients, 1000);
    config_unref(c);
    assert_int_equal(errs.len, 0);
    buf_fini(&errs);
}

static void
test_values(void **state)
{
    /* One setting per case: the value text as written and the string read. */
    static const struct {
        const char *name;
        const char *input;
        const char *want;
    } cases[] = {
        { "plain", "spool_dir = /a/b\n", "/a/b" },
        { "no spaces", "spool_dir=/a/b\n", "/a/b" },
        { "leading blanks", "   \t spool_dir \t=\t /a/b \t \n", "/a/b" },
        { "hash inside word", "spool_dir = /a#b\n", "/a#b" },
        { "trailing comment", "spool_dir = /a/b # comment\n", "/a/b" },
        { "tab before comment", "spool_dir = /a/b\t# comment\n", "/a/b" },
        { "inner space kept", "spool_dir = /a b/c\n", "/a b/c" },
        { "quoted", "spool_dir = \"/a/b\"\n", "/a/b" },
        { "quoted hash", "spool_dir = \"/a #b\" # real comment\n", "/a #b" },
        { "quoted blanks kept", "spool_dir = \"  /a  \"\n", "  /a  " },
        { "quoted escapes", "spool_dir = \"/a\\\"b\\\\c\"\n", "/a\"b\\c" },
        { "other backslash kept", "spool_dir = \"/a\\nb\"\n", "/a\\nb" },
        { "crlf", "spool_dir = /a/b\r\n", "/a/b" },
        { "comment lines", "# one\n  # two\n\n\t\nspool_dir = /x\n#three\n", "/x" },
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct buf errs = BUF_INIT;
        print_message("case %s\n", cases[i].name);
        struct config *c = load_text(cases[i].input, NULL, 0, false, &errs);
        if (c == NULL)
            fail_msg("case %s: %s", cases[i].name, errs.data);
        assert_string_equal(c->spool_dir, cases[i].want);
        config_unref(c);
        buf_fini(&errs);
    }
}

/* maildrop_dir: beside spool_dir unless set; a name that only starts like
 * the spool's is not inside it. */
static void
test_maildrop_dir(void **state)
{
    static const struct {
        const char *input;
        const char *want;
    } cases[] = {
        { "", "/var/spool/tern-maildrop" },
        { "spool_dir = /a/b\n", "/a/b-maildrop" },
        { "spool_dir = /a/b//\n", "/a/b-maildrop" },
        { "spool_dir = /a/b\nmaildrop_dir = /a/bdrop\n", "/a/bdrop" },
        { "maildrop_dir = /d\n", "/d" },
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct buf errs = BUF_INIT;
        struct config *c = load_text(cases[i].input, NULL, 0, false, &errs);
        if (c == NULL)
            fail_msg("case %zu: %s", i, errs.data);
        assert_string_equal(c->maildrop_dir, cases[i].want);
        assert_string_equal(c->maildrop_group, "tern-drop");
        config_unref(c);
        buf_fini(&errs);
    }
}

static void
test_errors(void **state)
{
    static const struct {
        const char *name;
        const char *input; /* written to tern.conf; NULL: no file */
        const char *ov;    /* one override or NULL */
        const char *want;  /* exact error text */
    } cases[] = {
        { "unknown with suggestion", "hostname = a.example\n\nrelay_network = 10.0.0.0/8\n", NULL,
            "tern.conf:3: unknown setting \"relay_network\" (did you mean \"relay_networks\"?)\n" },
        { "unknown without suggestion", "frobnicate = 1\n", NULL,
            "tern.conf:1: unknown setting \"frobnicate\"\n" },
        { "unknown override", NULL, "smtp_lisen=127.0.0.1:25",
            "-o smtp_lisen: unknown setting \"smtp_lisen\" (did you mean \"smtp_listen\"?)\n" },
        { "override without =", NULL, "hostname", "-o hostname: expected name=value\n" },
        { "duplicate", "max_errors = 1\nhostname = a.example\nmax_errors = 2\n", NULL,
            "tern.conf:3: max_errors is set again (first set on line 1)\n" },
        { "no equals", "hostname a.example\n", NULL, "tern.conf:1: expected \"name = value\"\n" },
        { "no name", "= x\n", NULL, "tern.conf:1: expected \"name = value\"\n" },
        { "unterminated quote", "spool_dir = \"/a\n", NULL,
            "tern.conf:1: unterminated quoted value\n" },
        { "junk after quote", "spool_dir = \"/a\" b\n", NULL,
            "tern.conf:1: unexpected text after the quoted value\n" },
        { "bad cidr", "relay_networks = 10.0.0.0/8 10.0.0.0/33\n", NULL,
            "tern.conf:1: bad CIDR \"10.0.0.0/33\" in relay_networks\n" },
        { "bad size", "max_message_size = 10x\n", NULL,
            "tern.conf:1: bad size \"10x\" for max_message_size (bytes, with an optional k, m or g suffix)\n" },
        { "zero size", "max_message_size = 0\n", NULL,
            "tern.conf:1: max_message_size must be greater than 0\n" },
        { "bad duration", "retry_initial = 5w\n", NULL,
            "tern.conf:1: bad duration \"5w\" for retry_initial (a number with an s, m, h or d suffix)\n" },
        { "no workers", NULL, "workers=0", "-o workers: bad number \"0\" for workers (1..64)\n" },
        { "too many workers", "workers = 65\n", NULL,
            "tern.conf:1: bad number \"65\" for workers (1..64)\n" },
        { "zero duration", NULL, "smtp_timeout=0s",
            "-o smtp_timeout: smtp_timeout must be greater than 0\n" },
        { "bad port in hostport", "smarthost = relay.example:99999\n", NULL,
            "tern.conf:1: bad port \"99999\" in \"relay.example:99999\" in smarthost (1..65535)\n" },
        { "bad port in list", "smtp_listen = 127.0.0.1:25 [::1]:0\n", NULL,
            "tern.conf:1: bad port \"0\" in \"[::1]:0\" in smtp_listen (1..65535)\n" },
        { "missing port", "smtp_listen = 127.0.0.1\n", NULL,
            "tern.conf:1: missing port in \"127.0.0.1\" in smtp_listen (use host:port or [addr]:port)\n" },
        { "unbracketed v6", "smtp_listen = ::1:25\n", NULL,
            "tern.conf:1: bad address \"::1:25\" in smtp_listen (write IPv6 addresses as [addr]:port)\n" },
        { "bad host", "metrics_listen = bad_host:9100\n", NULL,
            "tern.conf:1: bad address \"bad_host:9100\" for metrics_listen (use host:port or [addr]:port)\n" },
        { "resolver must be numeric", "dns_resolvers = ns.example:53\n", NULL,
            "tern.conf:1: bad address \"ns.example:53\" in dns_resolvers (an IP address is needed)\n" },
        { "delivery port", "delivery_port = 70000\n", NULL,
            "tern.conf:1: bad port \"70000\" for delivery_port (1..65535)\n" },
        { "bad enum", "smarthost_tls = maybe\n", NULL,
            "tern.conf:1: bad value \"maybe\" for smarthost_tls (allowed: none, opportunistic, required)\n" },
        { "bad log level", NULL, "log_level=crit",
            "-o log_level: bad value \"crit\" for log_level (allowed: debug, info, warn, error)\n" },
        { "bad number", "max_recipients = 0\n", NULL,
            "tern.conf:1: bad number \"0\" for max_recipients (1..99999)\n" },
        { "number overflow", "max_sessions = 99999999999999999999\n", NULL,
            "tern.conf:1: bad number \"99999999999999999999\" for max_sessions (1..1000000)\n" },
        { "bad domain", "relay_domains = good.example bad..example\n", NULL,
            "tern.conf:1: bad domain \"bad..example\" in relay_domains\n" },
        { "lone dot domain", "relay_domains = .example.com .\n", NULL,
            "tern.conf:1: bad domain \".\" in relay_domains\n" },
        { "two leading dots", "relay_domains = ..example.com\n", NULL,
            "tern.conf:1: bad domain \"..example.com\" in relay_domains\n" },
        { "bad hostname", "hostname = -bad\n", NULL,
            "tern.conf:1: bad domain name \"-bad\" for hostname\n" },
        { "empty hostname", NULL, "hostname=", "-o hostname: hostname must not be empty\n" },
        { "empty spool", "spool_dir = \"\"\n", NULL, "tern.conf:1: spool_dir must not be empty\n" },
        { "maildrop in the spool", "spool_dir = /s\nmaildrop_dir = /s/drop\n", NULL,
            "tern.conf:2: maildrop_dir must be outside spool_dir (its modes differ)\n" },
        { "maildrop is the spool", "spool_dir = /s/\nmaildrop_dir = /s\n", NULL,
            "tern.conf:2: maildrop_dir must be outside spool_dir (its modes differ)\n" },
        { "spool in the maildrop", "maildrop_dir = /var\nspool_dir = /var/spool/tern\n", NULL,
            "tern.conf:1: maildrop_dir must be outside spool_dir (its modes differ)\n" },
        { "dkim shape", "dkim_sign = example.com:sel\n", NULL,
            "tern.conf:1: bad dkim_sign entry \"example.com:sel\" (use domain:selector:keyfile)\n" },
        { "dkim domain", "dkim_sign = bad_dom:sel:/k\n", NULL,
            "tern.conf:1: bad domain in dkim_sign entry \"bad_dom:sel:/k\"\n" },
        { "dkim selector", "dkim_sign = example.com::/k\n", NULL,
            "tern.conf:1: bad selector in dkim_sign entry \"example.com::/k\"\n" },
        { "tls pair", "tls_cert_file = /c.pem\n", NULL,
            "tern.conf:1: tls_cert_file is set but tls_key_file is not\n" },
        { "smtps needs tls", NULL, "smtps_listen=127.0.0.1:465",
            "-o smtps_listen: smtps_listen needs tls_cert_file and tls_key_file\n" },
        { "reserve too big", "max_sessions = 10\nreserved_sessions = 10\n", NULL,
            "tern.conf:2: reserved_sessions (10) must be less than max_sessions (10)\n" },
        { "zero data rate", NULL, "min_data_rate=0",
            "-o min_data_rate: bad number \"0\" for min_data_rate (1..1000000000)\n" },
        { "retry order", "retry_max = 10s\n", NULL,
            "tern.conf:1: retry_initial is longer than retry_max\n" },
        { "untrusted text shown safely", "hostname = \"a\\\"b\x01\"\n", NULL,
            "tern.conf:1: bad domain name \"a?b?\" for hostname\n" },
        { "missing file", NULL, NULL, NULL },
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct buf errs = BUF_INIT;
        const char *ov[1] = { cases[i].ov };
        struct config *c;
        print_message("case %s\n", cases[i].name);
        if (cases[i].want == NULL) {
            c = config_load("no-such.conf", NULL, 0, false, &errs);
            assert_null(c);
            assert_string_equal(
                errs.data, "no-such.conf: cannot read: No such file or directory\n");
        } else {
            c = load_text(cases[i].input, ov, cases[i].ov ? 1 : 0, false, &errs);
            assert_null(c);
            assert_non_null(errs.data);
            assert_string_equal(errs.data, cases[i].want);
        }
        buf_fini(&errs);
    }
}

static void
test_mx_tls_policy(void **state)
{
    static const struct {
        const char *input;
        int want; /* policy bits, or -1: refused */
    } cases[] = {
        { "", MX_TLS_POLICY_DANE | MX_TLS_POLICY_MTASTS }, /* the default */
        { "mx_tls_policy =\n", 0 },
        { "mx_tls_policy = dane\n", MX_TLS_POLICY_DANE },
        { "mx_tls_policy = mta-sts\n", MX_TLS_POLICY_MTASTS },
        { "mx_tls_policy = mta-sts, dane\n", MX_TLS_POLICY_DANE | MX_TLS_POLICY_MTASTS },
        { "mx_tls_policy = dane tlsa\n", -1 },
        { "mx_tls_policy = DANE\n", -1 },
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct buf errs = BUF_INIT;
        struct config *c = load_text(cases[i].input, NULL, 0, false, &errs);
        if (cases[i].want < 0) {
            assert_null(c);
            assert_non_null(strstr(errs.data, "bad mx_tls_policy word"));
        } else {
            assert_non_null(c);
            assert_int_equal(c->mx_tls_policies, (unsigned)cases[i].want);
            config_unref(c);
        }
        buf_fini(&errs);
    }
}

static void
test_all_errors_reported(void **state)
{
    struct buf errs = BUF_INIT;
    static const char *const ov[] = { "max_errors=x", "nope=1" };
    struct config *c = load_text("max_recipients = many\n"
                                 "relay_networks = 1.2.3.4/40 ::/200 10.0.0.0/8\n"
                                 "log_format = xml\n"
                                 "log_format = text\n"
                                 "hostname = ok.example\n",
        ov, N(ov), false, &errs);
    assert_null(c);
    assert_string_equal(errs.data,
        "tern.conf:1: bad number \"many\" for max_recipients (1..99999)\n"
        "tern.conf:2: bad CIDR \"1.2.3.4/40\" in relay_networks\n"
        "tern.conf:2: bad CIDR \"::/200\" in relay_networks\n"
        "tern.conf:3: bad value \"xml\" for log_format (allowed: text, json)\n"
        "tern.conf:4: log_format is set again (first set on line 3)\n"
        "-o max_errors: bad number \"x\" for max_errors (1..1000000)\n"
        "-o nope: unknown setting \"nope\"\n");
    buf_fini(&errs);

    /* A flood of bad lines is summarised after the first hundred. */
    struct buf text = BUF_INIT;
    for (int i = 0; i < 150; i++)
        buf_printf(&text, "bad%d = 1\n", i);
    c = load_text(text.data, NULL, 0, false, &errs);
    assert_null(c);
    assert_non_null(strstr(errs.data, "tern.conf:100: unknown setting \"bad99\"\n"));
    assert_null(strstr(errs.data, "tern.conf:101:"));
    assert_non_null(strstr(errs.data, "(50 more errors not shown)\n"));
    buf_fini(&errs);
    buf_fini(&text);
}

static void
test_line_limits(void **state)
{
    struct buf errs = BUF_INIT;
    struct buf text = BUF_INIT;
    struct config *c;
    char value[5000];

    /* Exactly 4096 bytes is fine; 4097 is an error and the next line is still read. */
    memset(value, 'a', sizeof(value));
    buf_printf(&text, "spool_dir = /%.*s\n", 4096 - 13, value);
    c = load_text(text.data, NULL, 0, false, &errs);
    if (c == NULL)
        fail_msg("4096-byte line refused: %s", errs.data);
    assert_int_equal(strlen(c->spool_dir), 4096 - 12);
    config_unref(c);

    buf_reset(&text);
    buf_printf(&text, "spool_dir = /%.*s\nmax_errors = x\n", 4096 - 12, value);
    c = load_text(text.data, NULL, 0, false, &errs);
    assert_null(c);
    assert_string_equal(errs.data, "tern.conf:1: line too long (more than 4096 bytes)\n"
                                   "tern.conf:2: bad number \"x\" for max_errors (1..1000000)\n");
    buf_reset(&errs);

    /* A NUL byte in a line. */
    static const char with_nul[] = "hostname = a\0b\nmax_errors = 3\n";
    write_file("tern.conf", with_nul, sizeof(with_nul) - 1, 0644);
    c = config_load("tern.conf", NULL, 0, false, &errs);
    assert_null(c);
    assert_string_equal(errs.data, "tern.conf:1: NUL byte in line\n");
    buf_reset(&errs);

    /* An override longer than a line. */
    buf_reset(&text);
    buf_printf(&text, "spool_dir=/%.*s", 4096, value);
    const char *ov[] = { text.data };
    c = config_load(NULL, ov, 1, false, &errs);
    assert_null(c);
    assert_string_equal(errs.data, "-o spool_dir: value too long (more than 4096 bytes)\n");
    buf_fini(&errs);
    buf_fini(&text);
}

static void
test_check_files(void **state)
{
    struct buf errs = BUF_INIT;
    struct config *c;
    const char *conf = "tls_cert_file = cert.pem\n"
                       "tls_key_file = key.pem\n"
                       "smarthost_auth_file = auth\n"
                       "dkim_sign = example.com:s1:dkim.key\n"
                       "auth_users_file = .\n";

    write_file("cert.pem", "x", 1, 0644);
    write_file("auth", "u:p\n", 4, 0640);
    write_file("dkim.key", dkim_key_pem, strlen(dkim_key_pem), 0604);

    /* Without check_files the names are only stored. */
    c = load_text(conf, NULL, 0, false, &errs);
    assert_non_null(c);
    config_unref(c);

    c = load_text(conf, NULL, 0, true, &errs);
    assert_null(c);
    assert_string_equal(errs.data,
        "tern.conf:3: smarthost_auth_file \"auth\": readable by group or others (chmod 600 it)\n"
        "tern.conf:2: tls_key_file \"key.pem\": cannot read: No such file or directory\n"
        "tern.conf:5: auth_users_file \".\": not a regular file\n"
        "tern.conf:4: dkim_sign key file \"dkim.key\": readable by group or others (chmod 600 it)\n");
    buf_reset(&errs);

    /* Fixed modes and the missing key: good. */
    write_file("key.pem", "x", 1, 0640); /* TLS keys may be group readable */
    assert_int_equal(chmod("auth", 0600), 0);
    assert_int_equal(chmod("dkim.key", 0400), 0);
    static const char *const ov[] = { "auth_users_file=auth" };
    c = load_text(conf, ov, 1, true, &errs);
    if (c == NULL)
        fail_msg("unexpected errors: %s", errs.data);
    config_unref(c);
    buf_fini(&errs);
}

static void
test_is_setting(void **state)
{
    static const struct {
        const char *name;
        bool want;
    } cases[] = {
        { "hostname", true },
        { "relay_networks", true },
        { "idle_conn_timeout", true },
        { "log_level", true },
        { "relay_network", false },
        { "HOSTNAME", false },
        { "", false },
        { NULL, false },
    };
    for (size_t i = 0; i < N(cases); i++)
        assert_int_equal(config_is_setting(cases[i].name), cases[i].want);
}

/* tests/golden/config: $TERN_GOLDEN_DIR, else found from the directory the
 * test started in (meson runs it in BUILD/tests/unit) or its ancestors, as
 * SRC/tests/golden/config or via __FILE__ (relative to the build root). */
static int
golden_dir(char *out)
{
    static const char *const up[] = { "", "../", "../../", "../../../", "../../../../" };
    char cand[2 * PATH_MAX], src_dir[PATH_MAX];
    struct stat st;
    const char *env = getenv("TERN_GOLDEN_DIR");
    int rc = -1;
    if (env != NULL)
        return realpath(env, out) != NULL ? 0 : -1;
    snprintf(src_dir, sizeof(src_dir), "%s", __FILE__);
    char *slash = strrchr(src_dir, '/'); /* dirname of this file */
    if (slash != NULL)
        *slash = '\0';
    else
        snprintf(src_dir, sizeof(src_dir), ".");
    if (fchdir(olddir) < 0)
        return -1;
    for (size_t i = 0; i < 2 * N(up) && rc < 0; i++) {
        if (i % 2 == 0)
            snprintf(cand, sizeof(cand), "%stests/golden/config", up[i / 2]);
        else if (src_dir[0] == '/')
            snprintf(cand, sizeof(cand), "%s/../golden/config", src_dir);
        else
            snprintf(cand, sizeof(cand), "%s%s/../golden/config", up[i / 2], src_dir);
        if (realpath(cand, out) != NULL && stat(out, &st) == 0 && S_ISDIR(st.st_mode))
            rc = 0;
    }
    if (chdir(tmpdir) < 0)
        return -1;
    return rc;
}

static char *
read_all(const char *path)
{
    struct buf b = BUF_INIT;
    char chunk[4096];
    size_t n;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    return buf_take(&b);
}

static void
test_golden(void **state)
{
    char dir[PATH_MAX];
    int count = 0;
    if (golden_dir(dir) < 0)
        fail_msg("tests/golden/config not found (set TERN_GOLDEN_DIR)");
    assert_int_equal(chdir(dir), 0);
    DIR *d = opendir(".");
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        char errname[NAME_MAX + 1];
        if (len < 6 || strcmp(de->d_name + len - 5, ".conf") != 0)
            continue;
        snprintf(errname, sizeof(errname), "%.*s.err", (int)(len - 5), de->d_name);
        char *want = read_all(errname);
        if (want == NULL)
            fail_msg("%s has no %s", de->d_name, errname);
        struct buf errs = BUF_INIT;
        print_message("golden %s\n", de->d_name);
        struct config *c = config_load(de->d_name, NULL, 0, false, &errs);
        assert_string_equal(errs.data ? errs.data : "", want);
        assert_true((c != NULL) == (want[0] == '\0'));
        config_unref(c);
        buf_fini(&errs);
        free(want);
        count++;
    }
    closedir(d);
    assert_int_equal(chdir(tmpdir), 0);
    assert_true(count >= 4);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overrides, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_maildrop_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_errors_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_line_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_is_setting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_golden, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mx_tls_policy, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
