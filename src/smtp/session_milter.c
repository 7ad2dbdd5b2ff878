/*
 * The session's side of milter filters (`milters`): a stage after the end
 * of the data (session_data.c, tx_stages). Each filter of the list in turn
 * gets a connection of its own for the message and sees the whole
 * conversation as it happened (connect, HELO, MAIL, each RCPT, the header
 * fields, the body, the end of the message), with the macros of each step;
 * its answers are carried out: accept (this filter is done), continue,
 * reject, tempfail, a reply of its own, discard, quarantine (held), and at
 * the end of the message header, body and envelope changes. A filter that
 * is down, too slow or speaks garbage means milter_default_action.
 *
 * While milters are configured the transaction keeps an unstuffed copy of
 * the message content (smtp_milter_copy_*, at most max_message_size):
 * filters are shown it, and when one edits, the message is written again
 * from it through a new spool writer (a new queue id; the old writer is
 * aborted), so the DKIM signer at commit signs what is queued.
 */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "milter/milter.h"
#include "smtp_int.h"
#include "util/log.h"
#include "util/util.h"

/* Header fields of the message a filter may leave it with. */
#define MILTER_HDRS_MAX 2000
/* A filter may answer PROGRESS, but one message may not take it longer
 * than this many times milter_timeout. */
#define MILTER_TOTAL_TIMEOUTS 10

enum mstep {
    MS_OPTNEG,
    MS_CONNECT,
    MS_HELO,
    MS_MAIL,
    MS_RCPT,
    MS_DATA,
    MS_HEADER,
    MS_EOH,
    MS_BODY,
    MS_EOM,
    MS_DONE,
};

struct mhdr {
    char *name;  /* owned */
    char *value; /* owned: the text after the colon as stored (CRLF folds) */
};

struct smtp_milter_run {
    struct smtp_session *s;
    struct milter_spec *specs; /* owned, n_specs */
    size_t n_specs, cur;
    struct milter_conn *conn;
    uint32_t actions, protocol, version; /* negotiated with the current filter */
    enum mstep step;
    size_t rcpt_i, hdr_i, body_off;
    int64_t started_ms; /* the current filter's start */
    /* The message as filters see it and leave it. */
    struct mhdr *hdrs;
    size_t n_hdrs;
    bool sep;           /* an empty line ends the header section */
    size_t body_start;  /* in the copy */
    struct buf newbody; /* the replacement body (CRLF) when body_new */
    bool body_new;
    bool body_repl_now; /* the current filter has started replacing */
    bool edited;        /* content or envelope changed: written again */
    size_t edit_bytes;  /* what filters added, bounded by max_message_size */
    struct buf pkt;     /* packets being built */
};

/* ---- the copy of the message, kept while the data streams ---- */

void
smtp_milter_copy_plain(struct smtp_tx *tx, const char *p, size_t n)
{
    if (tx->mcopy != NULL && n > 0) {
        buf_append(tx->mcopy, p, n);
        tx->mcopy_bol = p[n - 1] == '\n';
    }
}

void
smtp_milter_copy_stuffed(struct smtp_tx *tx, struct evbuffer *src, size_t n)
{
    struct evbuffer_iovec v[16];
    struct evbuffer_ptr pos;
    if (tx->mcopy == NULL)
        return;
    if (evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET) < 0)
        tern_panic("evbuffer_ptr_set failed");
    /* DATA's transparency (RFC 5321 §4.5.2): a line's leading dot is
     * doubled on the wire, the copy has it once. */
    while (n > 0) {
        int k = evbuffer_peek(src, (ev_ssize_t)n, &pos, v, 16);
        size_t done = 0;
        if (k <= 0)
            break;
        for (int i = 0; i < k && i < 16 && n > 0; i++) {
            const char *p = v[i].iov_base;
            size_t len = v[i].iov_len < n ? v[i].iov_len : n;
            for (size_t j = 0; j < len; j++) {
                if (!(tx->mcopy_bol && p[j] == '.'))
                    buf_append_char(tx->mcopy, p[j]);
                tx->mcopy_bol = p[j] == '\n';
            }
            n -= len;
            done += len;
        }
        if (evbuffer_ptr_set(src, &pos, done, EVBUFFER_PTR_ADD) < 0)
            break;
    }
}

/* ---- the message's header fields ---- */

static void
hdrs_free(struct smtp_milter_run *mr)
{
    for (size_t i = 0; i < mr->n_hdrs; i++) {
        free(mr->hdrs[i].name);
        free(mr->hdrs[i].value);
    }
    free(mr->hdrs);
    mr->hdrs = NULL;
    mr->n_hdrs = 0;
}

static void
hdr_insert(struct smtp_milter_run *mr, size_t at, char *name, char *value)
{
    mr->hdrs = xrealloc(mr->hdrs, (mr->n_hdrs + 1) * sizeof(*mr->hdrs));
    memmove(&mr->hdrs[at + 1], &mr->hdrs[at], (mr->n_hdrs - at) * sizeof(*mr->hdrs));
    mr->hdrs[at].name = name;
    mr->hdrs[at].value = value;
    mr->n_hdrs++;
}

/* Split the copy's header section into fields: a line that is neither a
 * field nor its continuation starts the body (as it would for a reader). */
static void
hdrs_parse(struct smtp_milter_run *mr, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && mr->n_hdrs < MILTER_HDRS_MAX) {
        const char *eol = memchr(p + i, '\n', n - i), *colon;
        size_t end, next;
        if (eol == NULL)
            break;
        if ((eol == p + i) || (eol == p + i + 1 && p[i] == '\r')) {
            mr->sep = true;
            i = (size_t)(eol - p) + 1;
            break;
        }
        colon = memchr(p + i, ':', (size_t)(eol - (p + i)));
        if (colon == NULL || colon == p + i || !milter_hdr_name_ok(p + i, (size_t)(colon - p - i)))
            break;
        /* The field goes on over lines that start with a blank. */
        next = (size_t)(eol - p) + 1;
        while (next < n && (p[next] == ' ' || p[next] == '\t')) {
            const char *e2 = memchr(p + next, '\n', n - next);
            if (e2 == NULL)
                break;
            next = (size_t)(e2 - p) + 1;
        }
        end = next - 1; /* the last LF */
        if (end > 0 && p[end - 1] == '\r')
            end--;
        hdr_insert(mr, mr->n_hdrs, xstrndup(p + i, (size_t)(colon - p - i)),
            xstrndup(colon + 1, (size_t)(p + end - colon - 1)));
        i = next;
    }
    mr->body_start = i;
}

/* ---- the run ---- */

void
smtp_milter_tx_free(struct smtp_tx *tx)
{
    struct smtp_milter_run *mr = tx->milter;
    if (tx->mcopy != NULL) {
        buf_fini(tx->mcopy);
        free(tx->mcopy);
        tx->mcopy = NULL;
    }
    if (mr == NULL)
        return;
    milter_conn_free(mr->conn);
    hdrs_free(mr);
    free(mr->specs);
    buf_fini(&mr->newbody);
    buf_fini(&mr->pkt);
    free(mr);
    tx->milter = NULL;
}

static void next_filter(struct smtp_milter_run *mr);
static void run_steps(struct smtp_milter_run *mr);

/* The stage is over: the commit (or the next stage) goes on. Nothing of
 * mr may be touched after this. */
static void
run_end(struct smtp_milter_run *mr)
{
    struct smtp_session *s = mr->s;
    milter_conn_free(mr->conn);
    mr->conn = NULL;
    smtp_tx_advance(s);
}

static const char *
filter_name(struct smtp_milter_run *mr)
{
    return mr->specs[mr->cur].name;
}

static void
decide(struct smtp_milter_run *mr, enum smtp_verdict v, const struct tern_status *st)
{
    char by[MILTER_SPEC_MAX + 16];
    snprintf(by, sizeof(by), "milter %s", filter_name(mr));
    smtp_tx_decide(mr->s, v, st, by);
}

/* The current filter failed (why): milter_default_action, logged once. */
static void
filter_failed(struct smtp_milter_run *mr, const char *why)
{
    struct smtp_session *s = mr->s;
    struct tern_status st;
    struct logline l;
    int act = s->cfg->milter_default_action;
    log_begin(&l, LOG_WARN, spool_writer_qid(s->tx->w), "smtp", "milter_failed");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "milter", filter_name(mr));
    log_str(&l, "reason", why);
    log_str(&l, "action",
        act == MILTER_ACT_ACCEPT   ? "accept"
        : act == MILTER_ACT_REJECT ? "reject"
                                   : "tempfail");
    log_end(&l);
    milter_conn_free(mr->conn);
    mr->conn = NULL;
    if (act == MILTER_ACT_ACCEPT) {
        next_filter(mr);
        return;
    }
    if (act == MILTER_ACT_REJECT)
        STATUS_SET(&st, 550, "5.7.1", "Message rejected by content filter");
    else
        STATUS_SET(&st, 451, "4.7.1", "Content filter unavailable, try again later");
    decide(mr, SMTP_V_REFUSE, &st);
    run_end(mr);
}

/* This filter has answered its last: QUIT, then the next one. */
static void
filter_done(struct smtp_milter_run *mr)
{
    milter_put(&mr->pkt, MILTER_C_QUIT, NULL, 0);
    milter_conn_send(mr->conn, &mr->pkt);
    next_filter(mr); /* closes: a QUIT not yet sent, the filter sees the close */
}

/* ---- edits ---- */

static bool
edit_room(struct smtp_milter_run *mr, size_t n)
{
    mr->edit_bytes += n;
    return mr->edit_bytes <= mr->s->cfg->max_message_size;
}

/* The value a filter gives, as stored: a leading space added unless the
 * filter keeps its own (HDR_LEADSPC). NULL when it cannot be a value. */
static char *
stored_value(struct smtp_milter_run *mr, const char *v, size_t n)
{
    struct buf b = BUF_INIT;
    if (!(mr->protocol & MILTER_P_HDR_LEADSPC))
        buf_append_char(&b, ' ');
    if (milter_hdr_value(v, n, &b) < 0) {
        buf_fini(&b);
        return NULL;
    }
    return buf_take(&b);
}

/* The index-th (from 1) field called name, or n_hdrs. */
static size_t
hdr_find(struct smtp_milter_run *mr, const char *name, size_t n, uint32_t index)
{
    uint32_t seen = 0;
    if (index == 0)
        index = 1;
    for (size_t i = 0; i < mr->n_hdrs; i++) {
        if (strlen(mr->hdrs[i].name) == n && strncasecmp(mr->hdrs[i].name, name, n) == 0 &&
            ++seen == index)
            return i;
    }
    return mr->n_hdrs;
}

static bool
rcpt_has(struct spool_env *env, const char *addr, size_t *at)
{
    for (size_t i = 0; i < env->n_rcpts; i++) {
        if (strcasecmp(env->rcpts[i].addr, addr) == 0) {
            *at = i;
            return true;
        }
    }
    return false;
}

static void
rcpt_del(struct spool_env *env, size_t i)
{
    struct spool_rcpt *r = &env->rcpts[i];
    free(r->addr);
    free(r->orcpt);
    free(r->last_error);
    memmove(r, r + 1, (env->n_rcpts - i - 1) * sizeof(*r));
    env->n_rcpts--;
}

static void
log_edit(struct smtp_milter_run *mr, const char *what, const char *detail)
{
    struct logline l;
    log_begin(&l, LOG_INFO, spool_writer_qid(mr->s->tx->w), "smtp", "milter_edit");
    log_int(&l, "sess", (int64_t)mr->s->id);
    log_str(&l, "milter", filter_name(mr));
    log_str(&l, "edit", what);
    if (detail != NULL)
        log_str(&l, "detail", detail);
    log_end(&l);
}

/* A modification at the end of the message. false: a protocol error. */
static bool
apply_edit(struct smtp_milter_run *mr, const struct milter_reply *r)
{
    struct smtp_session *s = mr->s;
    struct spool_env *env = s->tx->env;
    struct buf a = BUF_INIT;
    char *v;
    size_t at;
    static const struct {
        char code;
        uint32_t flag;
    } need[] = {
        { MILTER_R_ADDHEADER, MILTER_F_ADDHDRS },
        { MILTER_R_INSHEADER, MILTER_F_ADDHDRS },
        { MILTER_R_CHGHEADER, MILTER_F_CHGHDRS },
        { MILTER_R_REPLBODY, MILTER_F_CHGBODY },
        { MILTER_R_ADDRCPT, MILTER_F_ADDRCPT },
        { MILTER_R_ADDRCPT_PAR, MILTER_F_ADDRCPT_PAR },
        { MILTER_R_DELRCPT, MILTER_F_DELRCPT },
        { MILTER_R_CHGFROM, MILTER_F_CHGFROM },
        { MILTER_R_QUARANTINE, MILTER_F_QUARANTINE },
    };
    for (size_t i = 0; i < TERN_ARRAY_LEN(need); i++) {
        /* Only what was negotiated (RFC-less, but libmilter's rule). */
        if (need[i].code == r->code && !(mr->actions & need[i].flag))
            return false;
    }
    /* Every change costs at least a few bytes: a filter cannot send
     * endless empty ones. */
    if (!edit_room(mr, r->s1_len + r->s2_len + 16))
        return false;
    switch (r->code) {
    case MILTER_R_ADDHEADER:
    case MILTER_R_INSHEADER:
        if (!milter_hdr_name_ok(r->s1, r->s1_len) || mr->n_hdrs >= MILTER_HDRS_MAX ||
            (v = stored_value(mr, r->s2, r->s2_len)) == NULL)
            return false;
        if (r->code == MILTER_R_ADDHEADER) {
            at = mr->n_hdrs; /* at the end of the header, as Sendmail adds */
        } else {
            at = r->index < mr->n_hdrs ? r->index : mr->n_hdrs;
        }
        hdr_insert(mr, at, xstrndup(r->s1, r->s1_len), v);
        log_edit(mr, r->code == MILTER_R_ADDHEADER ? "add_header" : "insert_header", r->s1);
        break;
    case MILTER_R_CHGHEADER:
        if (!milter_hdr_name_ok(r->s1, r->s1_len))
            return false;
        at = hdr_find(mr, r->s1, r->s1_len, r->index);
        if (r->s2_len == 0) {
            /* An empty value deletes the field. */
            if (at < mr->n_hdrs) {
                free(mr->hdrs[at].name);
                free(mr->hdrs[at].value);
                memmove(
                    &mr->hdrs[at], &mr->hdrs[at + 1], (mr->n_hdrs - at - 1) * sizeof(*mr->hdrs));
                mr->n_hdrs--;
                log_edit(mr, "delete_header", r->s1);
            }
            break;
        }
        if ((v = stored_value(mr, r->s2, r->s2_len)) == NULL)
            return false;
        if (at < mr->n_hdrs) {
            free(mr->hdrs[at].value);
            mr->hdrs[at].value = v;
        } else if (mr->n_hdrs < MILTER_HDRS_MAX) {
            hdr_insert(mr, mr->n_hdrs, xstrndup(r->s1, r->s1_len), v); /* as Sendmail */
        } else {
            free(v);
            return false;
        }
        log_edit(mr, "change_header", r->s1);
        break;
    case MILTER_R_REPLBODY:
        if (!mr->body_repl_now) {
            /* The first chunk of this filter's body replaces the body. */
            buf_reset(&mr->newbody);
            mr->body_repl_now = true;
            mr->body_new = true;
            log_edit(mr, "replace_body", NULL);
        }
        /* CRLF line ends whatever the filter wrote (RFC 5322 §2.3). */
        for (size_t i = 0; i < r->s1_len; i++) {
            char c = r->s1[i];
            if (c == '\r')
                continue;
            if (c == '\n')
                buf_append(&mr->newbody, "\r\n", 2);
            else if (c != '\0')
                buf_append_char(&mr->newbody, c);
        }
        break;
    case MILTER_R_ADDRCPT:
    case MILTER_R_ADDRCPT_PAR:
        if (milter_addr(r->s1, r->s1_len, &a) < 0 || a.len == 0) {
            buf_fini(&a);
            return false;
        }
        if (!rcpt_has(env, a.data, &at)) {
            if (env->n_rcpts >= s->cfg->max_recipients) {
                buf_fini(&a);
                return false;
            }
            spool_env_add_rcpt(env, a.data, NULL, 0);
        }
        log_edit(mr, "add_rcpt", a.data);
        break;
    case MILTER_R_DELRCPT:
        if (milter_addr(r->s1, r->s1_len, &a) < 0) {
            buf_fini(&a);
            return false;
        }
        if (a.len > 0 && rcpt_has(env, a.data, &at))
            rcpt_del(env, at);
        log_edit(mr, "delete_rcpt", a.data);
        break;
    case MILTER_R_CHGFROM:
        if (milter_addr(r->s1, r->s1_len, &a) < 0)
            return false;
        free(env->sender);
        env->sender = xstrdup(a.len > 0 ? a.data : "");
        log_edit(mr, "change_sender", env->sender);
        break;
    case MILTER_R_QUARANTINE: {
        struct tern_status st;
        size_t o = 0;
        for (size_t i = 0; i < r->s1_len && o + 1 < sizeof(st.text); i++) {
            unsigned char c = (unsigned char)r->s1[i];
            st.text[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
        }
        st.text[o] = '\0';
        st.code = 250;
        snprintf(st.esc, sizeof(st.esc), "2.0.0");
        decide(mr, SMTP_V_HOLD, &st);
        log_edit(mr, "quarantine", st.text);
        break;
    }
    default:
        return false;
    }
    buf_fini(&a);
    if (r->code != MILTER_R_QUARANTINE)
        mr->edited = true;
    return true;
}

/* ---- what filters are sent ---- */

static const char *
qid_of(struct smtp_milter_run *mr)
{
    return spool_writer_qid(mr->s->tx->w);
}

static void
put_macros(struct smtp_milter_run *mr, char cmd)
{
    struct smtp_session *s = mr->s;
    struct smtp_tx *tx = s->tx;
    char port[8], under[320];
    const char *name = smtp_client_name(s);
    const char *kv[32];
    size_t n = 0;
#define KV(k, v) (kv[2 * n] = (k), kv[2 * n + 1] = (v), n++)
    KV("i", qid_of(mr));
    switch (cmd) {
    case MILTER_C_CONNECT:
        snprintf(port, sizeof(port), "%u",
            ntohs(s->peer.sa.sa_family == AF_INET6 ? s->peer.in6.sin6_port : s->peer.in4.sin_port));
        snprintf(under, sizeof(under), "%s [%s]",
            name != NULL && s->name_state == SMTP_NAME_KNOWN ? name : "", s->peer_str);
        KV("j", s->cfg->hostname);
        KV("_", under);
        KV("{daemon_name}", "tern");
        KV("{client_addr}", s->peer_str);
        KV("{client_port}", port);
        KV("{client_name}", s->name_state == SMTP_NAME_KNOWN && name != NULL ? name : "unknown");
        break;
    case MILTER_C_HELO:
        if (s->tls) {
            KV("{tls_version}", s->tls_info->version);
            KV("{cipher}", s->tls_info->cipher);
        }
        break;
    case MILTER_C_MAIL:
        KV("{mail_addr}", tx->env->sender);
        if (s->auth_user != NULL)
            KV("{auth_authen}", s->auth_user);
        break;
    case MILTER_C_RCPT:
        KV("{rcpt_addr}", tx->env->rcpts[mr->rcpt_i].addr);
        break;
    default:
        KV("j", s->cfg->hostname);
        break;
    }
#undef KV
    milter_put_macros(&mr->pkt, cmd, kv, n);
}

/* A header value as a filter is shown it: without the leading space unless
 * it asked for it, line breaks as LF (as Sendmail sends them). */
static char *
shown_value(struct smtp_milter_run *mr, const char *v)
{
    struct buf b = BUF_INIT;
    if (!(mr->protocol & MILTER_P_HDR_LEADSPC) && *v == ' ')
        v++;
    for (; *v; v++) {
        if (*v != '\r')
            buf_append_char(&b, *v);
    }
    buf_append(&b, "", 0);
    return buf_take(&b);
}

static bool
wants(struct smtp_milter_run *mr, uint32_t no_flag)
{
    return !(mr->protocol & no_flag);
}

/* Send what the current step needs; true when a reply is awaited. */
static bool
send_step(struct smtp_milter_run *mr)
{
    struct smtp_session *s = mr->s;
    struct smtp_tx *tx = s->tx;
    struct spool_env *env = tx->env;
    char addr[600];
    const char *strs[2];
    switch (mr->step) {
    case MS_CONNECT: {
        const char *name = smtp_client_name(s);
        char host[300];
        if (name != NULL && s->name_state == SMTP_NAME_KNOWN)
            snprintf(host, sizeof(host), "%s", name);
        else
            snprintf(host, sizeof(host), "[%s]", s->peer_str);
        put_macros(mr, MILTER_C_CONNECT);
        milter_put_connect(&mr->pkt, host, &s->peer.sa);
        return !(mr->protocol & MILTER_P_NR_CONN);
    }
    case MS_HELO:
        put_macros(mr, MILTER_C_HELO);
        strs[0] = s->helo != NULL ? s->helo : "";
        milter_put_strs(&mr->pkt, MILTER_C_HELO, strs, 1);
        return !(mr->protocol & MILTER_P_NR_HELO);
    case MS_MAIL:
        put_macros(mr, MILTER_C_MAIL);
        snprintf(addr, sizeof(addr), "<%s>", env->sender);
        strs[0] = addr;
        milter_put_strs(&mr->pkt, MILTER_C_MAIL, strs, 1);
        return !(mr->protocol & MILTER_P_NR_MAIL);
    case MS_RCPT:
        put_macros(mr, MILTER_C_RCPT);
        snprintf(addr, sizeof(addr), "<%s>", env->rcpts[mr->rcpt_i].addr);
        strs[0] = addr;
        milter_put_strs(&mr->pkt, MILTER_C_RCPT, strs, 1);
        return !(mr->protocol & MILTER_P_NR_RCPT);
    case MS_DATA:
        put_macros(mr, MILTER_C_DATA);
        milter_put(&mr->pkt, MILTER_C_DATA, NULL, 0);
        return !(mr->protocol & MILTER_P_NR_DATA);
    case MS_HEADER: {
        char *v = shown_value(mr, mr->hdrs[mr->hdr_i].value);
        strs[0] = mr->hdrs[mr->hdr_i].name;
        strs[1] = v;
        milter_put_strs(&mr->pkt, MILTER_C_HEADER, strs, 2);
        free(v);
        return !(mr->protocol & MILTER_P_NR_HDR);
    }
    case MS_EOH:
        put_macros(mr, MILTER_C_EOH);
        milter_put(&mr->pkt, MILTER_C_EOH, NULL, 0);
        return !(mr->protocol & MILTER_P_NR_EOH);
    case MS_BODY: {
        const struct buf *c = tx->mcopy;
        size_t left = c->len - mr->body_start - mr->body_off;
        size_t n = left < MILTER_CHUNK ? left : MILTER_CHUNK;
        milter_put(&mr->pkt, MILTER_C_BODY, c->data + mr->body_start + mr->body_off, n);
        mr->body_off += n;
        return !(mr->protocol & MILTER_P_NR_BODY);
    }
    case MS_EOM:
        put_macros(mr, MILTER_C_BODYEOB);
        milter_put(&mr->pkt, MILTER_C_BODYEOB, NULL, 0);
        return true;
    default:
        return false;
    }
}

/* The step after the current one that the filter wants (MS_DONE after
 * EOM). */
static enum mstep
step_next(struct smtp_milter_run *mr)
{
    struct smtp_tx *tx = mr->s->tx;
    size_t body_len = tx->mcopy->len - mr->body_start;
    switch (mr->step) {
    case MS_OPTNEG:
        if (wants(mr, MILTER_P_NOCONNECT))
            return MS_CONNECT;
        /* fall through */
    case MS_CONNECT:
        if (wants(mr, MILTER_P_NOHELO) && mr->s->helo != NULL)
            return MS_HELO;
        /* fall through */
    case MS_HELO:
        if (wants(mr, MILTER_P_NOMAIL))
            return MS_MAIL;
        /* fall through */
    case MS_MAIL:
        mr->rcpt_i = 0;
        if (wants(mr, MILTER_P_NORCPT) && tx->env->n_rcpts > 0)
            return MS_RCPT;
        goto after_rcpt;
    case MS_RCPT:
        if (++mr->rcpt_i < tx->env->n_rcpts)
            return MS_RCPT;
after_rcpt:
        if (wants(mr, MILTER_P_NODATA) && mr->version >= 6)
            return MS_DATA;
        /* fall through */
    case MS_DATA:
        mr->hdr_i = 0;
        if (wants(mr, MILTER_P_NOHDRS) && mr->n_hdrs > 0)
            return MS_HEADER;
        goto after_hdrs;
    case MS_HEADER:
        if (++mr->hdr_i < mr->n_hdrs)
            return MS_HEADER;
after_hdrs:
        if (wants(mr, MILTER_P_NOEOH))
            return MS_EOH;
        /* fall through */
    case MS_EOH:
        mr->body_off = 0;
        if (wants(mr, MILTER_P_NOBODY) && body_len > 0)
            return MS_BODY;
        return MS_EOM;
    case MS_BODY:
        if (mr->body_off < body_len)
            return MS_BODY;
        return MS_EOM;
    default:
        return MS_DONE;
    }
}

/* Go through the steps that need no reply; stop at one that does. */
static void
run_steps(struct smtp_milter_run *mr)
{
    for (;;) {
        mr->step = step_next(mr);
        if (mr->step == MS_DONE) {
            filter_done(mr);
            return;
        }
        bool reply = send_step(mr);
        milter_conn_send(mr->conn, &mr->pkt);
        if (reply) {
            milter_conn_expect(mr->conn);
            return;
        }
    }
}

/* A final reply that refuses or drops the message; false for others. */
static bool
final_verdict(struct smtp_milter_run *mr, const struct milter_reply *r, bool *bad)
{
    struct tern_status st;
    switch (r->code) {
    case MILTER_R_REJECT:
        STATUS_SET(&st, 550, "5.7.1", "Message rejected by content filter");
        break;
    case MILTER_R_TEMPFAIL:
    case MILTER_R_CONN_FAIL:
        STATUS_SET(&st, 451, "4.7.1", "Message deferred by content filter, try again later");
        break;
    case MILTER_R_REPLYCODE:
        if (milter_replycode(r->s1, r->s1_len, &st) < 0) {
            *bad = true;
            return true;
        }
        break;
    case MILTER_R_DISCARD:
        decide(mr, SMTP_V_DISCARD, NULL);
        return true;
    default:
        return false;
    }
    decide(mr, SMTP_V_REFUSE, &st);
    return true;
}

static void
conn_cb(struct milter_conn *c, const struct milter_reply *r, const char *why, void *arg)
{
    struct smtp_milter_run *mr = arg;
    bool bad = false;
    if (mr->s->dead || mr->s->state != SMTP_ST_FILTER) {
        /* The session is ending (client gone, shutdown's 421): the answer
         * has no one to go to. */
        milter_conn_free(mr->conn);
        mr->conn = NULL;
        return;
    }
    if (r == NULL) {
        filter_failed(mr, why);
        return;
    }
    if (tern_mono_ms() - mr->started_ms >
        MILTER_TOTAL_TIMEOUTS *
            (mr->s->cfg->milter_timeout_ms > 0 ? mr->s->cfg->milter_timeout_ms : 1)) {
        filter_failed(mr, "too slow in total");
        return;
    }
    if (r->code == MILTER_R_PROGRESS) {
        milter_conn_expect(c); /* the wait starts again */
        return;
    }
    if (mr->step == MS_OPTNEG) {
        if (r->code != MILTER_R_OPTNEG || r->version < 2) {
            filter_failed(mr, "protocol error (negotiation)");
            return;
        }
        milter_conn_idle(c);
        mr->version = r->version;
        mr->actions = r->actions & MILTER_F_ALL;
        mr->protocol = r->protocol & MILTER_P_OFFER;
        run_steps(mr);
        return;
    }
    if (mr->step == MS_EOM && r->code != MILTER_R_ACCEPT && r->code != MILTER_R_CONTINUE &&
        !final_verdict(mr, r, &bad)) {
        /* A modification: more replies follow until a final one. */
        if (!apply_edit(mr, r))
            filter_failed(mr, "protocol error (bad modification)");
        return;
    }
    milter_conn_idle(c);
    if (bad) {
        filter_failed(mr, "protocol error (bad reply code)");
        return;
    }
    switch (r->code) {
    case MILTER_R_CONTINUE:
        if (mr->step == MS_EOM)
            filter_done(mr);
        else
            run_steps(mr);
        return;
    case MILTER_R_ACCEPT:
        filter_done(mr); /* this filter wants to see no more of it */
        return;
    case MILTER_R_SKIP:
        if (mr->step == MS_BODY)
            mr->body_off = mr->s->tx->mcopy->len - mr->body_start;
        run_steps(mr);
        return;
    case MILTER_R_SHUTDOWN:
        filter_failed(mr, "the filter shut down");
        return;
    default:
        break;
    }
    if (mr->step != MS_EOM && !final_verdict(mr, r, &bad)) {
        filter_failed(mr, "protocol error (unexpected reply)");
        return;
    }
    if (bad) {
        filter_failed(mr, "protocol error (bad reply code)");
        return;
    }
    /* Refused or discarded: no later filter needs to see it. */
    run_end(mr);
}

/* Write the message again as the filters left it: a new writer for the
 * envelope (recipients and sender as changed), tern's Received field, the
 * header fields, the body; the old writer is aborted. */
static void
rewrite(struct smtp_milter_run *mr)
{
    struct smtp_session *s = mr->s;
    struct smtp_tx *tx = s->tx;
    struct spool_writer *old = tx->w;
    struct buf b = BUF_INIT;
    struct logline l;
    char oldqid[SPOOL_QID_LEN + 1];
    snprintf(oldqid, sizeof(oldqid), "%s", spool_writer_qid(old));
    tx->w = spool_writer_new(s->srv->sp, tx->env);
    smtp_add_received(s, spool_writer_qid(tx->w), &b);
    tx->dkim_skip = b.len;
    for (size_t i = 0; i < mr->n_hdrs; i++) {
        buf_append_str(&b, mr->hdrs[i].name);
        buf_append_char(&b, ':');
        buf_append_str(&b, mr->hdrs[i].value);
        buf_append(&b, "\r\n", 2);
    }
    if (mr->sep)
        buf_append(&b, "\r\n", 2);
    spool_writer_write(tx->w, b.data, b.len);
    buf_fini(&b);
    if (mr->body_new)
        spool_writer_write(tx->w, mr->newbody.data, mr->newbody.len);
    else
        spool_writer_write(
            tx->w, tx->mcopy->data + mr->body_start, tx->mcopy->len - mr->body_start);
    spool_writer_abort(old);
    log_begin(&l, LOG_INFO, spool_writer_qid(tx->w), "smtp", "milter_rewritten");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "was", oldqid);
    log_int(&l, "size", (int64_t)spool_writer_size(tx->w));
    log_end(&l);
}

static void
filter_start(struct smtp_milter_run *mr)
{
    struct smtp_session *s = mr->s;
    mr->started_ms = tern_mono_ms();
    mr->step = MS_OPTNEG;
    mr->body_repl_now = false;
    mr->conn =
        milter_conn_new(s->lp->base, &mr->specs[mr->cur], s->cfg->milter_timeout_ms, conn_cb, mr);
    milter_put_optneg(&mr->pkt, MILTER_VERSION, MILTER_F_ALL, MILTER_P_OFFER);
    milter_conn_send(mr->conn, &mr->pkt);
    milter_conn_expect(mr->conn);
}

static void
next_filter(struct smtp_milter_run *mr)
{
    struct smtp_session *s = mr->s;
    milter_conn_free(mr->conn);
    mr->conn = NULL;
    if (++mr->cur < mr->n_specs && s->tx->verdict < SMTP_V_DISCARD) {
        filter_start(mr);
        return;
    }
    /* Every filter has had its say. */
    if (s->tx->verdict < SMTP_V_DISCARD) {
        if (s->tx->env->n_rcpts == 0) {
            /* Filters removed every recipient: nobody to deliver to. */
            mr->cur = mr->n_specs - 1;
            decide(mr, SMTP_V_DISCARD, NULL);
        } else if (mr->edited) {
            rewrite(mr);
        }
    }
    run_end(mr);
}

bool
smtp_milter_stage(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct smtp_milter_run *mr;
    char why[200];
    if (s->cfg->milters == NULL || tx->mcopy == NULL)
        return false;
    mr = xcalloc(1, sizeof(*mr));
    mr->s = s;
    if (milter_specs_parse(s->cfg->milters, &mr->specs, &mr->n_specs, why, sizeof(why)) < 0 ||
        mr->n_specs == 0) {
        free(mr->specs);
        free(mr);
        return false; /* checked at load: cannot be */
    }
    tx->milter = mr;
    hdrs_parse(mr, tx->mcopy->data, tx->mcopy->len);
    mr->cur = 0;
    filter_start(mr);
    return true;
}
