/*
 * SPF (RFC 7208): check_host() over DNS answers. The core (struct spf_check)
 * is pure: it evaluates with the answers it holds and says which one it needs
 * next; spf_eval_start() drives it from the event loop through a resolver
 * function table (the dns module in the daemon, a fake zone in tests), never
 * blocking. The evaluation is replayed from the start after each answer, so
 * the limits (10 DNS-querying terms, 2 void lookups, 10 MX/PTR names) are
 * counted exactly as in a straight-line run.
 */
#ifndef TERN_SPF_H
#define TERN_SPF_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dns/dns.h"

struct event_base;

enum spf_result {
    SPF_NONE,
    SPF_NEUTRAL,
    SPF_PASS,
    SPF_FAIL,
    SPF_SOFTFAIL,
    SPF_TEMPERROR,
    SPF_PERMERROR,
};

/* "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror". */
const char *spf_result_name(enum spf_result r);

#define SPF_TERMS_LIMIT 10   /* DNS-querying terms (RFC 7208 §4.6.4) */
#define SPF_VOID_LIMIT  2    /* void lookups (§4.6.4) */
#define SPF_NAMES_LIMIT 10   /* MX names / PTR names looked at (§4.6.4) */
#define SPF_MEMO_MAX    512  /* answers one check may hold */
#define SPF_EXP_MAX     1024 /* bytes of an explanation */

/* The inputs of check_host(). Strings are borrowed for spf_check_new /
 * spf_eval_start only (copied). */
struct spf_request {
    struct sockaddr_storage ip; /* AF_INET or AF_INET6 (v4-mapped is taken as v4) */
    const char *sender;         /* MAIL FROM address; "" or NULL: postmaster@helo */
    const char *helo;           /* HELO/EHLO name; may be NULL */
    const char *domain;         /* NULL: the sender's domain (or helo when no sender) */
    const char *receiver;       /* %{r}; NULL: "unknown" */
    int64_t now_s;              /* %{t}; 0: the wall clock */
};

struct spf_outcome {
    enum spf_result result;
    /* SPF_FAIL: the explanation (exp= of the deciding record, or a default
     * text when there is none or it cannot be used); else "". */
    char explanation[SPF_EXP_MAX];
    bool exp_default; /* the explanation is the default text */
    char reason[256]; /* what decided: the matching term or the error */
};

/* ---- the pure core ---- */

struct spf_check;

/* NULL when req->ip has another family. The caller owns the check. */
struct spf_check *spf_check_new(const struct spf_request *req);
void spf_check_free(struct spf_check *c); /* NULL is fine */
/* Evaluate with the answers given so far: true when finished (see
 * spf_check_outcome); false when an answer is missing (spf_check_question). */
bool spf_check_step(struct spf_check *c);
/* The missing answer: *name borrowed until the next step/answer call. */
void spf_check_question(const struct spf_check *c, const char **name, int *type);
/* Give the answer to the current question (r copied). */
void spf_check_answer(struct spf_check *c, const struct dns_rr_result *r);
const struct spf_outcome *spf_check_outcome(const struct spf_check *c);

/* ---- the asynchronous driver ---- */

typedef void (*spf_answer_cb)(void *arg, const struct dns_rr_result *r);

/* A resolver: lookup() answers records of type at name by calling cb exactly
 * once, now (inside lookup) or later from the loop, unless cancel() is
 * called first; it returns a handle for cancel (NULL when cb already ran). */
struct spf_resolver_ops {
    void *(*lookup)(void *ctx, const char *name, int type, spf_answer_cb cb, void *arg);
    void (*cancel)(void *ctx, void *handle);
};

struct spf_resolver {
    const struct spf_resolver_ops *ops;
    void *ctx;
};

/* The dns module as a resolver (d borrowed; must outlive every evaluation). */
struct spf_resolver spf_resolver_dns(struct dns *d);

struct spf_eval;
typedef void (*spf_done_cb)(void *arg, const struct spf_outcome *o);

/* Start check_host(); cb runs exactly once, later from base's loop (never
 * inside this call), with the outcome borrowed for the call, unless
 * spf_eval_cancel() comes first. res is copied; its ctx must outlive the
 * evaluation. NULL when the request is unusable (bad address family). */
struct spf_eval *spf_eval_start(struct event_base *base, const struct spf_resolver *res,
    const struct spf_request *req, spf_done_cb cb, void *arg);
/* Stop an evaluation whose callback has not run yet. NULL is fine. */
void spf_eval_cancel(struct spf_eval *e);

#endif
