/*
 * libFuzzer target: the inbound SMTP session state machine, in process. Each
 * input is one client connection: a real smtp_session (session.c and friends,
 * on the event loop, with the real spool, TLS, AUTH worker and DKIM signer)
 * over a socketpair, driven by a byte-coded script of commands and data that
 * is written in random splits and read back as replies.
 *
 * Input: byte 0 is the mode (bits 0-1 the client address: 127.0.0.1,
 * 192.0.2.7, ::1, 2001:db8::7; bits 2-3 the role: relay, relay, submission,
 * smtps; bit 4 the tight configuration; bit 5 "reckless": pipeline message
 * bodies without waiting for 354 and send BDAT chunks of the wrong size;
 * bits 6-7 the largest write: all, 7, 64 or 512 bytes). Byte 1 seeds the
 * split and pipelining choices. Connections are admitted as a listener
 * admits them (session limits, the share kept for relay_networks,
 * per-address counts; the tight configuration allows 4 sessions, 1 kept,
 * 2 per outside address), and the "conn" op opens extra idle connections
 * from any of the four addresses. Then ops, each an opcode byte and its
 * arguments (see the op table at the end; tests/fuzz/mkseeds.py writes
 * scripts from readable names). A reply of 334 makes the next op byte pick
 * an AUTH response instead.
 *
 * Invariants (abort on violation), besides no crash and no sanitizer report:
 * replies are well formed, one per command, never two; every command is
 * answered once the session is idle; a RCPT gets 250 only inside a
 * transaction and a message is accepted only with recipients; a message
 * answered "250 queued as ID" is in the queue at that moment with exactly the
 * recipients that got 250 (in order), the exact sender and the bytes sent
 * (read back through the spool's content reader); after a BDAT chunk no
 * RCPT gets 250 and no DATA 354 (RFC 3030 §3); the reply backlog of a
 * client that stops reading stays bounded; an extra connection gets either
 * the greeting or one 421 4.7.0 line, the server never holds more sessions
 * than max_sessions nor gives the reserved ones to outsiders, and its
 * per-address and outsider counts match the live sessions; and when every
 * connection has ended no session, count, corrupt/ file or descriptor is
 * left. Unless reckless, the client behaves as RFC 5321 and RFC 3030 ask,
 * so these are the server's promises.
 *
 * TERN_FUZZ_TMPDIR: where the world is made (default /dev/shm); TERN_FUZZ_LOG
 * set: the server's log goes to stderr (to read what an input does).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz_check.h"
#include "session_world.h"
#include "smtp/smtp_int.h"
#include "spool/spool.h"
#include "util/buf.h"
#include "util/map.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define BACKLOG_MAX (1024 * 1024) /* reply bytes a session may hold for a client */
#define REPEAT_MAX  20000         /* commands of one "stop reading" op */
/* ... and of all of one input's: dozens of floods make an input take
 * seconds (a timeout to libFuzzer) while finding nothing more. */
#define FLOOD_TOTAL_MAX    (2 * REPEAT_MAX)
#define IDLE_PASSES_MAX    2000000
#define FD_SETTLE_PASSES   500 /* of 1 ms each */
#define HANDSHAKE_MAX      20000
#define THROTTLE_ENTRIES   100000
#define REPLY_LINE_MAX     (STATUS_TEXT_MAX + 32) /* code, enhanced code, text */
#define SERVER_SNDBUF      32768                  /* small, so that a backlog shows early */
#define IDLE_STABLE_PASSES 3
#define EXTRA_MAX          6 /* extra connections an input may hold open */

static struct fuzz_world W;

/* ---- the tables the script indexes ---- */

/* A path, and the address the spool must hold for it (NULL: not checked). */
struct addr {
    const char *path, *exact;
};

static const struct addr senders[] = {
    { "<>", "" },
    { "<a@example.com>", "a@example.com" },
    { "<sender@relay.test>", "sender@relay.test" },
    { "<alice@example.com>", "alice@example.com" },
    { "<bad", NULL },
    { "<u@[192.0.2.1]>", NULL },
    { "<\xc3\xbc@example.com>", NULL },
    { "<@hop.example:a@example.com>", NULL },
};

static const struct addr rcpts[] = {
    { "<r1@example.net>", "r1@example.net" },
    { "<r2@example.net>", "r2@example.net" },
    { "<postmaster>", "postmaster" },
    { "<user@relay.test>", "user@relay.test" },
    { "<User@Relay.TEST>", NULL },
    { "<@a.example,@b.example:r3@example.net>", NULL },
    { "<user%evil.example@relay.test>", NULL },
    { "<\"quoted user\"@relay.test>", NULL },
    { "<r1@example.net", NULL },
    { "<>", NULL },
    { "<\xc3\xbc@relay.test>", NULL },
};

static const char *const mail_params[] = {
    "",
    " SIZE=100",
    " SIZE=100000000",
    " BODY=8BITMIME",
    " BODY=7BIT SMTPUTF8",
    " RET=HDRS ENVID=QQ+2B",
    " BODY=BINARYMIME",
    " XFOO=1",
    " SIZE=abc",
    " RET=FULL RET=HDRS",
};

static const char *const rcpt_params[] = {
    "",
    " NOTIFY=SUCCESS,FAILURE",
    " NOTIFY=NEVER",
    " NOTIFY=DELAY ORCPT=rfc822;r1+40example.net",
    " NOTIFY=NEVER,SUCCESS",
    " ORCPT=bogus",
    " XFOO",
};

static const char *const helo_names[] = {
    "client.example",
    "[127.0.0.1]",
    "",
    "two words",
    "\xc3\xbc.example",
    "x(y)",
};

static const char *const bodies[] = {
    "",
    "Subject: hi\r\n\r\nhello\r\n",
    "From: a@example.com\r\nTo: r1@example.net\r\nSubject: signed\r\n\r\nbody\r\n.dot\r\n",
    "no header and no line end",
    ".\r\n..\r\n.x\r\n",
    "bare\nline feed\r\n",
    "From: \"x\" <a@example.com>\r\nDKIM-Signature: v=1; bogus\r\n\r\n",
    "Subject: nul\r\n\r\na\0b\r\n",
};

/* Initial responses and responses of AUTH: base64 of "\0alice\0secret",
 * "\0alice\0wrong", "\0nobody\0secret", "alice\0alice\0secret",
 * "\0alice\0", "bob\0alice\0secret"; "alice", "secret", "wrong"; cancel;
 * not base64; empty. */
static const char *const auth_lines[] = {
    "AGFsaWNlAHNlY3JldA==",
    "AGFsaWNlAHdyb25n",
    "AG5vYm9keQBzZWNyZXQ=",
    "YWxpY2UAYWxpY2UAc2VjcmV0",
    "AGFsaWNlAA==",
    "Ym9iAGFsaWNlAHNlY3JldA==",
    "YWxpY2U=",
    "c2VjcmV0",
    "d3Jvbmc=",
    "*",
    "!!not base64",
    "",
    "=",
};

static const char *const misc_cmds[] = {
    "NOOP", "NOOP hello", "VRFY r1@example.net", "EXPN list", "HELP", "FOO bar", "DATA now",
    "STARTTLS now", "AUTH", "AUTH CRAM-MD5", "BDAT", "BDAT x", "BDAT 5 LASTX",
    "BDAT 99999999999999999999", "MAIL FROM:", "RCPT TO:", "mail from:<a@example.com>", "",
    "BDAT 60000000 LAST", /* over either configuration's limit and its slack */
};

static const char *const repeat_cmds[] = { "HELP\r\n", "NOOP\r\n", "EHLO x\r\n", "RSET\r\n" };

/* Line lengths around the limits (512 commands, 702 MAIL, 1076 RCPT,
 * 12290 AUTH, all with CRLF). */
static const size_t long_lens[] = { 509, 510, 511, 700, 701, 702, 1074, 1075, 1076, 1200, 12288,
    12289, 12290, 13000 };
static const char *const long_verbs[] = { "MAIL FROM:<", "RCPT TO:<", "NOOP ", "AUTH PLAIN ",
    "HELO " };

/* ---- the script ---- */

struct script {
    const uint8_t *p;
    size_t n;
    size_t flooded; /* commands sent by "stop reading" ops so far */
};

static uint8_t
sc_u8(struct script *s)
{
    if (s->n == 0)
        return 0;
    s->n--;
    return *s->p++;
}

static size_t
sc_bytes(struct script *s, size_t want, const uint8_t **out)
{
    size_t n = want < s->n ? want : s->n;
    *out = s->p;
    s->p += n;
    s->n -= n;
    return n;
}

/* ---- the client and what it expects ---- */

enum exp_kind {
    EX_GREETING,
    EX_HELO,
    EX_MAIL,
    EX_RCPT,
    EX_DATA,
    EX_DOT,
    EX_BDAT,
    EX_BDAT_LAST,
    EX_RSET,
    EX_QUIT,
    EX_STARTTLS,
    EX_AUTH,
    EX_OTHER,
};

struct expect {
    enum exp_kind kind;
    const char *exact; /* MAIL/RCPT: the address the spool must hold, or NULL */
    struct buf data;   /* DOT, BDAT: the message bytes meant (unstuffed) */
};

/* What the client has been told: the open transaction as the replies say. */
struct model {
    bool on; /* replies are matched to commands */
    bool in_tx;
    const char *sender; /* exact sender, or NULL */
    const char **rcpt;  /* exact address or NULL per accepted recipient */
    size_t n_rcpt, cap_rcpt;
    struct buf content; /* BDAT chunks accepted so far */
    bool auth_cont;     /* the last reply was 334: the next line is a response */
    bool data_go;       /* the last DATA got 354 */
    bool tls_go;        /* the last STARTTLS got 220 */
    bool bdat_open;     /* a BDAT chunk without LAST got 250 in this transaction */
};

/* An extra connection: admitted or refused, then left idle. */
struct extra {
    int fd;
    bool trusted; /* from relay_networks */
    uint64_t recvd;
    struct buf first; /* what it has been sent, up to the first line end */
};

struct client {
    int fd;
    SSL *ssl; /* NULL in plaintext */
    struct smtp_server *srv;
    uint64_t sess_id;
    struct buf out;   /* bytes still to send */
    size_t tls_retry; /* length of an SSL_write to repeat, 0 none */
    struct buf in;    /* reply bytes not yet parsed */
    bool reading;     /* false once the client stops reading replies */
    bool raw_in;      /* what comes now may be TLS records: read, not parsed */
    bool eof;         /* the connection is over for the client */
    bool shut;        /* the client sent EOF */
    bool reckless;
    uint64_t sent, recvd;
    uint32_t rng;
    size_t max_chunk;                    /* 0: write everything at once */
    int reply_code;                      /* code of the reply being read, 0 between replies */
    char reply_text[REPLY_LINE_MAX + 1]; /* its first line */
    struct expect *exp;
    size_t exp_head, n_exp, cap_exp;
    struct model m;
    struct extra extra[EXTRA_MAX];
    size_t n_extra;
};

static uint32_t
rnd(struct client *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 17;
    c->rng ^= c->rng << 5;
    return c->rng;
}

static struct expect *
expect_push(struct client *c, enum exp_kind kind, const char *exact)
{
    struct expect *e;
    if (c->exp_head + c->n_exp == c->cap_exp) {
        if (c->exp_head > 0) {
            memmove(c->exp, c->exp + c->exp_head, c->n_exp * sizeof(*c->exp));
            c->exp_head = 0;
        } else {
            c->cap_exp = c->cap_exp ? 2 * c->cap_exp : 16;
            c->exp = xrealloc(c->exp, c->cap_exp * sizeof(*c->exp));
        }
    }
    e = &c->exp[c->exp_head + c->n_exp++];
    e->kind = kind;
    e->exact = exact;
    buf_init(&e->data);
    return e;
}

static void
expect_drop_all(struct client *c)
{
    for (size_t i = 0; i < c->n_exp; i++)
        buf_fini(&c->exp[c->exp_head + i].data);
    c->exp_head = c->n_exp = 0;
}

static void
tx_reset(struct model *m)
{
    m->in_tx = false;
    m->sender = NULL;
    m->n_rcpt = 0;
    m->bdat_open = false;
    buf_reset(&m->content);
}

static void
model_off(struct client *c)
{
    c->m.on = false;
    c->m.auth_cont = false;
    expect_drop_all(c);
}

/* The session as the server sees it, or NULL once it has ended. */
static struct smtp_session *
session(struct client *c)
{
    struct smtp_session *s = map_get_u64(c->srv->loops[0]->sessions, c->sess_id);
    return s != NULL && !s->dead ? s : NULL;
}

/* ---- checking an accepted message against what was sent ---- */

/* The stored message, read back as delivery reads it: tern's Received
 * field, then what the client sent. */
static void
check_body(const struct spool_env *env, const struct buf *want)
{
    struct spool_content *sc = spool_content_open(W.sp, env);
    struct buf got = BUF_INIT;
    const char *p;
    size_t n;
    int r;
    CHECK(sc != NULL);
    while ((r = spool_content_next(sc, &p, &n)) == 1)
        buf_append(&got, p, n);
    CHECK(r == 0);
    spool_content_close(sc);
    CHECK(got.len == env->body_len && got.len >= want->len);
    CHECK(got.len >= 10 && memcmp(got.data, "Received: ", 10) == 0);
    CHECK(want->len == 0 || memcmp(got.data + got.len - want->len, want->data, want->len) == 0);
    buf_fini(&got);
}

/* "250 2.0.0 Ok: queued as ID": the message must be in the queue now with
 * the recipients that got 250, the sender and the bytes sent. */
static void
check_accepted(struct client *c, const struct buf *meant)
{
    const char *q = strstr(c->reply_text, "queued as ");
    char qid[SPOOL_QID_LEN + 1];
    struct spool_env *env;
    struct buf want = BUF_INIT;
    CHECK(c->m.in_tx && c->m.n_rcpt > 0);
    CHECK(q != NULL && strlen(q + 10) == SPOOL_QID_LEN);
    memcpy(qid, q + 10, sizeof(qid));
    env = spool_load(W.sp, qid);
    CHECK(env != NULL);                 /* durable before the 250 */
    CHECK(env->n_rcpts == c->m.n_rcpt); /* every recipient told 250, no other */
    for (size_t i = 0; i < env->n_rcpts; i++)
        CHECK(c->m.rcpt[i] == NULL || strcmp(env->rcpts[i].addr, c->m.rcpt[i]) == 0);
    CHECK(c->m.sender == NULL || strcmp(env->sender, c->m.sender) == 0);
    /* The message is what was sent, ending with CRLF (RFC 3030 §3 for BDAT;
     * the client appends it before the final dot of DATA). */
    buf_append(&want, meant->data ? meant->data : "", meant->len);
    if (want.len > 0 && (want.len < 2 || memcmp(want.data + want.len - 2, "\r\n", 2) != 0))
        buf_append(&want, "\r\n", 2);
    /* A message that is all header gets the empty line that ends it (RFC
     * 5322 §2.1); tern's Received field before it ends in CRLF. */
    {
        struct buf all = BUF_INIT;
        buf_append(&all, "\r\n", 2);
        buf_append(&all, want.data ? want.data : "", want.len);
        if (memmem(all.data, all.len, "\r\n\r\n", 4) == NULL)
            buf_append(&want, "\r\n", 2);
        buf_fini(&all);
    }
    check_body(env, &want);
    buf_fini(&want);
    spool_env_free(env);
}

/* ---- replies ---- */

static void
on_rcpt_ok(struct model *m, const char *exact)
{
    CHECK(m->in_tx); /* RFC 5321 §4.1.4: RCPT only after MAIL */
    /* RFC 3030 §3: after a chunk, only BDAT or RSET; a recipient accepted
     * now would not be in the message. */
    CHECK(!m->bdat_open);
    if (m->n_rcpt == m->cap_rcpt) {
        m->cap_rcpt = m->cap_rcpt ? 2 * m->cap_rcpt : 8;
        m->rcpt = xrealloc(m->rcpt, m->cap_rcpt * sizeof(*m->rcpt));
    }
    m->rcpt[m->n_rcpt++] = exact;
}

/* One complete reply, matched to the oldest unanswered command. */
static void
on_reply(struct client *c, int code)
{
    struct model *m = &c->m;
    struct expect *e;
    if (!m->on)
        return;
    if (code == 421) {
        model_off(c); /* the server is closing; it may follow another reply */
        return;
    }
    CHECK(c->n_exp > 0); /* never two replies to one command */
    e = &c->exp[c->exp_head];
    c->exp_head++;
    c->n_exp--;
    m->auth_cont = false;
    switch (e->kind) {
    case EX_GREETING:
        CHECK(code == 220);
        break;
    case EX_HELO:
    case EX_RSET:
        if (code == 250)
            tx_reset(m);
        break;
    case EX_MAIL:
        if (code == 250) {
            CHECK(!m->in_tx);
            tx_reset(m);
            m->in_tx = true;
            m->sender = e->exact;
        }
        break;
    case EX_RCPT:
        if (code == 250)
            on_rcpt_ok(m, e->exact);
        break;
    case EX_DATA:
        m->data_go = code == 354;
        if (code == 354)
            CHECK(m->in_tx && m->n_rcpt > 0 && !m->bdat_open);
        else if (code == 452)
            tx_reset(m);
        break;
    case EX_DOT:
        if (code == 250)
            check_accepted(c, &e->data);
        tx_reset(m);
        break;
    case EX_BDAT:
        if (code == 250) {
            CHECK(m->in_tx && m->n_rcpt > 0);
            buf_append(&m->content, e->data.data ? e->data.data : "", e->data.len);
            m->bdat_open = true;
        } else if (m->n_rcpt == 0) {
            tx_reset(m);
        }
        break;
    case EX_BDAT_LAST:
        if (code == 250) {
            buf_append(&m->content, e->data.data ? e->data.data : "", e->data.len);
            check_accepted(c, &m->content);
        }
        tx_reset(m);
        break;
    case EX_QUIT:
        CHECK(code == 221);
        model_off(c);
        break;
    case EX_STARTTLS:
        m->tls_go = code == 220;
        if (code == 220)
            tx_reset(m);
        break;
    case EX_AUTH:
        m->auth_cont = code == 334;
        break;
    case EX_OTHER:
        break;
    }
    buf_fini(&e->data);
}

/* One reply line (without CRLF): RFC 5321 §4.2 syntax, one code throughout. */
static void
on_reply_line(struct client *c, const char *line, size_t len)
{
    int code;
    CHECK(len >= 3 && len <= REPLY_LINE_MAX);
    CHECK(line[0] >= '2' && line[0] <= '5' && line[1] >= '0' && line[1] <= '9' && line[2] >= '0' &&
          line[2] <= '9');
    CHECK(len == 3 || line[3] == ' ' || line[3] == '-');
    CHECK(memchr(line, '\r', len) == NULL && memchr(line, '\0', len) == NULL);
    code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (c->reply_code == 0) {
        c->reply_code = code;
        memcpy(c->reply_text, line, len);
        c->reply_text[len] = '\0';
    }
    CHECK(code == c->reply_code);
    if (len > 3 && line[3] == '-')
        return;
    c->reply_code = 0;
    on_reply(c, code);
}

static void
parse_replies(struct client *c)
{
    char *nl;
    while (c->in.len > 0 && (nl = memchr(c->in.data, '\n', c->in.len)) != NULL) {
        size_t len = (size_t)(nl - c->in.data);
        CHECK(len > 0 && c->in.data[len - 1] == '\r'); /* CRLF only */
        on_reply_line(c, c->in.data, len - 1);
        buf_consume(&c->in, len + 1);
    }
    CHECK(c->in.len <= REPLY_LINE_MAX + 1); /* a line in progress, without its LF */
}

/* ---- moving bytes ---- */

static void
client_read(struct client *c)
{
    char b[16384];
    while (c->reading && !c->eof) {
        int r;
        if (c->ssl != NULL) {
            r = SSL_read(c->ssl, b, sizeof(b));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                    return;
                ERR_clear_error();
                c->eof = true;
                return;
            }
        } else {
            r = (int)read(c->fd, b, sizeof(b));
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && errno == EAGAIN)
                return;
            if (r <= 0) {
                c->eof = true;
                return;
            }
        }
        c->recvd += (uint64_t)r;
        if (c->raw_in)
            continue;
        buf_append(&c->in, b, (size_t)r);
        parse_replies(c);
    }
}

/* Write one piece of the pending output; false when nothing moved. */
static bool
client_write(struct client *c)
{
    size_t n = c->out.len;
    ssize_t w;
    if (n == 0 || c->eof)
        return false;
    if (c->ssl != NULL && c->tls_retry > 0)
        n = c->tls_retry; /* SSL_write must be repeated as it was */
    else if (c->max_chunk > 0 && n > 1 && rnd(c) % 4 != 0)
        n = 1 + rnd(c) % (c->max_chunk < n ? c->max_chunk : n); /* else all: long lines */
    if (c->ssl != NULL) {
        int r = SSL_write(c->ssl, c->out.data, (int)n);
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                c->tls_retry = n;
                return false;
            }
            ERR_clear_error();
            c->eof = true;
            return false;
        }
        c->tls_retry = 0;
        w = r;
    } else {
        w = send(c->fd, c->out.data, n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            return false;
        if (w < 0) {
            c->eof = true;
            return false;
        }
    }
    buf_consume(&c->out, (size_t)w);
    c->sent += (uint64_t)w;
    return true;
}

/* Reply bytes the session holds for its client (both layers under TLS). */
static size_t
backlog(struct smtp_session *s)
{
    struct bufferevent *under = bufferevent_get_underlying(s->bev);
    size_t n = evbuffer_get_length(bufferevent_get_output(s->bev));
    if (under != NULL)
        n += evbuffer_get_length(bufferevent_get_output(under));
    return n;
}

/* Work the server is doing that no socket shows: commits, password checks,
 * timers about to fire, a session waiting to be freed. */
static bool
server_busy(struct client *c)
{
    struct smtp_session *s = session(c);
    if (smtp_server_unfreed(c->srv) > smtp_server_sessions(c->srv))
        return true;
    if (s == NULL)
        return false;
    return s->state == SMTP_ST_COMMIT ||
           (s->state == SMTP_ST_AUTH &&
               (s->auth_step == SMTP_AUTH_CHECK || s->auth_step == SMTP_AUTH_DELAY));
}

/* What an extra connection is sent: its first line is kept, the rest (a
 * session's replies, were any asked for) dropped. */
static void
extra_read(struct extra *x)
{
    char b[4096];
    ssize_t r;
    while (x->fd >= 0 && (r = read(x->fd, b, sizeof(b))) > 0) {
        size_t room = REPLY_LINE_MAX + 2 - x->first.len;
        x->recvd += (uint64_t)r;
        if (x->first.len < REPLY_LINE_MAX + 2)
            buf_append(&x->first, b, (size_t)r < room ? (size_t)r : room);
    }
}

struct fingerprint {
    uint64_t sent, recvd, extra_recvd;
    size_t out, in, alive, sin, sout;
    int pend_c, state;
};

static void
take_fingerprint(struct client *c, struct fingerprint *f)
{
    struct smtp_session *s = session(c);
    memset(f, 0, sizeof(*f));
    f->sent = c->sent;
    f->recvd = c->recvd;
    f->out = c->out.len;
    f->in = c->in.len;
    f->alive = smtp_server_unfreed(c->srv);
    for (size_t i = 0; i < c->n_extra; i++)
        f->extra_recvd += c->extra[i].recvd;
    if (c->fd >= 0)
        ioctl(c->fd, FIONREAD, &f->pend_c);
    if (s != NULL) {
        f->state = (int)s->state + 1;
        f->sin = evbuffer_get_length(bufferevent_get_input(s->bev));
        f->sout = backlog(s);
        CHECK(f->sout <= BACKLOG_MAX); /* a client that does not read costs bounded memory */
    }
}

/* Move bytes and run the loop until nothing changes any more. */
static void
run_until_idle(struct client *c)
{
    struct fingerprint prev, now;
    unsigned stable = 0;
    memset(&prev, 0xff, sizeof(prev));
    for (unsigned long i = 0; i < IDLE_PASSES_MAX; i++) {
        client_write(c);
        event_base_loop(W.base, EVLOOP_NONBLOCK);
        client_read(c);
        for (size_t k = 0; k < c->n_extra; k++)
            extra_read(&c->extra[k]);
        if (server_busy(c)) {
            event_base_loop(W.base, EVLOOP_ONCE);
            stable = 0;
            continue;
        }
        take_fingerprint(c, &now);
        if (memcmp(&now, &prev, sizeof(now)) == 0) {
            if (++stable >= IDLE_STABLE_PASSES)
                break;
        } else {
            stable = 0;
        }
        prev = now;
    }
    CHECK(stable >= IDLE_STABLE_PASSES); /* the session went idle */
    /* Idle with everything sent and read: every command has its reply. */
    if (c->m.on && c->reading && !c->eof && !c->shut && c->out.len == 0 && session(c) != NULL &&
        session(c)->state != SMTP_ST_CLOSING)
        CHECK(c->n_exp == 0);
}

static bool
client_handshake(struct client *c)
{
    SSL *ssl = SSL_new(W.client_tls);
    CHECK(ssl != NULL);
    SSL_set_fd(ssl, c->fd);
    SSL_set_connect_state(ssl);
    SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_tlsext_host_name(ssl, "fuzz.example");
    for (unsigned i = 0; i < HANDSHAKE_MAX && session(c) != NULL; i++) {
        int r = SSL_do_handshake(ssl), e;
        if (r == 1) {
            c->ssl = ssl;
            return true;
        }
        e = SSL_get_error(ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
            break;
        event_base_loop(W.base, EVLOOP_NONBLOCK);
    }
    ERR_clear_error();
    SSL_free(ssl);
    c->eof = true;
    model_off(c);
    return false;
}

/* ---- ops ---- */

static void
send_str(struct client *c, const char *s)
{
    buf_append_str(&c->out, s);
}

static void send_line(struct client *c, enum exp_kind kind, const char *exact, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
send_line(struct client *c, enum exp_kind kind, const char *exact, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&c->out, fmt, ap);
    va_end(ap);
    buf_append(&c->out, "\r\n", 2);
    if (c->m.on)
        expect_push(c, kind, exact);
}

/* A line of arbitrary bytes (it may hold NUL; never LF). */
static void
send_bytes_line(struct client *c, enum exp_kind kind, const char *p, size_t n)
{
    buf_append(&c->out, p, n);
    buf_append(&c->out, "\r\n", 2);
    if (c->m.on)
        expect_push(c, kind, NULL);
}

/* Wait for the replies so far (a synchronisation point of RFC 2920). */
static void
sync_replies(struct client *c)
{
    run_until_idle(c);
}

/* Fuzz bytes as the text of one line: no LF (that would make two lines). */
static void
fuzz_text(struct script *sc, size_t max, struct buf *out)
{
    const uint8_t *p;
    size_t n = sc_bytes(sc, sc_u8(sc) % (max + 1), &p);
    for (size_t i = 0; i < n; i++)
        buf_append_char(out, p[i] == '\n' ? ' ' : (char)p[i]);
}

static void
op_helo(struct client *c, struct script *sc, bool ehlo)
{
    uint8_t k = sc_u8(sc);
    struct buf name = BUF_INIT;
    if (k >= 0xf0)
        fuzz_text(sc, 80, &name);
    else
        buf_append_str(&name, helo_names[k % TERN_ARRAY_LEN(helo_names)]);
    send_line(c, EX_HELO, NULL, "%s %s", ehlo ? "EHLO" : "HELO", name.data ? name.data : "");
    buf_fini(&name);
}

static void
op_ehlo(struct client *c, struct script *sc)
{
    op_helo(c, sc, true);
}

static void
op_helo_plain(struct client *c, struct script *sc)
{
    op_helo(c, sc, false);
}

static void
op_mail(struct client *c, struct script *sc)
{
    const struct addr *a = &senders[sc_u8(sc) % TERN_ARRAY_LEN(senders)];
    const char *p = mail_params[sc_u8(sc) % TERN_ARRAY_LEN(mail_params)];
    send_line(c, EX_MAIL, a->exact, "MAIL FROM:%s%s", a->path, p);
}

static void
op_rcpt(struct client *c, struct script *sc)
{
    const struct addr *a = &rcpts[sc_u8(sc) % TERN_ARRAY_LEN(rcpts)];
    const char *p = rcpt_params[sc_u8(sc) % TERN_ARRAY_LEN(rcpt_params)];
    send_line(c, EX_RCPT, a->exact, "RCPT TO:%s%s", a->path, p);
}

/* A message body from the script: a template, fuzz bytes, or both, or
 * many lines (for the size limits). */
static void
make_body(struct script *sc, struct buf *body)
{
    uint8_t k = sc_u8(sc);
    const uint8_t *p;
    size_t n;
    if ((k & 3) == 2) {
        /* Many short lines, or lines over the 1000-octet limit (RFC 5321
         * §4.5.3.1.6). */
        size_t width = (k & 4) ? 1200 : 40;
        /* At most ~300 KB of long lines: enough to cross the line and
         * buffer limits, few enough that an input stays fast. */
        size_t lines = (size_t)sc_u8(sc) * (width == 40 ? 8 : 1);
        for (size_t i = 0; i < lines; i++) {
            for (size_t j = 0; j < width; j++)
                buf_append_char(body, (char)('0' + j % 10));
            buf_append_str(body, "\r\n");
        }
        return;
    }
    if ((k & 3) != 0) {
        const char *t = bodies[(k >> 2) % TERN_ARRAY_LEN(bodies)];
        buf_append(body, t, t == bodies[7] ? 22 : strlen(t));
    }
    if ((k & 3) != 1) {
        n = sc_bytes(sc, sc_u8(sc), &p);
        buf_append(body, p, n);
    }
}

/* Dot-stuff (RFC 5321 §4.5.2) and terminate, as a correct client does. */
static void
send_body(struct client *c, const struct buf *body)
{
    bool bol = true;
    for (size_t i = 0; i < body->len; i++) {
        if (bol && body->data[i] == '.')
            buf_append_char(&c->out, '.');
        buf_append_char(&c->out, body->data[i]);
        bol = i > 0 && body->data[i] == '\n' && body->data[i - 1] == '\r';
    }
    if (body->len > 0 && !bol)
        send_str(c, "\r\n");
    send_str(c, ".\r\n");
}

static void
op_data(struct client *c, struct script *sc)
{
    struct buf body = BUF_INIT;
    make_body(sc, &body);
    if (c->reckless) {
        /* Body right behind the command, sometimes not even stuffed. */
        send_str(c, "DATA\r\n");
        if (body.len % 2)
            buf_append(&c->out, body.data, body.len);
        else
            send_body(c, &body);
        goto out;
    }
    c->m.data_go = false;
    send_line(c, EX_DATA, NULL, "DATA");
    sync_replies(c);
    if (!c->m.on || !c->m.data_go || c->eof)
        goto out;
    send_body(c, &body);
    buf_append(&expect_push(c, EX_DOT, NULL)->data, body.data ? body.data : "", body.len);
out:
    buf_fini(&body);
}

static void
op_bdat(struct client *c, struct script *sc)
{
    uint8_t k = sc_u8(sc);
    bool last = k & 1;
    size_t len = (k & 2) ? (size_t)sc_u8(sc) * 32 : sc_u8(sc);
    size_t declared = len;
    struct buf chunk = BUF_INIT;
    const uint8_t *p;
    size_t n = sc_bytes(sc, len, &p);
    buf_append(&chunk, p, n);
    /* Pad short script bytes with lines; never past len. */
    while (chunk.len < len)
        buf_append_str(&chunk, chunk.len + 3 <= len ? "x\r\n" : "y");
    if (c->reckless && (k & 4)) {
        declared = len + sc_u8(sc) % 16;
        if (k & 8)
            declared = declared > 8 ? declared - 8 : 0;
    }
    send_line(c, last ? EX_BDAT_LAST : EX_BDAT, NULL, "BDAT %zu%s", declared, last ? " LAST" : "");
    if (c->m.on)
        buf_append(&c->exp[c->exp_head + c->n_exp - 1].data, chunk.data ? chunk.data : "", len);
    buf_append(&c->out, chunk.data ? chunk.data : "", len);
    buf_fini(&chunk);
}

static void
op_rset(struct client *c, struct script *sc)
{
    (void)sc;
    send_line(c, EX_RSET, NULL, "RSET");
}

static void
op_quit(struct client *c, struct script *sc)
{
    (void)sc;
    send_line(c, EX_QUIT, NULL, "QUIT");
}

static void
op_starttls(struct client *c, struct script *sc)
{
    uint8_t k = sc_u8(sc);
    c->m.tls_go = false;
    send_line(c, EX_STARTTLS, NULL, "STARTTLS");
    if (c->reckless) {
        /* Whatever follows is pipelined plaintext, to be thrown away; the
         * server may answer it with a TLS alert. */
        c->raw_in = true;
        return;
    }
    sync_replies(c);
    if (!c->m.on || !c->m.tls_go || c->eof)
        return;
    if (k & 1) {
        send_str(c, "EHLO not a TLS handshake\r\n"); /* the handshake fails */
        c->raw_in = true;
        model_off(c);
        return;
    }
    client_handshake(c);
}

static void
op_auth(struct client *c, struct script *sc)
{
    uint8_t k = sc_u8(sc);
    const char *mech = (k & 1) ? "LOGIN" : "PLAIN";
    const char *ir = auth_lines[(k >> 2) % TERN_ARRAY_LEN(auth_lines)];
    if (k & 2)
        send_line(c, EX_AUTH, NULL, "AUTH %s %s", mech, ir);
    else
        send_line(c, EX_AUTH, NULL, "AUTH %s", mech);
    if (!c->reckless)
        sync_replies(c);
}

/* The next line of an AUTH exchange (after 334), whatever the op was. */
static void
auth_response(struct client *c, uint8_t op)
{
    if (op >= 0xf0) {
        /* Longer than any AUTH line may be (RFC 4954 §4: 12288 octets). */
        struct buf t = BUF_INIT;
        while (t.len < 13000)
            buf_append_char(&t, 'A');
        send_bytes_line(c, EX_AUTH, t.data, t.len);
        buf_fini(&t);
    } else {
        send_line(c, EX_AUTH, NULL, "%s", auth_lines[op % TERN_ARRAY_LEN(auth_lines)]);
    }
    sync_replies(c);
}

static void
op_junk_line(struct client *c, struct script *sc)
{
    struct buf t = BUF_INIT;
    /* "X" first: no verb starts with it, so the line is never a command. */
    buf_append_char(&t, 'X');
    fuzz_text(sc, 255, &t);
    send_bytes_line(c, EX_OTHER, t.data, t.len);
    buf_fini(&t);
}

static void
op_misc(struct client *c, struct script *sc)
{
    const char *cmd = misc_cmds[sc_u8(sc) % TERN_ARRAY_LEN(misc_cmds)];
    /* Lines that may change the state or end the session go alone. */
    bool closes = strncmp(cmd, "BDAT", 4) == 0;
    bool auth = strncmp(cmd, "AUTH", 4) == 0;
    send_line(c,
        strncmp(cmd, "mail", 4) == 0 ? EX_MAIL
        : auth                       ? EX_AUTH
                                     : EX_OTHER,
        NULL, "%s", cmd);
    if (closes || auth)
        sync_replies(c);
}

static void
op_long_line(struct client *c, struct script *sc)
{
    static const enum exp_kind kinds[] = { EX_MAIL, EX_RCPT, EX_OTHER, EX_AUTH, EX_HELO };
    uint8_t k = sc_u8(sc);
    size_t len = long_lens[k % TERN_ARRAY_LEN(long_lens)] - 2; /* the limits count CRLF */
    size_t v = (size_t)(k >> 4) % TERN_ARRAY_LEN(long_verbs);
    struct buf t = BUF_INIT;
    buf_append_str(&t, long_verbs[v]);
    while (t.len < len)
        buf_append_char(&t, 'a');
    send_bytes_line(c, kinds[v], t.data, t.len);
    buf_fini(&t);
    if (kinds[v] == EX_AUTH)
        sync_replies(c);
}

static void
op_sync(struct client *c, struct script *sc)
{
    (void)sc;
    sync_replies(c);
}

/* Stop reading replies and pipeline many commands (a client that never
 * reads must not make the server hold its replies without limit). */
static void
op_flood(struct client *c, struct script *sc)
{
    size_t count = ((size_t)sc_u8(sc) << 8 | sc_u8(sc)) % (REPEAT_MAX + 1);
    const char *cmd = repeat_cmds[sc_u8(sc) % TERN_ARRAY_LEN(repeat_cmds)];
    if (count > FLOOD_TOTAL_MAX - sc->flooded)
        count = FLOOD_TOTAL_MAX - sc->flooded;
    sc->flooded += count;
    sync_replies(c);
    c->reading = false;
    model_off(c);
    for (size_t i = 0; i < count; i++)
        send_str(c, cmd);
    run_until_idle(c);
}

static void
op_eof(struct client *c, struct script *sc)
{
    (void)sc;
    run_until_idle(c);
    if (c->ssl != NULL)
        SSL_shutdown(c->ssl);
    shutdown(c->fd, SHUT_WR);
    c->shut = true;
    model_off(c);
    run_until_idle(c);
}

/* Bytes without any line end (reckless): the next command joins them.
 * Otherwise they make a junk line. */
static void
op_raw(struct client *c, struct script *sc)
{
    const uint8_t *p;
    size_t n = sc_bytes(sc, sc_u8(sc), &p);
    struct buf t = BUF_INIT;
    if (c->reckless) {
        buf_append(&c->out, p, n);
        return;
    }
    buf_append_char(&t, 'X');
    for (size_t i = 0; i < n; i++)
        buf_append_char(&t, p[i] == '\n' ? ' ' : (char)p[i]);
    send_bytes_line(c, EX_OTHER, t.data, t.len);
    buf_fini(&t);
}

/* ---- admission ---- */

static const char refusal[] = "421 4.7.0 Too many connections, try again later\r\n";

static socklen_t peer_addr(uint8_t which, struct sockaddr_storage *ss);

struct tally {
    struct map *per_ip;
    size_t outsiders, sessions;
};

/* The listener's per-address key: the address bytes, v4-mapped as v4. */
static size_t
addr_key(const union smtp_peer *p, unsigned char key[16])
{
    if (p->sa.sa_family == AF_INET) {
        memcpy(key, &p->in4.sin_addr, 4);
        return 4;
    }
    memcpy(key, &p->in6.sin6_addr, 16);
    return 16;
}

static void
tally_one(const void *key, size_t klen, void *val, void *arg)
{
    struct tally *t = arg;
    struct smtp_session *s = val;
    unsigned char k[16];
    size_t kl = addr_key(&s->peer, k);
    uintptr_t n = (uintptr_t)map_get(t->per_ip, k, kl);
    (void)key;
    (void)klen;
    map_put(t->per_ip, k, kl, (void *)(n + 1));
    t->outsiders += s->outsider;
    t->sessions++;
}

static void
compare_count(const void *key, size_t klen, void *val, void *arg)
{
    struct tally *t = arg;
    CHECK(map_get(t->per_ip, key, klen) == val);
}

/* The server's admission counts are those of its live sessions, and within
 * the limits of its configuration. */
static void
check_admission(struct smtp_server *srv)
{
    const struct config *cfg = srv->cfg;
    struct tally t = { map_new(), 0, 0 };
    map_each(srv->loops[0]->sessions, tally_one, &t);
    CHECK(t.sessions <= cfg->max_sessions);
    CHECK(t.sessions == srv->n_sessions);
    CHECK(t.outsiders == srv->n_outsiders);
    CHECK(map_count(t.per_ip) == map_count(srv->per_ip));
    map_each(srv->per_ip, compare_count, &t);
    /* Outsiders never get the reserved share, nor more than their due
     * per address (relay_networks clients are not limited per address). */
    if (cfg->reserved_sessions < cfg->max_sessions)
        CHECK(srv->n_outsiders + cfg->reserved_sessions <= cfg->max_sessions);
    map_free(t.per_ip);
}

/* One more connection from one of the four addresses, admitted as the
 * listener admits it, then left idle: it gets the greeting, or one 421
 * line and is closed. */
static void
op_conn(struct client *c, struct script *sc)
{
    struct sockaddr_storage ss;
    socklen_t sl = peer_addr(sc_u8(sc) & 3, &ss);
    struct extra *x;
    int sv[2];
    if (c->n_extra == EXTRA_MAX)
        return;
    x = &c->extra[c->n_extra++];
    memset(x, 0, sizeof(*x));
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    x->fd = sv[1];
    smtp_server_admit(c->srv, sv[0], (struct sockaddr *)&ss, (int)sl, SMTP_ROLE_RELAY);
    check_admission(c->srv);
    run_until_idle(c);
    CHECK(x->first.len >= 4);
    if (memcmp(x->first.data, "220 ", 4) != 0) {
        char b[16];
        CHECK(x->first.len == sizeof(refusal) - 1 &&
              memcmp(x->first.data, refusal, x->first.len) == 0);
        CHECK(read(x->fd, b, sizeof(b)) == 0); /* closed */
    }
}

struct op {
    const char *name; /* for tests/fuzz/seeds/session.py */
    void (*fn)(struct client *c, struct script *sc);
};

static const struct op ops[] = {
    { "ehlo", op_ehlo },
    { "helo", op_helo_plain },
    { "mail", op_mail },
    { "rcpt", op_rcpt },
    { "data", op_data },
    { "bdat", op_bdat },
    { "rset", op_rset },
    { "quit", op_quit },
    { "starttls", op_starttls },
    { "auth", op_auth },
    { "junk", op_junk_line },
    { "misc", op_misc },
    { "long", op_long_line },
    { "sync", op_sync },
    { "flood", op_flood },
    { "eof", op_eof },
    { "raw", op_raw },
    { "conn", op_conn },
};

/* ---- one input ---- */

static socklen_t
peer_addr(uint8_t which, struct sockaddr_storage *ss)
{
    static const char *const v4[] = { "127.0.0.1", "192.0.2.7" };
    static const char *const v6[] = { "::1", "2001:db8::7" };
    memset(ss, 0, sizeof(*ss));
    if ((which & 2) == 0) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(40000);
        inet_pton(AF_INET, v4[which & 1], &s4->sin_addr);
        return sizeof(*s4);
    }
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(40000);
    inet_pton(AF_INET6, v6[which & 1], &s6->sin6_addr);
    return sizeof(*s6);
}

static void
client_start(struct client *c, uint8_t mode, uint8_t seed)
{
    static const size_t chunks[] = { 0, 7, 64, 512 };
    struct sockaddr_storage ss;
    socklen_t sl = peer_addr(mode & 3, &ss);
    unsigned role = (mode >> 2) & 3;
    int sv[2];
    memset(c, 0, sizeof(*c));
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &(int){ SERVER_SNDBUF }, sizeof(int));
    c->fd = sv[1];
    c->srv = W.srv[(mode >> 4) & 1];
    c->reckless = mode & 0x20;
    c->max_chunk = chunks[mode >> 6];
    c->rng = 0x9e3779b9u ^ seed;
    c->reading = true;
    c->m.on = !c->reckless;
    /* Failed AUTH is counted per client address across sessions: start each
     * input afresh. */
    auth_throttle_free(c->srv->throttle);
    c->srv->throttle = auth_throttle_new(THROTTLE_ENTRIES);
    /* The first connection of an input: always admitted. */
    smtp_server_admit(c->srv, sv[0], (struct sockaddr *)&ss, (int)sl,
        role == 3   ? SMTP_ROLE_SMTPS
        : role == 2 ? SMTP_ROLE_SUBMISSION
                    : SMTP_ROLE_RELAY);
    CHECK(smtp_server_sessions(c->srv) == 1);
    c->sess_id = c->srv->next_id;
    check_admission(c->srv);
    if (role == 3 && !client_handshake(c))
        return;
    if (c->m.on)
        expect_push(c, EX_GREETING, NULL);
    run_until_idle(c);
}

static void
client_end(struct client *c)
{
    run_until_idle(c);
    if (c->ssl != NULL)
        SSL_free(c->ssl);
    close(c->fd);
    c->fd = -1;
    c->eof = true;
    for (size_t i = 0; i < c->n_extra; i++) {
        close(c->extra[i].fd);
        c->extra[i].fd = -1;
        buf_fini(&c->extra[i].first);
    }
    run_until_idle(c); /* the sessions notice and end */
    expect_drop_all(c);
    free(c->exp);
    free(c->m.rcpt);
    buf_fini(&c->m.content);
    buf_fini(&c->out);
    buf_fini(&c->in);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    struct script sc = { data + 2, size >= 2 ? size - 2 : 0, 0 };
    struct client c;
    size_t fds;
    if (!ready) {
        world_init(&W);
        ready = true;
    }
    if (size < 2)
        return 0;
    fds = world_open_fds(&W);
    client_start(&c, data[0], data[1]);
    while (sc.n > 0 && !c.eof && !c.shut) {
        uint8_t op = sc_u8(&sc);
        if (c.m.on && c.m.auth_cont)
            auth_response(&c, op);
        else
            ops[op % TERN_ARRAY_LEN(ops)].fn(&c, &sc);
        if (rnd(&c) % 4 == 0)
            run_until_idle(&c);
    }
    client_end(&c);
    world_settle(&W);
    /* The sessions have ended and left nothing behind. */
    CHECK(smtp_server_sessions(c.srv) == 0);
    CHECK(smtp_server_unfreed(c.srv) == 0);
    CHECK(map_count(c.srv->per_ip) == 0 && c.srv->n_outsiders == 0);
    CHECK(world_dir_entries(W.corrupt_dir) == 0);
    world_clear_queue(&W);
    /* Some closes come a loop pass or a thread hop after the session is
     * freed (libevent finalizes a bufferevent from the loop): a bounded
     * wait, so only a descriptor that stays open fails. */
    for (int i = 0; i < FD_SETTLE_PASSES && world_open_fds(&W) != fds; i++) {
        event_base_loop(W.base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
    if (world_open_fds(&W) != fds)
        (void)world_list_fds(&W, stderr);
    CHECK(world_open_fds(&W) == fds);
    return 0;
}
