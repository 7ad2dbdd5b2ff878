/*
 * DMARC records, alignment and the organizational domain (RFC 7489). The
 * Public Suffix List is libpsl's built-in copy (or the installed list when
 * the library was built without one), loaded once and read-only after.
 */
#include "dmarc/dmarc.h"

#include <ctype.h>
#include <libpsl.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>

#include "util/parse.h"
#include "util/util.h"

const char *
dmarc_result_name(enum dmarc_result r)
{
    static const char *const names[] = { "none", "pass", "fail", "temperror", "permerror" };
    return (size_t)r < TERN_ARRAY_LEN(names) ? names[r] : "permerror";
}

const char *
dmarc_policy_name(enum dmarc_policy p)
{
    static const char *const names[] = { "none", "quarantine", "reject" };
    return (size_t)p < TERN_ARRAY_LEN(names) ? names[p] : "none";
}

/* The next tag of p[*i..n): name and value trimmed; false at the end. */
static bool
next_tag(
    const char *p, size_t n, size_t *i, const char **name, size_t *nl, const char **val, size_t *vl)
{
    struct str_tag t;
    if (!str_next_tag(p, n, i, &t))
        return false;
    *name = t.name;
    *nl = t.name_len;
    *val = t.val;
    *vl = t.val_len;
    return true;
}

static bool
word_is(const char *p, size_t n, const char *w)
{
    return n == strlen(w) && strncasecmp(p, w, n) == 0;
}

bool
dmarc_is_record(const char *txt, size_t len)
{
    size_t i = 0, nl, vl;
    const char *name, *val;
    /* §6.3: v= first, exactly "DMARC1". */
    return next_tag(txt, len, &i, &name, &nl, &val, &vl) && word_is(name, nl, "v") &&
           word_is(val, vl, "DMARC1");
}

static int
policy_of(const char *v, size_t n, enum dmarc_policy *p)
{
    if (word_is(v, n, "none"))
        *p = DMARC_P_NONE;
    else if (word_is(v, n, "quarantine"))
        *p = DMARC_P_QUARANTINE;
    else if (word_is(v, n, "reject"))
        *p = DMARC_P_REJECT;
    else
        return -1;
    return 0;
}

int
dmarc_record_parse(const char *txt, size_t len, struct dmarc_record *r)
{
    size_t i = 0, nl, vl;
    const char *name, *val;
    bool has_p = false, has_sp = false, has_rua = false;
    uint64_t pct;
    if (memchr(txt, '\0', len) != NULL || !dmarc_is_record(txt, len))
        return -1;
    memset(r, 0, sizeof(*r));
    r->pct = 100;
    next_tag(txt, len, &i, &name, &nl, &val, &vl); /* v= */
    while (next_tag(txt, len, &i, &name, &nl, &val, &vl)) {
        if (word_is(name, nl, "p")) {
            has_p = policy_of(val, vl, &r->p) == 0;
        } else if (word_is(name, nl, "sp")) {
            has_sp = policy_of(val, vl, &r->sp) == 0;
        } else if (word_is(name, nl, "adkim")) {
            r->adkim_strict = word_is(val, vl, "s");
        } else if (word_is(name, nl, "aspf")) {
            r->aspf_strict = word_is(val, vl, "s");
        } else if (word_is(name, nl, "pct")) {
            if (parse_u64(val, vl, 100, &pct) == 0)
                r->pct = (unsigned)pct;
        } else if (word_is(name, nl, "rua")) {
            has_rua = vl > 0;
        }
    }
    if (!has_p) {
        /* §6.6.3: without a valid p=, a record with rua= is taken as
         * p=none (for reports' sake); any other is no record at all. */
        if (!has_rua)
            return -1;
        r->p = DMARC_P_NONE;
    }
    if (!has_sp)
        r->sp = r->p;
    return 0;
}

static pthread_once_t psl_once = PTHREAD_ONCE_INIT;
static const psl_ctx_t *psl;

static void
psl_load(void)
{
    psl = psl_builtin();
    if (psl == NULL)
        psl = psl_latest(NULL);
}

int
dmarc_org_domain(const char *domain, char *out, size_t cap)
{
    const char *reg = NULL;
    size_t n;
    pthread_once(&psl_once, psl_load);
    if (psl != NULL)
        reg = psl_registrable_domain(psl, domain);
    if (reg == NULL)
        reg = domain;
    n = strlen(reg);
    if (n >= cap)
        return -1;
    memcpy(out, reg, n + 1);
    str_lower(out);
    return 0;
}

bool
dmarc_aligned(const char *id_domain, const char *from_domain, bool strict)
{
    char a[DMARC_DOMAIN_MAX + 1], b[DMARC_DOMAIN_MAX + 1];
    if (id_domain == NULL || from_domain == NULL || *id_domain == '\0')
        return false;
    if (strcasecmp(id_domain, from_domain) == 0)
        return true;
    if (strict || dmarc_org_domain(id_domain, a, sizeof(a)) < 0 ||
        dmarc_org_domain(from_domain, b, sizeof(b)) < 0)
        return false;
    return strcmp(a, b) == 0;
}

enum dmarc_policy
dmarc_applied_policy(
    const struct dmarc_record *r, const char *from_domain, const char *record_domain, unsigned draw)
{
    enum dmarc_policy p = strcasecmp(from_domain, record_domain) == 0 ? r->p : r->sp;
    if (draw >= r->pct && p != DMARC_P_NONE)
        p = p == DMARC_P_REJECT ? DMARC_P_QUARANTINE : DMARC_P_NONE;
    return p;
}
