/*
 * Runs SPF cases against zone data through the resolver seam: a fake
 * resolver answers from the zone (alternately inside lookup() and later
 * from the event loop, to exercise both paths of spf_eval_start). Input on
 * stdin, one item per line, fields hex-encoded ("-" = empty), written by
 * rfc7208.py:  R (new zone) | Z NAME TYPE DATA | T NAME (timeout) |
 * C ID IP MAILFROM HELO. Output per case: ID RESULT EXP_DEFAULT EXP_HEX.
 */
#include <arpa/inet.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dns.h"
#include "spf/spf.h"
#include "util/buf.h"
#include "util/parse.h"
#include "util/util.h"

#define LINE_MAX_LEN 65536
#define CNAME_HOPS   8

enum { ZT_CNAME = 5, ZT_NONE = -2, ZT_TIMEOUT = -1 };

struct zrec {
    char *name;
    int type;
    uint16_t pref;
    char *data;
    size_t len;
};

struct zone {
    struct zrec *r;
    size_t n;
    struct event_base *base;
    unsigned lookups;
};

struct pending {
    struct dns_rr_result *res;
    spf_answer_cb cb;
    void *arg;
};

static int
unhex(const char *s, struct buf *out)
{
    size_t n = strlen(s);
    buf_reset(out);
    if (strcmp(s, "-") == 0) {
        buf_append_str(out, "");
        return 0;
    }
    if (n % 2 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 2) {
        unsigned v;
        if (sscanf(s + i, "%2x", &v) != 1)
            return -1;
        buf_append_char(out, (char)v);
    }
    if (out->data == NULL)
        buf_append_str(out, "");
    return 0;
}

static void
norm_name(struct buf *b)
{
    if (b->len > 0 && b->data[b->len - 1] == '.')
        b->data[--b->len] = '\0';
    str_lower(b->data);
}

static int
type_of(const char *t)
{
    static const struct {
        const char *name;
        int type;
    } types[] = { { "A", DNS_RR_A }, { "AAAA", DNS_RR_AAAA }, { "MX", DNS_RR_MX },
        { "TXT", DNS_RR_TXT }, { "PTR", DNS_RR_PTR }, { "CNAME", ZT_CNAME }, { "NONE", ZT_NONE } };
    for (size_t i = 0; i < TERN_ARRAY_LEN(types); i++) {
        if (strcmp(types[i].name, t) == 0)
            return types[i].type;
    }
    return 0;
}

static void
zone_add(struct zone *z, const char *name, int type, const char *data)
{
    struct buf n = BUF_INIT, d = BUF_INIT;
    struct zrec *r;
    z->r = xrealloc(z->r, (z->n + 1) * sizeof(*z->r));
    r = &z->r[z->n++];
    memset(r, 0, sizeof(*r));
    unhex(name, &n);
    norm_name(&n);
    r->name = buf_take(&n);
    r->type = type;
    if (data != NULL && unhex(data, &d) == 0) {
        if (type == DNS_RR_A || type == DNS_RR_AAAA) {
            unsigned char a[16];
            if (inet_pton(type == DNS_RR_A ? AF_INET : AF_INET6, d.data, a) != 1)
                tern_panic("bad address %s", d.data);
            buf_reset(&d);
            buf_append(&d, a, type == DNS_RR_A ? 4 : 16);
        } else if (type == DNS_RR_MX) {
            char *sp = strchr(d.data, ' ');
            struct buf h = BUF_INIT;
            TERN_ASSERT(sp != NULL);
            r->pref = (uint16_t)strtoul(d.data, NULL, 10);
            buf_append_str(&h, sp + 1);
            buf_fini(&d);
            d = h;
        }
        if (type == DNS_RR_MX || type == DNS_RR_PTR || type == ZT_CNAME)
            norm_name(&d);
        r->len = d.len;
        r->data = buf_take(&d);
    }
    buf_fini(&d);
}

static void
zone_clear(struct zone *z)
{
    for (size_t i = 0; i < z->n; i++) {
        free(z->r[i].name);
        free(z->r[i].data);
    }
    FREE_NULL(&z->r);
    z->n = 0;
}

/* Records of type at name, CNAMEs followed; TIMEOUT answers TEMP when no
 * record of the type is there. */
static struct dns_rr_result *
zone_answer(const struct zone *z, const char *name, int type)
{
    struct dns_rr_result *res = dns_rr_result_new(type, DNS_NODATA);
    struct buf cur = BUF_INIT;
    buf_append_str(&cur, name);
    norm_name(&cur);
    for (int hop = 0; hop <= CNAME_HOPS; hop++) {
        bool exists = false, timeout = false;
        const char *cname = NULL;
        for (size_t i = 0; i < z->n; i++) {
            const struct zrec *r = &z->r[i];
            if (strcmp(r->name, cur.data) != 0)
                continue;
            exists = true;
            if (r->type == ZT_TIMEOUT)
                timeout = true;
            else if (r->type == ZT_CNAME)
                cname = r->data;
            else if (r->type == type)
                dns_rr_result_add(res, r->pref, r->data, r->len);
        }
        if (res->n > 0)
            break;
        if (cname != NULL) {
            char *next = xstrdup(cname);
            buf_reset(&cur);
            buf_append_str(&cur, next);
            free(next);
            res->rc = DNS_TEMP; /* stays when the chain is too long (a loop) */
            continue;
        }
        res->rc = timeout ? DNS_TEMP : exists ? DNS_NODATA : DNS_NXDOMAIN;
        break;
    }
    buf_fini(&cur);
    return res;
}

static void
later_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pending *p = arg;
    (void)fd;
    (void)what;
    p->cb(p->arg, p->res);
    dns_rr_result_free(p->res);
    free(p);
}

static void *
fake_lookup(void *ctx, const char *name, int type, spf_answer_cb cb, void *arg)
{
    struct zone *z = ctx;
    struct dns_rr_result *res = zone_answer(z, name, type);
    struct pending *p;
    struct timeval zero = { 0, 0 };
    if (z->lookups++ % 2 == 0) {
        cb(arg, res); /* answered inside lookup() */
        dns_rr_result_free(res);
        return NULL;
    }
    p = xcalloc(1, sizeof(*p));
    p->res = res;
    p->cb = cb;
    p->arg = arg;
    if (event_base_once(z->base, -1, EV_TIMEOUT, later_cb, p, &zero) < 0)
        tern_panic("event_base_once");
    return p;
}

static void
fake_cancel(void *ctx, void *handle)
{
    (void)ctx;
    (void)handle;
    tern_panic("the suite never cancels");
}

static const struct spf_resolver_ops fake_ops = { fake_lookup, fake_cancel };

struct case_done {
    bool done;
    struct spf_outcome out;
};

static void
done_cb(void *arg, const struct spf_outcome *o)
{
    struct case_done *d = arg;
    d->done = true;
    d->out = *o;
}

static int
run_case(
    struct zone *z, const char *id, const char *ip_hex, const char *from_hex, const char *helo_hex)
{
    struct buf ip = BUF_INIT, from = BUF_INIT, helo = BUF_INIT;
    struct spf_request req;
    struct spf_resolver res = { &fake_ops, z };
    struct case_done d = { false, { 0 } };
    int rc = -1;
    memset(&req, 0, sizeof(req));
    if (unhex(ip_hex, &ip) < 0 || unhex(from_hex, &from) < 0 || unhex(helo_hex, &helo) < 0 ||
        dns_literal(ip.data, 0, &req.ip, &(socklen_t){ 0 }) < 0)
        goto out;
    req.sender = from.data;
    req.helo = helo.data;
    req.receiver = "receiver.test";
    req.now_s = 1700000000;
    if (spf_eval_start(z->base, &res, &req, done_cb, &d) == NULL)
        goto out;
    if (d.done)
        tern_panic("callback ran inside spf_eval_start");
    while (!d.done)
        event_base_loop(z->base, EVLOOP_ONCE);
    printf("%s %s %d ", id, spf_result_name(d.out.result), d.out.exp_default ? 1 : 0);
    if (d.out.explanation[0] == '\0')
        printf("-");
    for (const char *p = d.out.explanation; *p; p++)
        printf("%02x", (unsigned char)*p);
    printf("\n");
    rc = 0;
out:
    buf_fini(&ip);
    buf_fini(&from);
    buf_fini(&helo);
    return rc;
}

int
main(void)
{
    static char line[LINE_MAX_LEN];
    struct zone z = { NULL, 0, event_base_new(), 0 };
    int bad = 0;
    if (z.base == NULL)
        return 2;
    while (fgets(line, sizeof(line), stdin) != NULL) {
        char *f[5] = { NULL };
        size_t nf = 0;
        line[strcspn(line, "\n")] = '\0';
        /* Fields are separated by single spaces (hex never holds one). */
        for (char *p = line; *p != '\0' && nf < 5;) {
            f[nf++] = p;
            p += strcspn(p, " ");
            if (*p == ' ')
                *p++ = '\0';
        }
        if (nf == 0)
            continue;
        if (strcmp(f[0], "R") == 0) {
            zone_clear(&z);
        } else if (strcmp(f[0], "T") == 0 && nf == 2) {
            zone_add(&z, f[1], ZT_TIMEOUT, NULL);
        } else if (strcmp(f[0], "Z") == 0 && nf == 4 && type_of(f[2]) != 0) {
            zone_add(&z, f[1], type_of(f[2]), f[3]);
        } else if (strcmp(f[0], "C") == 0 && nf == 5) {
            if (run_case(&z, f[1], f[2], f[3], f[4]) < 0) {
                printf("%s ERROR 0 -\n", f[1]);
                bad = 1;
            }
        } else {
            fprintf(stderr, "spf_suite: bad input line\n");
            bad = 1;
        }
    }
    zone_clear(&z);
    event_base_free(z.base);
    return bad ? 2 : 0;
}
