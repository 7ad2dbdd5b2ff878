/*
 * Inbound checks (inbound_checks): SPF (RFC 7208) of the MAIL FROM and HELO
 * identities, DKIM (RFC 6376) of every signature, DMARC (RFC 7489) of the
 * From domain, for mail of clients neither in relay_networks nor
 * authenticated; the results go in front of the message as one
 * Authentication-Results field (RFC 8601) through the spool prefix.
 *
 * The header section of such a message is held back (bounded) instead of
 * being written as it streams, and written once it has ended, without the
 * Authentication-Results fields that claim our authserv-id (RFC 8601 §5).
 * The body is hashed as it streams, on the loop, from the bytes the session
 * handles anyway (reading it back from the spool at the end could mean disk
 * reads on the loop: a big body is spilled by the commit thread). SPF starts
 * with the data, the DKIM keys and the DMARC record as soon as the header
 * section is in; the stage after the data waits for what is still pending,
 * at most inbound_check_timeout. Everything is owned by the transaction:
 * smtp_checks_free cancels every lookup, so no callback outlives it.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "dkim/dkim.h"
#include "dmarc/dmarc.h"
#include "dns/dns.h"
#include "policy.h"
#include "smtp_int.h"
#include "spf/spf.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/util.h"

struct key_query {
    struct smtp_checks *c;
    size_t i;
    struct dns_query *q; /* in flight, or NULL */
};

struct spf_check_state {
    struct smtp_checks *c;
    struct spf_eval *e; /* in flight, or NULL */
    bool ran;
    enum spf_result r;
};

struct smtp_checks {
    struct smtp_session *s; /* borrowed: the session owns the transaction owning this */
    unsigned mask;          /* CONFIG_CHECK_* */
    /* the header section, held back (unstuffed) */
    struct buf hold;
    bool hdr_done, bol, cr_bol;
    bool in_name, name_wsp; /* reading a field name; WSP after it */
    size_t line_start;      /* where the current line starts in the hold */
    bool stuff_bol;         /* at a line start of the stuffed stream (a '.' there is stuffing) */
    /* SPF */
    struct spf_check_state mailfrom, helo;
    /* DKIM */
    struct dkim_verifier *dv; /* owned or NULL */
    struct key_query kq[DKIM_VERIFY_SIGS_MAX];
    /* DMARC */
    bool from_ok;
    char from_domain[DMARC_DOMAIN_MAX + 1];
    char org_domain[DMARC_DOMAIN_MAX + 1];
    char rec_domain[DMARC_DOMAIN_MAX + 1]; /* where the record was found */
    struct dns_query *dq;                  /* in flight, or NULL */
    bool dmarc_at_org, rec_found, dmarc_temp;
    struct dmarc_record rec;
    /* the stage */
    unsigned pending;    /* lookups and evaluations in flight */
    bool waiting;        /* the stage waits for them */
    struct event *timer; /* owned: the stage's budget */
};

static void checks_pending_done(struct smtp_checks *c);

/* ---- the Authentication-Results field (RFC 8601 §2.2) ---- */

void
smtp_authres_render(const char *authserv_id, const char *const *results, size_t n, struct buf *out)
{
    size_t line;
    buf_printf(out, "Authentication-Results: %s", authserv_id);
    line = strlen("Authentication-Results: ") + strlen(authserv_id);
    if (n == 0) {
        buf_append_str(out, "; none");
        line += 6;
    }
    for (size_t i = 0; i < n; i++) {
        const char *p = results[i];
        buf_append_char(out, ';');
        line++;
        /* Fold greedily at the spaces between tokens (comments included:
         * FWS is allowed in them), keeping lines to 78 characters where
         * the tokens allow. */
        while (*p != '\0') {
            size_t k = strcspn(p, " ");
            /* The ';' after an item's last token is on its line too. */
            size_t need = k + (p[k] == '\0' && i + 1 < n ? 1 : 0);
            if (line + 1 + need > 78) {
                buf_append_str(out, "\r\n\t");
                line = 1;
            } else {
                buf_append_char(out, ' ');
                line++;
            }
            buf_append(out, p, k);
            line += k;
            p += k;
            while (*p == ' ')
                p++;
        }
    }
    buf_append_str(out, "\r\n");
}

/* An address as a property value: as is when it is a plain dot-atom
 * local part at a domain, else only "@domain" (RFC 8601 §2.7.2 allows the
 * domain alone), so no client text can break the field's syntax. */
static void
add_addr_value(struct buf *b, const char *addr)
{
    const char *at = strrchr(addr, '@');
    bool plain = at != NULL && at != addr && strlen(addr) < 200;
    for (const char *p = addr; plain && p < at; p++)
        plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                strchr("!#$%&'*+/=?^_`{|}~.-", *p) != NULL;
    if (at == NULL || !str_is_domain(at + 1, strlen(at + 1), false))
        buf_append_str(b, "unknown");
    else
        buf_append_str(b, plain ? addr : at);
}

/* ---- the header section held back ---- */

/* Does field f[len] claim authserv_id (an Authentication-Results field
 * whose first token, comments skipped, is it)? */
static bool
forged_authres(const char *f, size_t len, const char *authserv_id)
{
    static const char name[] = "Authentication-Results";
    size_t i = sizeof(name) - 1, s, depth = 0;
    if (len < i || strncasecmp(f, name, i) != 0)
        return false;
    while (i < len && (f[i] == ' ' || f[i] == '\t'))
        i++;
    if (i == len || f[i] != ':')
        return false;
    for (i++; i < len; i++) {
        char ch = f[i];
        if (ch == '(')
            depth++;
        else if (ch == ')' && depth > 0)
            depth--;
        else if (depth == 0 && ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n')
            break;
    }
    s = i;
    while (i < len && f[i] != ';' && f[i] != ' ' && f[i] != '\t' && f[i] != '\r' && f[i] != '(')
        i++;
    return i - s == strlen(authserv_id) && strncasecmp(f + s, authserv_id, i - s) == 0;
}

/* Write the held header section to the writer, without forged fields. */
static void
hold_flush(struct smtp_checks *c, struct smtp_tx *tx)
{
    const char *p = c->hold.data;
    size_t n = c->hold.len, pos = 0, dropped = 0;
    while (pos < n) {
        size_t start = pos;
        /* A field runs to the CRLF not followed by WSP. */
        for (;;) {
            const char *lf = memchr(p + pos, '\n', n - pos);
            pos = lf ? (size_t)(lf - p) + 1 : n;
            if (pos >= n || (p[pos] != ' ' && p[pos] != '\t'))
                break;
        }
        if (forged_authres(p + start, pos - start, c->s->cfg->hostname))
            dropped++;
        else
            spool_writer_write(tx->w, p + start, pos - start);
    }
    if (dropped > 0) {
        struct logline l;
        log_begin(&l, LOG_INFO, spool_writer_qid(tx->w), "checks", "authres_removed");
        log_int(&l, "sess", (int64_t)c->s->id);
        log_int(&l, "fields", (int64_t)dropped);
        log_end(&l);
    }
}

static void header_end(struct smtp_checks *c, struct smtp_tx *tx);

/* Body bytes (content, not stuffed) for the DKIM hashes. */
static void
body_bytes(struct smtp_checks *c, const char *p, size_t n)
{
    if (c->dv != NULL && n > 0)
        dkim_verifier_body(c->dv, p, n);
}

/* One byte of a line of the header section: false when the line cannot be
 * a header field (RFC 5322 §2.2: printable name, optional WSP, ':'), nor a
 * continuation. */
static bool
field_byte(struct smtp_checks *c, char ch)
{
    if (c->bol) {
        c->in_name = ch != ' ' && ch != '\t' && ch != '\r';
        c->name_wsp = false;
    }
    if (!c->in_name)
        return true;
    if (ch == ':')
        c->in_name = false;
    else if (ch == ' ' || ch == '\t')
        c->name_wsp = true;
    else if ((unsigned char)ch < 33 || (unsigned char)ch > 126 || c->name_wsp)
        return false;
    return true;
}

/* Content bytes p[n] while the header section is held: up to its end into
 * the hold, the rest written on and hashed. It ends at the empty line
 * (RFC 5322 §2.1) or, in a malformed message, before the first line that
 * is no header field: what is held stays bounded by the header fields. */
static void
header_bytes(struct smtp_checks *c, struct smtp_tx *tx, const char *p, size_t n)
{
    size_t i = 0, body_from = SIZE_MAX; /* in the hold: where a malformed header ended */
    struct buf rest = BUF_INIT;
    if (c->hdr_done) {
        /* The rest of a piece that had the end of the header section. */
        spool_writer_write(tx->w, p, n);
        body_bytes(c, p, n);
        return;
    }
    for (; i < n && !c->hdr_done; i++) {
        char ch = p[i];
        if (c->bol)
            c->line_start = c->hold.len + i;
        if (c->cr_bol && ch == '\n') {
            c->hdr_done = true;
        } else if (!field_byte(c, ch)) {
            c->hdr_done = true;
            body_from = c->line_start;
            break;
        } else {
            c->cr_bol = c->bol && ch == '\r';
            c->bol = ch == '\n';
        }
    }
    if (c->hold.len + i > SMTP_CHECKS_HEADER_MAX) {
        tx->hdr_too_big = true;
        return;
    }
    buf_append(&c->hold, p, i);
    if (!c->hdr_done)
        return;
    if (body_from != SIZE_MAX) {
        buf_append(&rest, c->hold.data + body_from, c->hold.len - body_from);
        c->hold.len = body_from;
        c->hold.data[body_from] = '\0'; /* a buf keeps its NUL */
    }
    header_end(c, tx);
    if (rest.len > 0) {
        spool_writer_write(tx->w, rest.data, rest.len);
        body_bytes(c, rest.data, rest.len);
    }
    buf_fini(&rest);
    if (i < n) {
        spool_writer_write(tx->w, p + i, n - i);
        body_bytes(c, p + i, n - i);
    }
}

/* Stuffed bytes p[n] as content: stuffing dots dropped, pieces to fn. */
static void
unstuff(struct smtp_checks *c, struct smtp_tx *tx, const char *p, size_t n,
    void (*fn)(struct smtp_checks *c, struct smtp_tx *tx, const char *p, size_t n))
{
    while (n > 0) {
        const char *lf;
        size_t k;
        if (c->stuff_bol && *p == '.') {
            p++;
            n--;
            c->stuff_bol = false;
            continue;
        }
        lf = memchr(p, '\n', n);
        k = lf ? (size_t)(lf - p) + 1 : n;
        fn(c, tx, p, k);
        c->stuff_bol = lf != NULL;
        p += k;
        n -= k;
    }
}

static void
hash_piece(struct smtp_checks *c, struct smtp_tx *tx, const char *p, size_t n)
{
    (void)tx;
    body_bytes(c, p, n);
}

void
smtp_checks_stuffed(struct smtp_tx *tx, struct evbuffer *src, size_t n, uint64_t content)
{
    struct smtp_checks *c = tx->checks;
    if (c->hdr_done) {
        /* Hash what the writer is about to take, in place. */
        struct evbuffer_ptr pos;
        struct evbuffer_iovec v[16];
        size_t left = n;
        evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
        while (left > 0 && c->dv != NULL) {
            int k = evbuffer_peek(src, (ev_ssize_t)left, &pos, v, 16);
            size_t got = 0;
            for (int j = 0; j < k && j < 16 && got < left; j++) {
                size_t len = v[j].iov_len < left - got ? v[j].iov_len : left - got;
                unstuff(c, tx, v[j].iov_base, len, hash_piece);
                got += len;
            }
            left -= got;
            if (left > 0 && evbuffer_ptr_set(src, &pos, got, EVBUFFER_PTR_ADD) < 0)
                break;
        }
        spool_writer_add_stuffed(tx->w, src, n, content);
        return;
    }
    /* The header section (and perhaps the start of the body): copied out. */
    char *tmp = xmalloc(n);
    if (evbuffer_remove(src, tmp, n) != (int)n)
        tern_panic("evbuffer_remove failed");
    unstuff(c, tx, tmp, n, header_bytes);
    free(tmp);
}

void
smtp_checks_plain(struct smtp_tx *tx, const char *p, size_t n)
{
    struct smtp_checks *c = tx->checks;
    /* Content, not stuffed: only the line starts matter for what follows. */
    if (n > 0)
        c->stuff_bol = p[n - 1] == '\n';
    if (c->hdr_done) {
        spool_writer_write(tx->w, p, n);
        body_bytes(c, p, n);
        return;
    }
    header_bytes(c, tx, p, n);
}

void
smtp_checks_data_end(struct smtp_session *s)
{
    struct smtp_checks *c = s->tx->checks;
    if (c != NULL && !c->hdr_done) {
        c->hdr_done = true;
        header_end(c, s->tx); /* a message that is all header */
    }
}

/* ---- SPF ---- */

static void
spf_cb(void *arg, const struct spf_outcome *o)
{
    struct spf_check_state *st = arg;
    st->e = NULL;
    st->r = o->result;
    checks_pending_done(st->c);
}

static bool
helo_is_domain(const char *helo)
{
    return helo != NULL && helo[0] != '[' && strchr(helo, '.') != NULL &&
           str_is_domain(helo, strlen(helo), false);
}

static void
spf_start(struct smtp_checks *c, struct spf_check_state *st, const char *sender, const char *domain)
{
    struct smtp_session *s = c->s;
    struct spf_request req;
    struct spf_resolver res;
    memset(&req, 0, sizeof(req));
    memcpy(&req.ip, &s->peer, sizeof(s->peer));
    req.sender = sender;
    req.helo = s->helo;
    req.domain = domain;
    req.receiver = s->cfg->hostname;
    st->c = c;
    st->ran = true;
    st->r = SPF_TEMPERROR;
    if (s->lp->dns == NULL)
        return; /* no resolver: temperror */
    res = spf_resolver_dns(s->lp->dns);
    st->e = spf_eval_start(s->lp->base, &res, &req, spf_cb, st);
    if (st->e == NULL)
        st->r = SPF_NONE;
    else
        c->pending++;
}

/* ---- DKIM keys ---- */

static void
key_cb(void *arg, const struct dns_rr_result *r)
{
    struct key_query *k = arg;
    struct smtp_checks *c = k->c;
    k->q = NULL;
    if (r->rc == DNS_OK && r->n > 0)
        dkim_verifier_key(c->dv, k->i, DKIM_KEY_OK, r->rr[0].data, r->rr[0].len);
    else
        dkim_verifier_key(c->dv, k->i, r->rc == DNS_TEMP ? DKIM_KEY_TEMP : DKIM_KEY_NONE, "", 0);
    checks_pending_done(c);
}

static void
dkim_start(struct smtp_checks *c, const char *hdr, size_t len)
{
    c->dv = dkim_verifier_new(hdr, len, tern_now_ms() / 1000);
    for (size_t i = 0; i < dkim_verifier_count(c->dv); i++) {
        char name[DNS_NAME_MAX + 1];
        if (!dkim_verifier_key_name(c->dv, i, name, sizeof(name)))
            continue;
        if (c->s->lp->dns == NULL) {
            dkim_verifier_key(c->dv, i, DKIM_KEY_TEMP, "", 0);
            continue;
        }
        c->kq[i].c = c;
        c->kq[i].i = i;
        c->kq[i].q = dns_lookup_rr(c->s->lp->dns, name, DNS_RR_TXT, key_cb, &c->kq[i]);
        c->pending++;
    }
}

/* ---- DMARC ---- */

static void dmarc_lookup(struct smtp_checks *c, const char *domain);

static void
dmarc_cb(void *arg, const struct dns_rr_result *r)
{
    struct smtp_checks *c = arg;
    size_t found = 0, which = 0;
    c->dq = NULL;
    if (r->rc == DNS_TEMP) {
        c->dmarc_temp = true;
    } else if (r->rc == DNS_OK) {
        for (size_t i = 0; i < r->n; i++) {
            if (dmarc_is_record(r->rr[i].data, r->rr[i].len)) {
                found++;
                which = i;
            }
        }
    }
    /* RFC 7489 §6.6.3: one record is used; several mean no policy. */
    if (found == 1 && dmarc_record_parse(r->rr[which].data, r->rr[which].len, &c->rec) == 0) {
        c->rec_found = true;
        snprintf(c->rec_domain, sizeof(c->rec_domain), "%s",
            c->dmarc_at_org ? c->org_domain : c->from_domain);
    } else if (found == 0 && !c->dmarc_temp && !c->dmarc_at_org &&
               strcmp(c->org_domain, c->from_domain) != 0) {
        c->dmarc_at_org = true;
        dmarc_lookup(c, c->org_domain);
    }
    checks_pending_done(c);
}

static void
dmarc_lookup(struct smtp_checks *c, const char *domain)
{
    char name[DNS_NAME_MAX + 1];
    int k = snprintf(name, sizeof(name), "_dmarc.%s", domain);
    if (k < 0 || (size_t)k > DMARC_DOMAIN_MAX)
        return; /* no such name can exist: no record */
    if (c->s->lp->dns == NULL) {
        c->dmarc_temp = true;
        return;
    }
    c->dq = dns_lookup_rr(c->s->lp->dns, name, DNS_RR_TXT, dmarc_cb, c);
    c->pending++;
}

/* The From domain (RFC 7489 §6.6.1: exactly one From field with one
 * address) and its record lookup. */
static void
dmarc_start(struct smtp_checks *c, const char *hdr, size_t len)
{
    const char *p = hdr, *end = hdr + len;
    size_t n_from = 0;
    const char *fv = NULL;
    size_t fl = 0;
    while (p < end) {
        const char *start = p, *colon;
        for (;;) {
            const char *lf = memchr(p, '\n', (size_t)(end - p));
            p = lf ? lf + 1 : end;
            if (p >= end || (*p != ' ' && *p != '\t'))
                break;
        }
        colon = memchr(start, ':', (size_t)(p - start));
        if (colon != NULL && (size_t)(colon - start) >= 4 && strncasecmp(start, "From", 4) == 0) {
            const char *q = start + 4;
            while (q < colon && (*q == ' ' || *q == '\t'))
                q++;
            if (q == colon) {
                n_from++;
                fv = colon + 1;
                fl = (size_t)(p - fv);
            }
        }
    }
    if (n_from != 1 || dkim_from_domain(fv, fl, c->from_domain, sizeof(c->from_domain)) < 0 ||
        dmarc_org_domain(c->from_domain, c->org_domain, sizeof(c->org_domain)) < 0)
        return; /* permerror */
    c->from_ok = true;
    dmarc_lookup(c, c->from_domain);
}

static void
header_end(struct smtp_checks *c, struct smtp_tx *tx)
{
    /* The fields without the empty line that ends them. */
    size_t len = c->hold.len;
    if (len >= 2 && c->hold.data[len - 2] == '\r' && c->hold.data[len - 1] == '\n' &&
        (len == 2 || c->hold.data[len - 3] == '\n'))
        len -= 2;
    if (c->mask & (CONFIG_CHECK_DKIM | CONFIG_CHECK_DMARC))
        dkim_start(c, c->hold.data, len);
    if (c->mask & CONFIG_CHECK_DMARC)
        dmarc_start(c, c->hold.data, len);
    hold_flush(c, tx);
    buf_fini(&c->hold);
}

/* ---- start, stage, conclusion ---- */

void
smtp_checks_open(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct smtp_checks *c;
    const char *sender = tx->env->sender != NULL ? tx->env->sender : "";
    unsigned mask = s->cfg->inbound_check_mask;
    if (mask == 0 || policy_may_relay(s->cfg, (const struct sockaddr *)(const void *)&s->peer,
                         s->auth_user != NULL, ""))
        return;
    c = tx->checks = xcalloc(1, sizeof(*c));
    c->s = s;
    c->mask = mask;
    c->bol = c->stuff_bol = true;
    /* DMARC needs both results; SPF needs only the envelope: start now. */
    if (mask & (CONFIG_CHECK_SPF | CONFIG_CHECK_DMARC)) {
        if (sender[0] != '\0')
            spf_start(c, &c->mailfrom, sender, NULL);
        else if (helo_is_domain(s->helo))
            spf_start(c, &c->mailfrom, "", s->helo); /* RFC 7208 §2.4 */
        if (helo_is_domain(s->helo) && (mask & CONFIG_CHECK_SPF))
            spf_start(c, &c->helo, NULL, s->helo); /* §2.3 */
    }
}

void
smtp_checks_free(struct smtp_checks *c)
{
    if (c == NULL)
        return;
    spf_eval_cancel(c->mailfrom.e);
    spf_eval_cancel(c->helo.e);
    for (size_t i = 0; i < DKIM_VERIFY_SIGS_MAX; i++) {
        if (c->kq[i].q != NULL)
            dns_cancel(c->kq[i].q);
    }
    if (c->dq != NULL)
        dns_cancel(c->dq);
    if (c->timer != NULL)
        event_free(c->timer);
    dkim_verifier_free(c->dv);
    buf_fini(&c->hold);
    free(c);
}

/* Lookups still out when the budget ends: temperror. */
static void
cancel_pending(struct smtp_checks *c)
{
    struct spf_check_state *sp[2] = { &c->mailfrom, &c->helo };
    for (size_t i = 0; i < 2; i++) {
        if (sp[i]->e != NULL) {
            spf_eval_cancel(sp[i]->e);
            sp[i]->e = NULL;
            sp[i]->r = SPF_TEMPERROR;
        }
    }
    for (size_t i = 0; i < DKIM_VERIFY_SIGS_MAX; i++) {
        if (c->kq[i].q != NULL) {
            dns_cancel(c->kq[i].q);
            c->kq[i].q = NULL;
            dkim_verifier_key(c->dv, i, DKIM_KEY_TEMP, "", 0);
        }
    }
    if (c->dq != NULL) {
        dns_cancel(c->dq);
        c->dq = NULL;
        c->dmarc_temp = true;
    }
    c->pending = 0;
}

/* The DMARC result from the SPF and DKIM outcomes (RFC 7489 §6.6.2). */
static enum dmarc_result
dmarc_result(const struct smtp_checks *c, const struct smtp_tx *tx)
{
    const char *sender = tx->env->sender != NULL ? tx->env->sender : "";
    const char *spf_dom = strrchr(sender, '@');
    if (!c->from_ok)
        return DMARC_R_PERMERROR;
    if (c->dmarc_temp && !c->rec_found)
        return DMARC_R_TEMPERROR;
    if (!c->rec_found)
        return DMARC_R_NONE;
    spf_dom = spf_dom != NULL ? spf_dom + 1 : c->s->helo;
    if (c->mailfrom.ran && c->mailfrom.r == SPF_PASS &&
        dmarc_aligned(spf_dom, c->from_domain, c->rec.aspf_strict))
        return DMARC_R_PASS;
    for (size_t i = 0; c->dv != NULL && i < dkim_verifier_count(c->dv); i++) {
        const struct dkim_sig_info *si = dkim_verifier_sig(c->dv, i);
        if (si->result == DKIM_V_PASS &&
            dmarc_aligned(si->domain, c->from_domain, c->rec.adkim_strict))
            return DMARC_R_PASS;
    }
    return DMARC_R_FAIL;
}

/* The results, one string of tokens each, into res (owned strings). */
static size_t
results_text(struct smtp_checks *c, struct smtp_tx *tx, enum dmarc_result dr,
    enum dmarc_policy applied, struct buf *res, size_t max)
{
    size_t n = 0;
    const char *sender = tx->env->sender != NULL ? tx->env->sender : "";
    if (c->mask & CONFIG_CHECK_SPF) {
        buf_printf(&res[n],
            "spf=%s smtp.mailfrom=", c->mailfrom.ran ? spf_result_name(c->mailfrom.r) : "none");
        if (sender[0] != '\0' || !helo_is_domain(c->s->helo))
            add_addr_value(&res[n], sender);
        else
            buf_printf(&res[n], "postmaster@%s", c->s->helo);
        n++;
        if (c->helo.ran)
            buf_printf(&res[n++], "spf=%s smtp.helo=%s", spf_result_name(c->helo.r), c->s->helo);
    }
    if (c->mask & CONFIG_CHECK_DKIM) {
        size_t ns = c->dv != NULL ? dkim_verifier_count(c->dv) : 0;
        if (ns == 0)
            buf_append_str(&res[n++], "dkim=none");
        for (size_t i = 0; i < ns && n < max - 1; i++) {
            const struct dkim_sig_info *si = dkim_verifier_sig(c->dv, i);
            buf_printf(&res[n], "dkim=%s", dkim_vresult_name(si->result));
            if (si->reason != NULL)
                buf_printf(&res[n], " (%s)", si->reason);
            else if (si->testing)
                buf_append_str(&res[n], " (test mode)");
            if (si->domain[0] != '\0')
                buf_printf(&res[n], " header.d=%s", si->domain);
            if (si->selector[0] != '\0')
                buf_printf(&res[n], " header.s=%s", si->selector);
            if (si->b8[0] != '\0')
                buf_printf(&res[n], " header.b=%s", si->b8);
            n++;
        }
    }
    if (c->mask & CONFIG_CHECK_DMARC) {
        buf_printf(&res[n], "dmarc=%s", dmarc_result_name(dr));
        if (c->rec_found)
            buf_printf(&res[n], " (p=%s dis=%s)", dmarc_policy_name(c->rec.p),
                dr == DMARC_R_FAIL && c->s->cfg->dmarc_enforce ? dmarc_policy_name(applied)
                                                               : "none");
        if (c->from_ok)
            buf_printf(&res[n], " header.from=%s", c->from_domain);
        n++;
    }
    return n;
}

static void
log_result(struct smtp_checks *c, enum dmarc_result dr, enum dmarc_policy applied)
{
    struct smtp_session *s = c->s;
    struct logline l;
    struct buf dk = BUF_INIT;
    for (size_t i = 0; c->dv != NULL && i < dkim_verifier_count(c->dv); i++) {
        const struct dkim_sig_info *si = dkim_verifier_sig(c->dv, i);
        buf_printf(&dk, "%s%s", i > 0 ? "," : "", dkim_vresult_name(si->result));
    }
    log_begin(&l, LOG_INFO, spool_writer_qid(s->tx->w), "checks", "result");
    log_int(&l, "sess", (int64_t)s->id);
    if (c->mailfrom.ran)
        log_str(&l, "spf", spf_result_name(c->mailfrom.r));
    if (c->helo.ran)
        log_str(&l, "spf_helo", spf_result_name(c->helo.r));
    log_str(&l, "dkim", dk.len > 0 ? dk.data : "none");
    if (c->mask & CONFIG_CHECK_DMARC) {
        log_str(&l, "dmarc", dmarc_result_name(dr));
        if (c->from_ok)
            log_str(&l, "from_domain", c->from_domain);
    }
    if (dr == DMARC_R_FAIL && s->cfg->dmarc_enforce)
        log_str(&l, "action", dmarc_policy_name(applied));
    log_end(&l);
    buf_fini(&dk);
}

static void
conclude(struct smtp_checks *c)
{
    struct smtp_session *s = c->s;
    struct smtp_tx *tx = s->tx;
    struct buf res[DKIM_VERIFY_SIGS_MAX + 4], ar = BUF_INIT;
    const char *strs[DKIM_VERIFY_SIGS_MAX + 4];
    enum dmarc_result dr;
    enum dmarc_policy applied = DMARC_P_NONE;
    struct logline l;
    size_t n;
    if (c->dv != NULL)
        dkim_verifier_finish(c->dv);
    dr = (c->mask & CONFIG_CHECK_DMARC) ? dmarc_result(c, tx) : DMARC_R_NONE;
    if (dr == DMARC_R_FAIL)
        applied = dmarc_applied_policy(
            &c->rec, c->from_domain, c->rec_domain, (unsigned)arc4random_uniform(100));
    for (size_t i = 0; i < TERN_ARRAY_LEN(res); i++)
        buf_init(&res[i]);
    n = results_text(c, tx, dr, applied, res, TERN_ARRAY_LEN(res));
    for (size_t i = 0; i < n; i++)
        strs[i] = res[i].data;
    smtp_authres_render(s->cfg->hostname, strs, n, &ar);
    for (size_t i = 0; i < TERN_ARRAY_LEN(res); i++)
        buf_fini(&res[i]);
    log_result(c, dr, applied);
    if (spool_writer_set_prefix(tx->w, ar.data) < 0) {
        log_begin(&l, LOG_WARN, spool_writer_qid(tx->w), "checks", "authres_too_long");
        log_int(&l, "len", (int64_t)ar.len);
        log_end(&l);
    }
    buf_fini(&ar);
    if (dr == DMARC_R_FAIL && s->cfg->dmarc_enforce) {
        struct tern_status st;
        if (applied == DMARC_P_REJECT) {
            STATUS_SET(
                &st, 550, "5.7.1", "Message rejected by the DMARC policy of %s", c->from_domain);
            smtp_tx_decide(s, SMTP_VERDICT_REFUSE, &st, "dmarc");
        } else if (applied == DMARC_P_QUARANTINE) {
            smtp_tx_decide(s, SMTP_VERDICT_HOLD, NULL, "dmarc");
        }
    }
}

static void
checks_pending_done(struct smtp_checks *c)
{
    TERN_ASSERT(c->pending > 0);
    if (--c->pending > 0 || !c->waiting)
        return;
    c->waiting = false;
    event_del(c->timer);
    conclude(c);
    smtp_tx_advance(c->s);
}

static void
budget_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_checks *c = arg;
    (void)fd;
    (void)what;
    if (!c->waiting)
        return;
    c->waiting = false;
    cancel_pending(c);
    conclude(c);
    smtp_tx_advance(c->s);
}

bool
smtp_checks_stage(struct smtp_session *s)
{
    struct smtp_checks *c = s->tx->checks;
    struct timeval tv;
    int64_t ms = s->cfg->inbound_check_timeout_ms;
    if (c == NULL)
        return false;
    if (c->pending == 0) {
        conclude(c);
        return false;
    }
    c->waiting = true;
    c->timer = evtimer_new(s->lp->base, budget_cb, c);
    if (c->timer == NULL)
        tern_panic("evtimer_new failed");
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    evtimer_add(c->timer, &tv);
    return true;
}
