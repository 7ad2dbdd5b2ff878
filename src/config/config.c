/*
 * Configuration loader. File syntax, one setting per line:
 *     name = value          # a comment after whitespace
 *     name = "quoted # value"
 * '#' at the start of a line (after blanks) makes a comment line; blank lines
 * are ignored; lines are at most CONFIG_LINE_MAX bytes; a setting given twice
 * in the file is an error. -o name=value overrides use the same value syntax
 * and win over the file. Every problem is reported, not only the first. The
 * result is an immutable snapshot, freed when its last reference goes.
 */
#include "config/config.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config_int.h"
#include "dkim/dkim.h"
#include "spool/spool.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

#define SHOWN_MAX 120

struct loader {
    struct config *c;
    const char *path;
    const char *text; /* the file's bytes when given (config_load_text), else NULL */
    size_t text_len;
    struct cfg_errs errs;
    unsigned *line_of; /* per setting: file line that set it, 0 if none */
    bool *by_override; /* per setting: an override set it */
    char where[300];
};

static bool
is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

static bool
is_name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '-' || ch == '.';
}

/*
 * Unquote the value text s[len] into out. A value starting with '"' runs to
 * the closing quote (\" and \\ escape) and only a comment may follow it;
 * otherwise it runs to the end or to a '#' preceded by a blank. Leading and
 * trailing blanks are dropped. Returns 0, or -1 with a message in *why.
 */
static int
lex_value(const char *s, size_t len, struct buf *out, const char **why)
{
    size_t i = 0, end;
    while (i < len && is_blank(s[i]))
        i++;
    if (i < len && s[i] == '"') {
        for (i++; i < len && s[i] != '"'; i++) {
            if (s[i] == '\\' && i + 1 < len && (s[i + 1] == '"' || s[i + 1] == '\\'))
                i++;
            buf_append_char(out, s[i]);
        }
        if (i == len) {
            *why = "unterminated quoted value";
            return -1;
        }
        for (i++; i < len && is_blank(s[i]); i++)
            ;
        if (i < len && s[i] != '#') {
            *why = "unexpected text after the quoted value";
            return -1;
        }
        return 0;
    }
    for (end = i; end < len; end++) {
        if (s[end] == '#' && end > 0 && is_blank(s[end - 1]))
            break;
    }
    while (end > i && is_blank(s[end - 1]))
        end--;
    buf_append(out, s + i, end - i);
    return 0;
}

/* Find the name in "name = value": returns the name length and sets *eq to
 * the offset of '='; -1 when the shape is wrong. */
static int
split_assignment(const char *s, size_t len, size_t *name_len, size_t *eq)
{
    size_t i = 0, n;
    while (i < len && is_name_char(s[i]))
        i++;
    n = i;
    while (i < len && is_blank(s[i]))
        i++;
    if (n == 0 || i == len || s[i] != '=')
        return -1;
    *name_len = n;
    *eq = i;
    return 0;
}

/* Look up name, reporting an unknown one with the nearest valid name. */
static const struct cfg_setting *
lookup(struct loader *ld, const char *name)
{
    char t[SHOWN_MAX];
    const struct cfg_setting *s = cfg_find(name);
    const char *near;
    if (s != NULL)
        return s;
    near = cfg_suggest(name);
    if (near != NULL)
        cfg_error(&ld->errs, "unknown setting \"%s\" (did you mean \"%s\"?)",
            cfg_shown(name, t, sizeof(t)), near);
    else
        cfg_error(&ld->errs, "unknown setting \"%s\"", cfg_shown(name, t, sizeof(t)));
    return NULL;
}

static size_t
setting_index(const struct cfg_setting *s)
{
    return (size_t)(s - config_settings);
}

/* One line of the file (without its newline), line number lineno. */
static void
load_line(struct loader *ld, const char *s, size_t len, unsigned lineno)
{
    struct buf val = BUF_INIT;
    const struct cfg_setting *set;
    const char *why = NULL;
    size_t i = 0, name_len, eq;
    char name[CONFIG_LINE_MAX + 1];

    snprintf(ld->where, sizeof(ld->where), "%s:%u", ld->path, lineno);
    while (i < len && is_blank(s[i]))
        i++;
    if (i == len || s[i] == '#')
        return;
    if (split_assignment(s + i, len - i, &name_len, &eq) < 0) {
        cfg_error(&ld->errs, "expected \"name = value\"");
        return;
    }
    memcpy(name, s + i, name_len);
    name[name_len] = '\0';
    if ((set = lookup(ld, name)) == NULL)
        return;
    size_t k = setting_index(set);
    if (ld->line_of[k] != 0) {
        cfg_error(&ld->errs, "%s is set again (first set on line %u)", set->name, ld->line_of[k]);
        return;
    }
    ld->line_of[k] = lineno;
    i += eq + 1;
    if (lex_value(s + i, len - i, &val, &why) < 0)
        cfg_error(&ld->errs, "%s", why);
    else
        (void)cfg_set(ld->c, set, val.data ? val.data : "", &ld->errs);
    buf_fini(&val);
}

/* Read the file line by line; a line longer than CONFIG_LINE_MAX is reported
 * and skipped without being stored. */
static void
load_file(struct loader *ld)
{
    char line[CONFIG_LINE_MAX + 2];
    size_t len = 0;
    unsigned lineno = 1;
    bool too_long = false, nul = false;
    int ch;
    FILE *f;

    snprintf(ld->where, sizeof(ld->where), "%s", ld->path);
    if (ld->text != NULL && ld->text_len == 0)
        return; /* an empty file (fmemopen needs a byte) */
    /* Text handed over by ternd's parent is parsed exactly as the file. */
    f = ld->text != NULL ? fmemopen((void *)ld->text, ld->text_len, "r") : fopen(ld->path, "re");
    if (f == NULL) {
        cfg_error(&ld->errs, "cannot read: %s", strerror(errno));
        return;
    }
    do {
        ch = getc(f);
        if (ch != '\n' && ch != EOF) {
            if (len > CONFIG_LINE_MAX)
                too_long = true;
            else
                line[len++] = (char)ch;
            nul = nul || ch == '\0';
            continue;
        }
        if (ch == EOF && len == 0 && !too_long)
            break;
        if (len > 0 && line[len - 1] == '\r')
            len--; /* CRLF files */
        if (len > CONFIG_LINE_MAX)
            too_long = true;
        snprintf(ld->where, sizeof(ld->where), "%s:%u", ld->path, lineno);
        if (too_long)
            cfg_error(&ld->errs, "line too long (more than %d bytes)", CONFIG_LINE_MAX);
        else if (nul)
            cfg_error(&ld->errs, "NUL byte in line");
        else
            load_line(ld, line, len, lineno);
        len = 0;
        too_long = nul = false;
        lineno++;
    } while (ch != EOF);
    if (ferror(f)) {
        snprintf(ld->where, sizeof(ld->where), "%s", ld->path);
        cfg_error(&ld->errs, "read error: %s", strerror(errno));
    }
    fclose(f); /* read-only stream: nothing to flush */
}

static void
load_override(struct loader *ld, const char *o)
{
    char t[SHOWN_MAX];
    struct buf val = BUF_INIT;
    const char *why = NULL, *eq = strchr(o, '=');
    size_t name_len = eq ? (size_t)(eq - o) : strlen(o);
    const struct cfg_setting *s;
    char *name = xstrndup(o, name_len);

    /* Blanks around the name are allowed, as in the file. */
    while (name_len > 0 && is_blank(name[name_len - 1]))
        name[--name_len] = '\0';
    snprintf(ld->where, sizeof(ld->where), "-o %s", cfg_shown(name, t, sizeof(t)));
    if (eq == NULL) {
        cfg_error(&ld->errs, "expected name=value");
    } else if (strlen(eq + 1) > CONFIG_LINE_MAX) {
        cfg_error(&ld->errs, "value too long (more than %d bytes)", CONFIG_LINE_MAX);
    } else if ((s = lookup(ld, name)) != NULL) {
        ld->by_override[setting_index(s)] = true;
        if (lex_value(eq + 1, strlen(eq + 1), &val, &why) < 0)
            cfg_error(&ld->errs, "%s", why);
        else
            (void)cfg_set(ld->c, s, val.data ? val.data : "", &ld->errs);
    }
    buf_fini(&val);
    free(name);
}

/* Point ld->where at the place that set s (for checks after loading). */
static void
where_of(struct loader *ld, const struct cfg_setting *s)
{
    size_t k = setting_index(s);
    if (ld->by_override[k])
        snprintf(ld->where, sizeof(ld->where), "-o %s", s->name);
    else if (ld->line_of[k] != 0)
        snprintf(ld->where, sizeof(ld->where), "%s:%u", ld->path, ld->line_of[k]);
    else
        snprintf(ld->where, sizeof(ld->where), "%s", ld->path ? ld->path : "defaults");
}

static bool
was_set(const struct loader *ld, const char *name)
{
    size_t k = setting_index(cfg_find(name));
    return ld->line_of[k] != 0 || ld->by_override[k];
}

/* auth_sender_login: space separated USER=ITEM[,ITEM...] words, each ITEM a
 * full address (local@domain), "@domain" or "<>" (the null sender). The
 * matching is done by the SMTP server (smtp/auth.c). */
static void
check_sender_login(struct loader *ld)
{
    const char *p = ld->c->auth_sender_login;
    char t[SHOWN_MAX];
    while (p != NULL && *p != '\0') {
        size_t n = strcspn(p, " \t");
        const char *eq = memchr(p, '=', n);
        bool ok = eq != NULL && eq != p && eq + 1 < p + n;
        for (const char *it = eq ? eq + 1 : p + n; ok && it < p + n;) {
            size_t il = strcspn(it, ",");
            const char *at;
            if (il > (size_t)(p + n - it))
                il = (size_t)(p + n - it);
            at = memchr(it, '@', il);
            ok = il > 0 &&
                 ((il == 2 && memcmp(it, "<>", 2) == 0) || (at != NULL && at + 1 < it + il));
            it += il + 1;
        }
        if (!ok) {
            char *word = xstrndup(p, n);
            where_of(ld, cfg_find("auth_sender_login"));
            cfg_error(&ld->errs,
                "bad auth_sender_login entry \"%s\" (use USER=ADDR|@DOMAIN|<>[,...])",
                cfg_shown(word, t, sizeof(t)));
            free(word);
        }
        p += n;
        p += strspn(p, " \t");
    }
}

/* mx_tls_policy: space or comma separated "dane" and "mta-sts". */
static void
check_tls_policy(struct loader *ld)
{
    const char *p = ld->c->mx_tls_policy;
    char t[SHOWN_MAX];
    ld->c->mx_tls_policies = 0;
    while (p != NULL && *p != '\0') {
        size_t n = strcspn(p, " \t,");
        if (n == 4 && memcmp(p, "dane", 4) == 0) {
            ld->c->mx_tls_policies |= MX_TLS_POLICY_DANE;
        } else if (n == 7 && memcmp(p, "mta-sts", 7) == 0) {
            ld->c->mx_tls_policies |= MX_TLS_POLICY_MTASTS;
        } else if (n > 0) {
            char *word = xstrndup(p, n);
            where_of(ld, cfg_find("mx_tls_policy"));
            cfg_error(&ld->errs, "bad mx_tls_policy word \"%s\" (use dane, mta-sts)",
                cfg_shown(word, t, sizeof(t)));
            free(word);
        }
        p += n;
        p += strspn(p, " \t,");
    }
}

/* Is one of the directories a or b the other or inside it? */
static bool
paths_nest(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    while (na > 1 && a[na - 1] == '/')
        na--;
    while (nb > 1 && b[nb - 1] == '/')
        nb--;
    if (na > nb) {
        const char *t = a;
        size_t tn = na;
        a = b;
        na = nb;
        b = t;
        nb = tn;
    }
    return memcmp(a, b, na) == 0 && (nb == na || b[na] == '/' || (na == 1 && a[0] == '/'));
}

/* always_bcc is an envelope address tern sends to: local@domain, no
 * brackets, nothing that would need quoting in a path (RFC 5321 §4.1.2 dot
 * strings), so that it can go into RCPT TO as written. */
static void
check_always_bcc(struct loader *ld)
{
    const char *a = ld->c->always_bcc, *at;
    bool ok;
    if (a == NULL)
        return;
    at = strrchr(a, '@');
    ok = at != NULL && at > a && strlen(a) <= 254 && str_is_domain(at + 1, strlen(at + 1), false);
    for (const char *p = a; ok && p < at; p++)
        ok = *p > ' ' && *p < 0x7f && strchr("<>()[]\\,;:@\"", *p) == NULL;
    if (!ok) {
        where_of(ld, cfg_find("always_bcc"));
        cfg_error(&ld->errs, "always_bcc must be an address local@domain");
    }
}

/* inbound_checks: words spf, dkim, dmarc, kept as bits. */
static void
check_inbound_checks(struct loader *ld)
{
    static const char *const names[] = { "spf", "dkim", "dmarc" };
    struct config *c = ld->c;
    c->inbound_check_mask = 0;
    for (size_t i = 0; i < c->n_inbound_checks; i++) {
        size_t k = 0;
        while (k < TERN_ARRAY_LEN(names) && strcmp(c->inbound_checks[i], names[k]) != 0)
            k++;
        if (k < TERN_ARRAY_LEN(names)) {
            c->inbound_check_mask |= 1u << k;
            continue;
        }
        where_of(ld, cfg_find("inbound_checks"));
        cfg_error(&ld->errs, "bad inbound_checks entry \"%s\" (use spf, dkim, dmarc)",
            c->inbound_checks[i]);
    }
}

/* Settings that only make sense together. */
static void
check_combinations(struct loader *ld)
{
    check_sender_login(ld);
    check_always_bcc(ld);
    check_inbound_checks(ld);
    check_tls_policy(ld);
    const struct config *c = ld->c;
    if ((c->tls_cert_file == NULL) != (c->tls_key_file == NULL)) {
        const char *set = c->tls_cert_file ? "tls_cert_file" : "tls_key_file";
        const char *unset = c->tls_cert_file ? "tls_key_file" : "tls_cert_file";
        where_of(ld, cfg_find(set));
        cfg_error(&ld->errs, "%s is set but %s is not", set, unset);
    }
    if (c->n_smtps_listen > 0 && c->tls_cert_file == NULL) {
        where_of(ld, cfg_find("smtps_listen"));
        cfg_error(&ld->errs, "smtps_listen needs tls_cert_file and tls_key_file");
    }
    if (c->reserved_sessions >= c->max_sessions) {
        where_of(ld, cfg_find("reserved_sessions"));
        cfg_error(&ld->errs, "reserved_sessions (%u) must be less than max_sessions (%u)",
            (unsigned)c->reserved_sessions, (unsigned)c->max_sessions);
    }
    if (c->retry_initial_ms > c->retry_max_ms) {
        where_of(ld, cfg_find(was_set(ld, "retry_initial") ? "retry_initial" : "retry_max"));
        cfg_error(&ld->errs, "retry_initial is longer than retry_max");
    }
    if (paths_nest(c->spool_dir, c->maildrop_dir)) {
        where_of(ld, cfg_find(was_set(ld, "maildrop_dir") ? "maildrop_dir" : "spool_dir"));
        cfg_error(&ld->errs, "maildrop_dir must be outside spool_dir (its modes differ)");
    }
    if (c->event_webhook_url != NULL && strncmp(c->event_webhook_url, "http://", 7) != 0 &&
        strncmp(c->event_webhook_url, "https://", 8) != 0) {
        where_of(ld, cfg_find("event_webhook_url"));
        cfg_error(&ld->errs, "event_webhook_url must start with http:// or https://");
    }
    if (c->event_webhook_url != NULL && c->event_webhook_secret_file == NULL) {
        where_of(ld, cfg_find("event_webhook_url"));
        cfg_error(&ld->errs, "event_webhook_url needs event_webhook_secret_file");
    }
    if (c->spool_segment_size < SPOOL_SEG_SIZE_MIN || c->spool_segment_size > SPOOL_SEG_SIZE_MAX) {
        where_of(ld, cfg_find("spool_segment_size"));
        cfg_error(&ld->errs, "spool_segment_size must be between 1m and 1024m");
    }
}

/* A dkim_sign key must load as an RSA or Ed25519 private key. */
static void
load_dkim_key(struct loader *ld, const struct dkim_entry *d)
{
    struct buf why = BUF_INIT;
    char t[SHOWN_MAX];
    if (ld->c->dkim_keys == NULL)
        ld->c->dkim_keys = dkim_keyset_new();
    if (dkim_keyset_add(ld->c->dkim_keys, d->domain, d->selector, d->keyfile, &why) < 0)
        cfg_error(&ld->errs, "dkim_sign key file \"%s\": %s", cfg_shown(d->keyfile, t, sizeof(t)),
            why.data ? why.data : "cannot load");
    buf_fini(&why);
}

/* check_files: named files must be readable regular files; secrets private. */
static void
check_files(struct loader *ld)
{
    for (size_t i = 0; i < config_n_settings; i++) {
        const struct cfg_setting *s = &config_settings[i];
        const char *path;
        if (!(s->flags & CFG_F_FILE))
            continue;
        path = *(char *const *)(const void *)((const char *)ld->c + s->off);
        if (path == NULL)
            continue;
        where_of(ld, s);
        (void)cfg_check_file(s->name, path, (s->flags & CFG_F_SECRET) != 0, &ld->errs);
    }
    for (size_t i = 0; i < ld->c->n_dkim_sign; i++) {
        const struct dkim_entry *d = &ld->c->dkim_sign[i];
        where_of(ld, cfg_find("dkim_sign"));
        if (cfg_check_file("dkim_sign key file", d->keyfile, true, &ld->errs) == 0)
            load_dkim_key(ld, d);
    }
    ld->c->dkim_keys_loaded = true;
}

/* The machine's FQDN: the canonical name of gethostname(), else the bare
 * name, else "localhost". */
static void
default_hostname(char *out, size_t cap)
{
    char name[CONFIG_HOST_MAX];
    struct addrinfo hints, *res = NULL;

    snprintf(out, cap, "localhost");
    if (gethostname(name, sizeof(name)) < 0)
        return;
    name[sizeof(name) - 1] = '\0';
    if (str_is_domain(name, strlen(name), false))
        snprintf(out, cap, "%s", name);
    memset(&hints, 0, sizeof(hints));
    hints.ai_flags = AI_CANONNAME;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(name, NULL, &hints, &res) == 0 && res != NULL && res->ai_canonname &&
        strlen(res->ai_canonname) < cap &&
        str_is_domain(res->ai_canonname, strlen(res->ai_canonname), false))
        snprintf(out, cap, "%s", res->ai_canonname);
    if (res != NULL)
        freeaddrinfo(res);
}

/* Built-in defaults, parsed like user values; a bad one is a bug. */
static void
apply_defaults(struct config *c, struct buf *errs)
{
    struct cfg_errs e = { errs, "default", 0 };
    for (size_t i = 0; i < config_n_settings; i++) {
        if (config_settings[i].def != NULL &&
            cfg_set(c, &config_settings[i], config_settings[i].def, &e) < 0)
            tern_panic("bad default for %s: %s", config_settings[i].name, errs->data);
    }
}

struct config *
config_load(const char *path, const char *const *overrides, size_t n_overrides,
    bool check_files_too, struct buf *errors)
{
    return config_load_text(path, NULL, 0, overrides, n_overrides, check_files_too, errors);
}

struct config *
config_load_text(const char *path, const char *text, size_t text_len, const char *const *overrides,
    size_t n_overrides, bool check_files_too, struct buf *errors)
{
    struct loader ld;
    struct config *c = xcalloc(1, sizeof(*c));

    c->refs = 1;
    c->path = path ? xstrdup(path) : NULL;
    apply_defaults(c, errors);
    memset(&ld, 0, sizeof(ld));
    ld.c = c;
    ld.path = path;
    ld.text = text;
    ld.text_len = text_len;
    ld.errs.out = errors;
    ld.errs.where = ld.where;
    ld.line_of = xcalloc(config_n_settings, sizeof(*ld.line_of));
    ld.by_override = xcalloc(config_n_settings, sizeof(*ld.by_override));
    if (path != NULL)
        load_file(&ld);
    for (size_t i = 0; i < n_overrides; i++)
        load_override(&ld, overrides[i]);
    if (c->hostname == NULL) {
        char fqdn[CONFIG_HOST_MAX];
        default_hostname(fqdn, sizeof(fqdn));
        c->hostname = xstrdup(fqdn);
    }
    /* The first smarthost, for callers that need only one. */
    if (c->n_smarthosts > 0)
        c->smarthost = c->smarthosts[0];
    else
        memset(&c->smarthost, 0, sizeof(c->smarthost));
    /* The maildrop sits beside the spool, which only ternd's user may enter. */
    if (c->maildrop_dir == NULL) {
        size_t n = strlen(c->spool_dir);
        while (n > 1 && c->spool_dir[n - 1] == '/')
            n--;
        c->maildrop_dir = xmalloc(n + sizeof("-maildrop"));
        memcpy(c->maildrop_dir, c->spool_dir, n);
        memcpy(c->maildrop_dir + n, "-maildrop", sizeof("-maildrop"));
    }
    /* A tenth of the sessions is kept for relay_networks unless told. */
    if (!was_set(&ld, "reserved_sessions"))
        c->reserved_sessions = c->max_sessions / 10;
    if (!was_set(&ld, "workers"))
        c->workers = config_default_workers();
    check_combinations(&ld);
    if (check_files_too)
        check_files(&ld);
    if (ld.errs.n > CONFIG_ERRORS_MAX)
        buf_printf(errors, "(%u more errors not shown)\n", ld.errs.n - CONFIG_ERRORS_MAX);
    free(ld.line_of);
    free(ld.by_override);
    if (ld.errs.n > 0) {
        config_unref(c);
        return NULL;
    }
    return c;
}

uint32_t
config_default_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > CONFIG_WORKERS_AUTO_MAX ? CONFIG_WORKERS_AUTO_MAX : (uint32_t)n;
}

const char *
config_pick_file(const char *given, const char *dflt)
{
    if (given != NULL)
        return given;
    /* Only a file that is not there means "no file": one that is there but
     * cannot be read is loaded, so that the error names it. */
    if (access(dflt, F_OK) < 0 && (errno == ENOENT || errno == ENOTDIR))
        return NULL;
    return dflt;
}

const char *
config_file_or_default(const char *given)
{
    return config_pick_file(given, CONFIG_DEFAULT_FILE);
}

struct config *
config_ref(struct config *c)
{
    TERN_ASSERT(c != NULL && __atomic_load_n(&c->refs, __ATOMIC_RELAXED) > 0);
    /* Atomic: a worker thread may drop a reference off the loop. */
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

/* Serialises the first load of a snapshot's keys (config_dkim_keys). */
static pthread_mutex_t dkim_keys_mu = PTHREAD_MUTEX_INITIALIZER;

struct dkim_keyset *
config_dkim_keys(struct config *c)
{
    struct dkim_keyset *ks;
    pthread_mutex_lock(&dkim_keys_mu);
    for (size_t i = 0; !c->dkim_keys_loaded && i < c->n_dkim_sign; i++) {
        const struct dkim_entry *d = &c->dkim_sign[i];
        struct buf why = BUF_INIT;
        struct logline l;
        if (c->dkim_keys == NULL)
            c->dkim_keys = dkim_keyset_new();
        if (dkim_keyset_add(c->dkim_keys, d->domain, d->selector, d->keyfile, &why) == 0)
            continue;
        log_begin(&l, LOG_ERROR, NULL, "dkim", "key_unusable");
        log_str(&l, "domain", d->domain);
        log_str(&l, "selector", d->selector);
        log_str(&l, "file", d->keyfile);
        log_str(&l, "error", why.data ? why.data : "cannot load");
        log_str(&l, "action", "mail of this entry is not signed");
        log_end(&l);
        buf_fini(&why);
    }
    c->dkim_keys_loaded = true;
    ks = c->dkim_keys;
    pthread_mutex_unlock(&dkim_keys_mu);
    return ks;
}

void
config_set_dkim_keys(struct config *c, struct dkim_keyset *ks)
{
    pthread_mutex_lock(&dkim_keys_mu);
    dkim_keyset_unref(c->dkim_keys);
    c->dkim_keys = ks;
    c->dkim_keys_loaded = true;
    pthread_mutex_unlock(&dkim_keys_mu);
}

void
config_unref(struct config *c)
{
    if (c == NULL)
        return;
    TERN_ASSERT(__atomic_load_n(&c->refs, __ATOMIC_RELAXED) > 0);
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    for (size_t i = 0; i < config_n_settings; i++)
        cfg_clear(c, &config_settings[i]);
    dkim_keyset_unref(c->dkim_keys);
    free(c->path);
    free(c);
}
