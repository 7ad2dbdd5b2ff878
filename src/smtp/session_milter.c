/*
 * The session's side of milter filters (`milters`). Each filter of the
 * list gets a connection of its own for the session, opened at the first
 * MAIL (a transaction that ends early is aborted there, the session's end
 * sends QUIT), and is shown each transaction in three phases:
 * at MAIL (connect, HELO, MAIL), at each RCPT (that recipient), and at the
 * end of the data as a stage of session_data.c's table (DATA, the header
 * fields, the body, the end of the message), each step with its macros.
 * A phase asks the filters in order; the session reads nothing until it
 * is over, then MAIL or RCPT is answered, or the stage ends. The filters'
 * answers are carried out: accept (this filter is done), continue, reject,
 * tempfail, a reply of its own (refusing what the phase is about: the
 * sender, one recipient, the message), discard, quarantine (held), and at
 * the end of the message header, body and envelope changes. A filter that
 * is down, too slow or speaks garbage means milter_default_action, for the
 * step at hand and every later one of the session.
 *
 * While milters are configured the transaction keeps an unstuffed copy of
 * the message as the spool writer stores it (its tee; at most
 * max_message_size): filters are shown it, and when one edits, the message
 * is written again from it through a new spool writer (a new queue id; the
 * old writer is aborted, its prefix kept), so the DKIM signer at commit
 * signs what is queued.
 */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "metrics/metrics.h"
#include "milter/milter.h"
#include "smtp_int.h"
#include "util/log.h"
#include "util/util.h"

/* Header fields of the message a filter may leave it with. */
#define MILTER_HDRS_MAX 2000
/* Changes the filters may make to one message (each is logged). */
#define MILTER_EDITS_MAX 5000
/* A filter may answer PROGRESS, but one message may not take it longer
 * than this many times milter_timeout. */
#define MILTER_TOTAL_TIMEOUTS 10

enum mstep {
    MS_NONE, /* connecting, negotiating */
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

/* One filter of the list, for the transaction. */
struct mfilter {
    struct milter_conn *conn;
    uint32_t actions, protocol, version; /* negotiated */
    bool negotiated;
    bool out;        /* accepted, or skipped after a failure: sees no more */
    enum mstep step; /* the last step sent */
    size_t idx;      /* of the last step: header index, body offset */
    bool body_repl_now;
    bool rcpt_done;  /* the RCPT phase's recipient has been sent */
    bool failed;     /* failed: milter_default_action for the rest of the session */
    bool msg_done;   /* the end of the message has been answered */
    bool conn_sent;  /* SMFIC_CONNECT has been sent on this connection */
    char *helo_sent; /* owned or NULL: the HELO name sent on it */
    /* Owned or NULL: the macro names asked for at negotiation, per step. */
    char *macros[MILTER_M_COUNT];
    int64_t started_ms;
};

/* What the phases are for: the MAIL command, a RCPT command, the end of
 * the data. */
enum mphase { MP_MAIL, MP_RCPT, MP_EOM };

struct smtp_milter_run {
    struct smtp_session *s;
    struct milter_spec *specs; /* owned, n_specs */
    struct mfilter *f;         /* owned, n_specs */
    size_t n_specs, cur;
    enum mphase phase;
    bool sync;     /* inside the call that started the phase */
    bool finished; /* the phase is over (every filter had its say) */
    bool refused;  /* a filter refused what the phase is about */
    struct tern_status refuse_st;
    char refuse_by[MILTER_SPEC_MAX + 16];
    const char *rcpt; /* MP_RCPT: the recipient (borrowed from the envelope) */
    /* The message as filters see it and leave it (MP_EOM). */
    struct mhdr *hdrs;
    size_t n_hdrs;
    bool sep;           /* an empty line ends the header section */
    size_t body_start;  /* in the copy */
    struct buf newbody; /* the replacement body (CRLF) when body_new */
    bool body_new;
    bool edited;              /* content or envelope changed: written again */
    size_t edit_bytes;        /* what filters added, bounded by max_message_size */
    size_t n_edits;           /* changes made, bounded by MILTER_EDITS_MAX */
    struct buf pkt;           /* packets being built */
    char port[8], under[320]; /* macro values made on demand */
};

static struct mfilter *
cur_f(struct smtp_milter_run *mr)
{
    return &mr->f[mr->cur];
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

/* Forget what a filter knew of its connection (closed). */
static void
filter_disconnected(struct mfilter *f)
{
    milter_conn_free(f->conn);
    f->conn = NULL;
    f->negotiated = false;
    f->conn_sent = false;
    free(f->helo_sent);
    f->helo_sent = NULL;
    for (size_t k = 0; k < MILTER_M_COUNT; k++) {
        free(f->macros[k]);
        f->macros[k] = NULL;
    }
}

/* The transaction ends (queued, refused, RSET, a new MAIL, the session's
 * end): filters in the middle of it are told (SMFIC_ABORT, no reply) and
 * everything of the message is forgotten; the connections stay. */
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
    tx->milter = NULL;
    for (size_t i = 0; i < mr->n_specs; i++) {
        struct mfilter *f = &mr->f[i];
        if (f->conn != NULL && f->negotiated && !f->msg_done && !f->failed) {
            milter_put(&mr->pkt, MILTER_C_ABORT, NULL, 0);
            milter_conn_send(f->conn, &mr->pkt);
        }
        if (f->conn != NULL && !f->negotiated) {
            /* Still connecting: a new transaction starts it again. */
            filter_disconnected(f);
        }
        if (f->conn != NULL)
            milter_conn_idle(f->conn);
        f->out = f->failed;
        f->msg_done = false;
        f->step = MS_NONE;
        f->idx = 0;
        f->rcpt_done = false;
        f->body_repl_now = false;
    }
    hdrs_free(mr);
    buf_reset(&mr->newbody);
    mr->body_new = mr->edited = mr->sep = mr->refused = false;
    mr->edit_bytes = mr->n_edits = mr->body_start = 0;
    mr->rcpt = NULL;
    mr->cur = mr->n_specs;
}

void
smtp_milter_session_free(struct smtp_session *s)
{
    struct smtp_milter_run *mr = s->milter;
    if (mr == NULL)
        return;
    for (size_t i = 0; i < mr->n_specs; i++) {
        struct mfilter *f = &mr->f[i];
        if (f->conn != NULL && f->negotiated) {
            milter_put(&mr->pkt, MILTER_C_QUIT, NULL, 0);
            milter_conn_send(f->conn, &mr->pkt); /* sent if the socket takes it */
        }
        filter_disconnected(f);
    }
    hdrs_free(mr);
    free(mr->specs);
    free(mr->f);
    buf_fini(&mr->newbody);
    buf_fini(&mr->pkt);
    free(mr);
    s->milter = NULL;
}

static void phase_next(struct smtp_milter_run *mr);
static void default_refusal(struct smtp_milter_run *mr);
static void conn_cb(
    struct milter_conn *c, const struct milter_reply *r, const char *why, void *arg);
static void run_steps(struct smtp_milter_run *mr);
static void rewrite(struct smtp_milter_run *mr);
static void phase_end(struct smtp_milter_run *mr);

static const char *
filter_name(struct smtp_milter_run *mr)
{
    return mr->specs[mr->cur].name;
}

/* The queue id once the data has started (NULL before). */
static const char *
qid_of(struct smtp_milter_run *mr)
{
    return mr->s->tx != NULL && mr->s->tx->w != NULL ? spool_writer_qid(mr->s->tx->w) : NULL;
}

static void
decide(struct smtp_milter_run *mr, enum smtp_verdict v, const struct tern_status *st)
{
    char by[MILTER_SPEC_MAX + 16];
    snprintf(by, sizeof(by), "milter %s", filter_name(mr));
    smtp_tx_decide(mr->s, v, st, by);
}

static void
refuse(struct smtp_milter_run *mr, const struct tern_status *st)
{
    if (!mr->refused) {
        mr->refused = true;
        mr->refuse_st = *st;
        snprintf(mr->refuse_by, sizeof(mr->refuse_by), "milter %s", filter_name(mr));
    }
}

/* The current filter is done with the message (it accepted it, or
 * answered its end): it sees no more of it. */
static void
filter_close(struct smtp_milter_run *mr)
{
    struct mfilter *f = cur_f(mr);
    f->out = true;
    if (f->step == MS_EOM)
        f->msg_done = true;
}

/* Filter i failed (why): logged once; it sees no more of the transaction
 * and milter_default_action answers for it from now on. */
static void
mark_failed(struct smtp_milter_run *mr, size_t i, const char *why)
{
    struct smtp_session *s = mr->s;
    struct mfilter *f = &mr->f[i];
    struct logline l;
    int act = s->cfg->milter_default_action;
    log_begin(&l, LOG_WARN, qid_of(mr), "smtp", "milter_failed");
    log_int(&l, "sess", (int64_t)s->id);
    log_str(&l, "milter", mr->specs[i].name);
    log_str(&l, "reason", why);
    log_str(&l, "action",
        act == MILTER_ACT_ACCEPT   ? "accept"
        : act == MILTER_ACT_REJECT ? "reject"
                                   : "tempfail");
    log_end(&l);
    filter_disconnected(f);
    f->out = true;
    f->failed = true;
}

/* The current filter failed while the phase waited for it. */
static void
filter_failed(struct smtp_milter_run *mr, const char *why)
{
    mark_failed(mr, mr->cur, why);
    if (mr->s->cfg->milter_default_action != MILTER_ACT_ACCEPT)
        default_refusal(mr);
    mr->cur++;
    phase_next(mr);
}

/* ---- edits ---- */

static bool
edit_room(struct smtp_milter_run *mr, size_t n)
{
    mr->edit_bytes += n;
    return ++mr->n_edits <= MILTER_EDITS_MAX && mr->edit_bytes <= mr->s->cfg->max_message_size;
}

/* The value a filter gives, as stored: a leading space added unless the
 * filter keeps its own (HDR_LEADSPC). NULL when it cannot be a value. */
static char *
stored_value(struct smtp_milter_run *mr, const char *v, size_t n)
{
    struct buf b = BUF_INIT;
    if (!(cur_f(mr)->protocol & MILTER_P_HDR_LEADSPC))
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
        if (need[i].code == r->code && !(cur_f(mr)->actions & need[i].flag))
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
        if (!cur_f(mr)->body_repl_now) {
            /* The first chunk of this filter's body replaces the body. */
            buf_reset(&mr->newbody);
            cur_f(mr)->body_repl_now = true;
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
        decide(mr, SMTP_VERDICT_HOLD, &st);
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

/* The macros tern knows, by name; NULL value: not known now. */
static const char *
macro_value(struct smtp_milter_run *mr, const char *name)
{
    struct smtp_session *s = mr->s;
    const char *cname = smtp_client_name(s);
    bool known = cname != NULL && s->name_state == SMTP_NAME_KNOWN;
    static const char *const names[] = { "i", "j", "_", "{daemon_name}", "{client_addr}",
        "{client_port}", "{client_name}", "{tls_version}", "{cipher}", "{mail_addr}",
        "{auth_authen}", "{rcpt_addr}", "{auth_type}" };
    size_t k = 0;
    while (k < TERN_ARRAY_LEN(names) && strcmp(names[k], name) != 0)
        k++;
    switch (k) {
    case 0:
        return qid_of(mr);
    case 1:
        return s->cfg->hostname;
    case 2:
        snprintf(mr->under, sizeof(mr->under), "%s [%s]", known ? cname : "", s->peer_str);
        return mr->under;
    case 3:
        return "tern";
    case 4:
        return s->peer_str;
    case 5:
        snprintf(mr->port, sizeof(mr->port), "%u",
            ntohs(s->peer.sa.sa_family == AF_INET6 ? s->peer.in6.sin6_port : s->peer.in4.sin_port));
        return mr->port;
    case 6:
        return known ? cname : "unknown";
    case 7:
        return s->tls ? s->tls_info->version : NULL;
    case 8:
        return s->tls ? s->tls_info->cipher : NULL;
    case 9:
        return s->tx->env->sender;
    case 10:
        return s->auth_user;
    case 11:
        return mr->rcpt;
    case 12:
        return s->auth_user != NULL ? s->auth_mech : NULL;
    default:
        return NULL;
    }
}

/* SMFIC_MACRO before command cmd: the names the filter asked for at
 * negotiation for that step, else tern's set for it. */
static void
put_macros(struct smtp_milter_run *mr, char cmd)
{
    static const char cmds[MILTER_M_COUNT] = { MILTER_C_CONNECT, MILTER_C_HELO, MILTER_C_MAIL,
        MILTER_C_RCPT, MILTER_C_DATA, MILTER_C_BODYEOB, MILTER_C_EOH };
    static const char *const sets[MILTER_M_COUNT] = {
        "j _ {daemon_name} {client_addr} {client_port} {client_name}",
        "{tls_version} {cipher}",
        "{mail_addr} {auth_authen} {auth_type}",
        "{rcpt_addr}",
        "i j",
        "i j",
        "i j",
    };
    const char *kv[2 * MILTER_MACROS_MAX];
    char names[MILTER_MACRO_LIST_MAX + 1];
    const char *list = NULL;
    size_t n = 0;
    for (size_t st = 0; st < MILTER_M_COUNT; st++) {
        if (cmds[st] == cmd)
            list = cur_f(mr)->macros[st] != NULL ? cur_f(mr)->macros[st] : sets[st];
    }
    if (list == NULL)
        return;
    snprintf(names, sizeof(names), "%s", list);
    for (char *save = NULL, *t = strtok_r(names, " ,", &save); t != NULL && n < MILTER_MACROS_MAX;
         t = strtok_r(NULL, " ,", &save)) {
        kv[2 * n] = t;
        kv[2 * n + 1] = macro_value(mr, t);
        n++;
    }
    /* "i" too wherever it is known, as Sendmail sends it. */
    if (qid_of(mr) != NULL && n < MILTER_MACROS_MAX) {
        bool has_i = false;
        for (size_t k = 0; k < n; k++)
            has_i = has_i || strcmp(kv[2 * k], "i") == 0;
        if (!has_i) {
            kv[2 * n] = "i";
            kv[2 * n + 1] = qid_of(mr);
            n++;
        }
    }
    milter_put_macros(&mr->pkt, cmd, kv, n);
}

/* A header value as a filter is shown it: without the leading space unless
 * it asked for it, line breaks as LF (as Sendmail sends them). */
static char *
shown_value(struct smtp_milter_run *mr, const char *v)
{
    struct buf b = BUF_INIT;
    if (!(cur_f(mr)->protocol & MILTER_P_HDR_LEADSPC) && *v == ' ')
        v++;
    for (; *v; v++) {
        if (*v != '\r')
            buf_append_char(&b, *v);
    }
    buf_append(&b, "", 0);
    return buf_take(&b);
}

/* ---- the steps ---- */

/* Does filter f want step st at idx (NO* flags; a step that exists)? */
static bool
applies(struct smtp_milter_run *mr, struct mfilter *f, enum mstep st, size_t idx)
{
    struct smtp_tx *tx = mr->s->tx;
    switch (st) {
    case MS_CONNECT:
        return !(f->protocol & MILTER_P_NOCONNECT) && !f->conn_sent;
    case MS_HELO:
        /* Again after a new EHLO, as the client sent it. */
        return !(f->protocol & MILTER_P_NOHELO) && mr->s->helo != NULL &&
               (f->helo_sent == NULL || strcmp(f->helo_sent, mr->s->helo) != 0);
    case MS_MAIL:
        return !(f->protocol & MILTER_P_NOMAIL);
    case MS_RCPT:
        return false; /* sent by the RCPT phase itself */
    case MS_DATA:
        /* SMFIC_DATA came with protocol version 4 (Sendmail 8.14). */
        return !(f->protocol & MILTER_P_NODATA) && f->version >= 4;
    case MS_HEADER:
        return !(f->protocol & MILTER_P_NOHDRS) && idx < mr->n_hdrs;
    case MS_EOH:
        return !(f->protocol & MILTER_P_NOEOH);
    case MS_BODY:
        return !(f->protocol & MILTER_P_NOBODY) && idx < tx->mcopy->len - mr->body_start;
    default:
        return true;
    }
}

/* The step after f's last one that f wants, or the first past goal (the
 * phase's last step: later steps' parts, the message's header and body,
 * may not exist yet). */
static enum mstep
step_next(struct smtp_milter_run *mr, struct mfilter *f, enum mstep goal, size_t *idx)
{
    enum mstep x = f->step;
    size_t i = f->idx;
    for (;;) {
        if (x == MS_HEADER && i + 1 < mr->n_hdrs) {
            i++;
        } else if (x == MS_BODY && i + MILTER_CHUNK < mr->s->tx->mcopy->len - mr->body_start) {
            i += MILTER_CHUNK;
        } else {
            x++;
            i = 0;
        }
        if (x > goal || x >= MS_DONE || applies(mr, f, x, i))
            break;
    }
    *idx = i;
    return x;
}

/* Put the packets of step st (index idx) for the current filter in
 * mr->pkt; true when it answers that step. */
static bool
put_step(struct smtp_milter_run *mr, enum mstep st, size_t idx)
{
    struct smtp_session *s = mr->s;
    struct smtp_tx *tx = s->tx;
    struct mfilter *f = cur_f(mr);
    char addr[600];
    const char *strs[2];
    switch (st) {
    case MS_CONNECT: {
        const char *name = smtp_client_name(s);
        char host[300];
        if (name != NULL && s->name_state == SMTP_NAME_KNOWN)
            snprintf(host, sizeof(host), "%s", name);
        else
            snprintf(host, sizeof(host), "[%s]", s->peer_str);
        put_macros(mr, MILTER_C_CONNECT);
        milter_put_connect(&mr->pkt, host, &s->peer.sa);
        f->conn_sent = true;
        return !(f->protocol & MILTER_P_NR_CONN);
    }
    case MS_HELO:
        put_macros(mr, MILTER_C_HELO);
        strs[0] = s->helo;
        free(f->helo_sent);
        f->helo_sent = xstrdup(s->helo);
        milter_put_strs(&mr->pkt, MILTER_C_HELO, strs, 1);
        return !(f->protocol & MILTER_P_NR_HELO);
    case MS_MAIL:
        put_macros(mr, MILTER_C_MAIL);
        snprintf(addr, sizeof(addr), "<%s>", tx->env->sender);
        strs[0] = addr;
        milter_put_strs(&mr->pkt, MILTER_C_MAIL, strs, 1);
        return !(f->protocol & MILTER_P_NR_MAIL);
    case MS_RCPT:
        put_macros(mr, MILTER_C_RCPT);
        snprintf(addr, sizeof(addr), "<%s>", mr->rcpt);
        strs[0] = addr;
        milter_put_strs(&mr->pkt, MILTER_C_RCPT, strs, 1);
        return !(f->protocol & MILTER_P_NR_RCPT);
    case MS_DATA:
        put_macros(mr, MILTER_C_DATA);
        milter_put(&mr->pkt, MILTER_C_DATA, NULL, 0);
        return !(f->protocol & MILTER_P_NR_DATA);
    case MS_HEADER: {
        char *v = shown_value(mr, mr->hdrs[idx].value);
        strs[0] = mr->hdrs[idx].name;
        strs[1] = v;
        milter_put_strs(&mr->pkt, MILTER_C_HEADER, strs, 2);
        free(v);
        return !(f->protocol & MILTER_P_NR_HDR);
    }
    case MS_EOH:
        put_macros(mr, MILTER_C_EOH);
        milter_put(&mr->pkt, MILTER_C_EOH, NULL, 0);
        return !(f->protocol & MILTER_P_NR_EOH);
    case MS_BODY: {
        const struct buf *c = tx->mcopy;
        size_t left = c->len - mr->body_start - idx;
        milter_put(&mr->pkt, MILTER_C_BODY, c->data + mr->body_start + idx,
            left < MILTER_CHUNK ? left : MILTER_CHUNK);
        return !(f->protocol & MILTER_P_NR_BODY);
    }
    case MS_EOM:
        put_macros(mr, MILTER_C_BODYEOB);
        milter_put(&mr->pkt, MILTER_C_BODYEOB, NULL, 0);
        return true;
    default:
        return false;
    }
}

/* The last step of the phase. */
static enum mstep
phase_goal(const struct smtp_milter_run *mr)
{
    return mr->phase == MP_MAIL ? MS_MAIL : mr->phase == MP_RCPT ? MS_RCPT : MS_EOM;
}

/* Send the current filter the steps of the phase it has not had, up to one
 * it answers (then wait) or the phase's end (then the next filter). */
static void
run_steps(struct smtp_milter_run *mr)
{
    struct mfilter *f = cur_f(mr);
    for (;;) {
        enum mstep st;
        size_t idx = 0;
        bool reply;
        if (mr->phase == MP_RCPT) {
            /* The one new recipient, once. */
            if (f->rcpt_done || (f->protocol & MILTER_P_NORCPT))
                break;
            f->rcpt_done = true;
            st = MS_RCPT;
        } else {
            st = step_next(mr, f, phase_goal(mr), &idx);
            if (st > phase_goal(mr))
                break;
        }
        reply = put_step(mr, st, idx);
        f->step = st;
        f->idx = idx;
        milter_conn_send(f->conn, &mr->pkt);
        if (reply) {
            milter_conn_expect(f->conn);
            return;
        }
    }
    if (mr->phase == MP_EOM)
        filter_close(mr); /* the end of the message has been answered */
    mr->cur++;
    phase_next(mr);
}

/* A reply that refuses or drops the message (or, at RCPT, the
 * recipient); false for others. */
static bool
final_verdict(struct smtp_milter_run *mr, const struct milter_reply *r, bool *bad)
{
    struct tern_status st;
    switch (r->code) {
    case MILTER_R_REJECT:
        STATUS_SET(&st, 550, "5.7.1", "Rejected by content filter");
        break;
    case MILTER_R_TEMPFAIL:
    case MILTER_R_CONN_FAIL:
        STATUS_SET(&st, 451, "4.7.1", "Deferred by content filter, try again later");
        break;
    case MILTER_R_REPLYCODE:
        if (milter_replycode(r->s1, r->s1_len, &st) < 0) {
            *bad = true;
            return true;
        }
        break;
    case MILTER_R_DISCARD:
        /* The whole message, whatever the step (as Sendmail does). */
        decide(mr, SMTP_VERDICT_DISCARD, NULL);
        return true;
    default:
        return false;
    }
    refuse(mr, &st);
    return true;
}

static void
conn_cb(struct milter_conn *c, const struct milter_reply *r, const char *why, void *arg)
{
    struct smtp_milter_run *mr = arg;
    struct mfilter *f = cur_f(mr);
    bool bad = false;
    size_t i = 0;
    while (i < mr->n_specs && mr->f[i].conn != c)
        i++;
    if (mr->s->dead || mr->s->state == SMTP_ST_CLOSING || i == mr->n_specs) {
        /* The session is ending (client gone, shutdown's 421): the answer
         * has no one to go to. */
        if (i < mr->n_specs)
            mr->f[i].conn = NULL;
        milter_conn_free(c);
        return;
    }
    if (mr->s->state != SMTP_ST_FILTER || i != mr->cur) {
        if (r == NULL && (mr->s->tx == NULL || mr->s->tx->milter == NULL)) {
            /* Closed between transactions (the filter's idle timeout):
             * connected again at the next MAIL. */
            filter_disconnected(&mr->f[i]);
            return;
        }
        /* Out of turn: the filter closed, or sent what nobody asked for,
         * while no phase waited for it. */
        mark_failed(mr, i, r == NULL ? why : "protocol error (reply not expected)");
        return;
    }
    if (r == NULL) {
        filter_failed(mr, why);
        return;
    }
    if (tern_mono_ms() - f->started_ms >
        MILTER_TOTAL_TIMEOUTS *
            (mr->s->cfg->milter_timeout_ms > 0 ? mr->s->cfg->milter_timeout_ms : 1)) {
        filter_failed(mr, "too slow in total");
        return;
    }
    if (r->code == MILTER_R_PROGRESS) {
        milter_conn_expect(c); /* the wait starts again */
        return;
    }
    if (!f->negotiated) {
        if (r->code != MILTER_R_OPTNEG || r->version < 2) {
            filter_failed(mr, "protocol error (negotiation)");
            return;
        }
        milter_conn_idle(c);
        f->negotiated = true;
        f->version = r->version;
        f->actions = r->actions & MILTER_F_ALL;
        f->protocol = r->protocol & MILTER_P_OFFER;
        for (size_t k = 0; k < MILTER_M_COUNT; k++) {
            if (r->macros[k] != NULL)
                f->macros[k] = xstrndup(r->macros[k], r->macros_len[k]);
        }
        run_steps(mr);
        return;
    }
    if (f->step == MS_EOM && r->code != MILTER_R_ACCEPT && r->code != MILTER_R_CONTINUE &&
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
        run_steps(mr);
        return;
    case MILTER_R_ACCEPT:
        /* This filter wants to see no more of the message. */
        filter_close(mr);
        mr->cur++;
        phase_next(mr);
        return;
    case MILTER_R_SKIP:
        if (f->step == MS_BODY)
            f->idx = mr->s->tx->mcopy->len - mr->body_start; /* no more body */
        run_steps(mr);
        return;
    case MILTER_R_SHUTDOWN:
        filter_failed(mr, "the filter shut down");
        return;
    default:
        break;
    }
    if (f->step != MS_EOM && !final_verdict(mr, r, &bad)) {
        filter_failed(mr, "protocol error (unexpected reply)");
        return;
    }
    if (bad) {
        filter_failed(mr, "protocol error (bad reply code)");
        return;
    }
    if (f->step == MS_EOM)
        filter_close(mr);
    /* Refused (the phase ends: later filters need not be asked) or
     * discarded (no filter needs to see more). */
    mr->cur = mr->n_specs;
    phase_next(mr);
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
    /* Fields made for the prefix before the commit stay (the
     * Authentication-Results of the inbound checks). */
    spool_writer_take_prefix(tx->w, old);
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

/* ---- the phases ---- */

static void
default_refusal(struct smtp_milter_run *mr)
{
    struct tern_status st;
    if (mr->s->cfg->milter_default_action == MILTER_ACT_REJECT)
        STATUS_SET(&st, 550, "5.7.1", "Rejected by content filter");
    else
        STATUS_SET(&st, 451, "4.7.1", "Content filter unavailable, try again later");
    refuse(mr, &st);
}

static void
filter_connect(struct smtp_milter_run *mr)
{
    struct mfilter *f = cur_f(mr);
    f->conn = milter_conn_new(
        mr->s->lp->base, &mr->specs[mr->cur], mr->s->cfg->milter_timeout_ms, conn_cb, mr);
    milter_put_optneg(&mr->pkt, MILTER_VERSION, MILTER_F_ALL, MILTER_P_OFFER);
    milter_conn_send(f->conn, &mr->pkt);
    milter_conn_expect(f->conn);
}

/* Go on with filter cur (connecting it first), or end the phase. */
static void
phase_next(struct smtp_milter_run *mr)
{
    struct smtp_session *s = mr->s;
    for (; mr->cur < mr->n_specs; mr->cur++) {
        struct mfilter *f = cur_f(mr);
        /* Refused: later filters need not be asked; discarded: nobody
         * needs to see more. */
        if (mr->refused || s->tx->verdict >= SMTP_VERDICT_DISCARD)
            break;
        if (f->failed && s->cfg->milter_default_action != MILTER_ACT_ACCEPT) {
            default_refusal(mr); /* a failed filter answers every later step */
            break;
        }
        if (f->out)
            continue;
        f->started_ms = tern_mono_ms();
        if (f->conn == NULL) {
            filter_connect(mr);
            return;
        }
        run_steps(mr);
        return;
    }
    phase_end(mr);
}

/* Start a phase; true when it ended at once (nothing awaited). */
static bool
phase_start(struct smtp_milter_run *mr, enum mphase ph)
{
    mr->phase = ph;
    mr->cur = 0;
    mr->refused = false;
    mr->finished = false;
    mr->sync = true;
    for (size_t i = 0; i < mr->n_specs; i++)
        mr->f[i].rcpt_done = false;
    phase_next(mr);
    mr->sync = false;
    return mr->finished;
}

static void
log_refusal(struct smtp_milter_run *mr, const char *to)
{
    char why[STATUS_TEXT_MAX + 64];
    snprintf(why, sizeof(why), "milter: %d %s", mr->refuse_st.code, mr->refuse_st.text);
    smtp_log_refused(mr->s, qid_of(mr), why, NULL, to);
}

/* MAIL answered as the filters said. resume: input goes on from here (the
 * phase ended later than the command). Frees mr when refused. */
static void
mail_done(struct smtp_milter_run *mr, bool resume)
{
    struct smtp_session *s = mr->s;
    if (mr->refused) {
        s->reject_why = METRICS_REJ_MILTER + 1;
        smtp_reply_status(s, &mr->refuse_st);
        log_refusal(mr, NULL);
        smtp_tx_reset(s); /* frees mr */
    } else {
        s->state = SMTP_ST_MAIL;
        smtp_reply(s, 250, "2.1.0", "Ok");
    }
    smtp_session_read(s, true);
    if (resume)
        smtp_session_process(s);
}

static void
rcpt_done(struct smtp_milter_run *mr, bool resume)
{
    struct smtp_session *s = mr->s;
    struct spool_env *env = s->tx->env;
    if (mr->refused) {
        s->reject_why = METRICS_REJ_MILTER + 1;
        smtp_reply_status(s, &mr->refuse_st);
        log_refusal(mr, mr->rcpt);
        rcpt_del(env, env->n_rcpts - 1);
    } else {
        smtp_reply(s, 250, "2.1.5", "Ok");
    }
    mr->rcpt = NULL; /* a filter may delete it at the end of the data */
    s->state = env->n_rcpts > 0 ? SMTP_ST_RCPT : SMTP_ST_MAIL;
    smtp_session_read(s, true);
    if (resume)
        smtp_session_process(s);
}

/* The end of the message: the filters' decision recorded, the message
 * written again if they changed it. */
static void
eom_done(struct smtp_milter_run *mr, bool resume)
{
    struct smtp_session *s = mr->s;
    if (mr->refused) {
        smtp_tx_decide(s, SMTP_VERDICT_REFUSE, &mr->refuse_st, mr->refuse_by);
    } else if (s->tx->verdict < SMTP_VERDICT_DISCARD) {
        if (s->tx->env->n_rcpts == 0) {
            /* Filters removed every recipient: nobody to deliver to. */
            smtp_tx_decide(s, SMTP_VERDICT_DISCARD, NULL, "milter: no recipients left");
        } else if (mr->edited) {
            rewrite(mr);
        }
    }
    if (resume)
        smtp_tx_advance(s); /* may free mr */
}

static void
phase_end(struct smtp_milter_run *mr)
{
    mr->finished = true;
    if (mr->sync)
        return; /* the caller that started the phase finishes it */
    switch (mr->phase) {
    case MP_MAIL:
        mail_done(mr, true);
        break;
    case MP_RCPT:
        rcpt_done(mr, true);
        break;
    case MP_EOM:
        eom_done(mr, true);
        break;
    }
}

/* ---- the session's calls ---- */

bool
smtp_milter_mail(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct smtp_milter_run *mr = s->milter;
    char why[200];
    if (s->cfg->milters == NULL)
        return false;
    if (mr == NULL) {
        /* The filters' connections live as long as the session. */
        mr = xcalloc(1, sizeof(*mr));
        mr->s = s;
        if (milter_specs_parse(s->cfg->milters, &mr->specs, &mr->n_specs, why, sizeof(why)) < 0 ||
            mr->n_specs == 0) {
            free(mr->specs);
            free(mr);
            return false; /* checked at load: cannot be */
        }
        mr->f = xcalloc(mr->n_specs, sizeof(*mr->f));
        s->milter = mr;
    }
    tx->milter = mr;
    /* Nothing more is read until the filters have answered. */
    s->state = SMTP_ST_FILTER;
    smtp_session_read(s, false);
    if (phase_start(mr, MP_MAIL))
        mail_done(mr, false);
    return true;
}

bool
smtp_milter_rcpt(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct smtp_milter_run *mr = tx->milter;
    if (mr == NULL)
        return false;
    mr->rcpt = tx->env->rcpts[tx->env->n_rcpts - 1].addr;
    s->state = SMTP_ST_FILTER;
    smtp_session_read(s, false);
    if (phase_start(mr, MP_RCPT))
        rcpt_done(mr, false);
    return true;
}

bool
smtp_milter_stage(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct smtp_milter_run *mr = tx->milter;
    if (mr == NULL || tx->mcopy == NULL)
        return false;
    /* The copy starts with tern's Received field, which filters are not
     * shown (it is made again if the message is). */
    spool_writer_tee(tx->w, NULL);
    buf_consume(tx->mcopy, tx->dkim_skip < tx->mcopy->len ? tx->dkim_skip : tx->mcopy->len);
    hdrs_parse(mr, tx->mcopy->data, tx->mcopy->len);
    if (phase_start(mr, MP_EOM)) {
        eom_done(mr, false);
        return false;
    }
    return true;
}
