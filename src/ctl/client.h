/*
 * ternctl's side of the control socket (protocol in ctl.h) and the small
 * pure helpers behind its commands: queue id syntax, age formatting, queue
 * and summary rows built from the daemon's JSON lines, and the update of an
 * auth_users_file. One request per connection; all socket I/O has timeouts.
 */
#ifndef TERN_CTL_CLIENT_H
#define TERN_CTL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util/json.h"
#include "util/buf.h"

#define CTL_REPLY_LINE_MAX (1024u * 1024) /* one reply line, without "\n" */
#define CTL_TIMEOUT_MS     30000
#define CTL_ERROR_SHOW_MAX 60 /* characters of a last error shown in tables */
#define CTL_AUTH_FILE_MAX  (16u * 1024 * 1024)
#define CTL_USER_MAX       256
#define CTL_ID_LINE_MAX    256                 /* a longer line of ids on stdin is not an id */
#define CTL_STDIN_IDS_MAX  (16u * 1024 * 1024) /* ids read from stdin, at most */
#define CTL_BATCH_IDS      48                  /* ids per request (fits CTL_LINE_MAX) */
#define CTL_SELECT_MAX     320                 /* bytes of a --sender or --recipient-domain value */

enum ctl_rc {
    CTL_OK,       /* final line "OK" */
    CTL_ERR,      /* final line "ERR text": msg holds text */
    CTL_NODAEMON, /* no socket or connection refused: msg holds the path */
    CTL_FAIL,     /* I/O error, timeout, protocol violation: msg says which */
};

/* Called for each data line (borrowed until return; no "\n"). Return -1 to
 * abort the exchange (ctl_call then returns CTL_FAIL). */
typedef int (*ctl_line_fn)(const char *line, size_t len, void *arg);

/* Connect to SPOOL_DIR/ctl.sock. 0 with *fd set, or -1 with rc CTL_NODAEMON
 * or CTL_FAIL and a message in msg. */
int ctl_connect(const char *spool_dir, int *fd, enum ctl_rc *rc, struct buf *msg);
/* Send request (one line, no "\n", < CTL_LINE_MAX) on fd and read the reply,
 * handing data lines to fn (may be NULL). Each wait is bounded by timeout_ms
 * (fd is made non-blocking). Does not close fd. */
enum ctl_rc ctl_exchange(
    int fd, const char *request, int timeout_ms, ctl_line_fn fn, void *arg, struct buf *msg);
/* ctl_connect + ctl_exchange + close. */
enum ctl_rc ctl_call(const char *spool_dir, const char *request, int timeout_ms, ctl_line_fn fn,
    void *arg, struct buf *msg);

/* Age as "45s", "3m12s", "2h05m", "4d03h" ("0s" for negative). */
void ctl_fmt_age(int64_t secs, char *out, size_t cap);
/* One line of ids read from stdin (line[len], without its end): leading
 * and trailing whitespace trimmed. 1 with the id in out, 0 for a blank
 * line, -1 when it is not a queue id. */
int ctl_id_line(const char *line, size_t len, char out[17]);
/* The request acting on a selection: "VERB ALL" and the selectors given
 * (sender NULL: any, "" or "<>": the null sender; rdomain NULL: any;
 * older_s 0: any). -1 with a reason in err when a value cannot be sent
 * (spaces, control characters, longer than CTL_SELECT_MAX, a bad domain). */
int ctl_select_request(const char *verb, const char *sender, const char *rdomain, int64_t older_s,
    struct buf *out, struct buf *err);
/* When a LIST object's next attempt comes, for a table: "in 3m12s", "now"
 * (due or past), "held", or "-" (none, or an older daemon). */
void ctl_fmt_next(const struct json *obj, int64_t now_s, char *out, size_t cap);

/* One message of `queue list` in text form: fields already made safe. */
struct ctl_row {
    char id[17];
    char age[16];
    char next[24]; /* ctl_fmt_next */
    bool held;
    char *sender;      /* owned: "<>" for the null sender */
    char *rcpts;       /* owned: "a@b (deferred), c@d (queued)" */
    uint32_t attempts; /* max over the recipients */
    char *last_error;  /* owned: shortened, "-" when none */
};
/* Fill row from one LIST object; now_s is the current Unix time. -1 with a
 * reason in err when the object does not follow the LIST schema. */
int ctl_row_from_json(const struct json *obj, int64_t now_s, struct ctl_row *row, struct buf *err);
void ctl_row_fini(struct ctl_row *row);

/* `queue list` in text form (ternctl, tern-sendmail -bp, mailq). */
struct ctl_list {
    const char *prog; /* names the program in messages */
    struct ctl_row *rows;
    size_t n, cap;
    bool bad; /* a line could not be understood (reported on stderr) */
};
/* A ctl_line_fn: one LIST line into the rows of arg (a struct ctl_list). */
int ctl_list_collect(const char *line, size_t len, void *arg);
/* One line per message, starting with its id; nothing for an empty queue. */
void ctl_list_print(const struct ctl_list *l, FILE *out);
void ctl_list_fini(struct ctl_list *l);
/* The LIST lines of the running daemon, or, when none runs, of the spool
 * at spool_dir read directly (*offline set). */
enum ctl_rc ctl_list_fetch(
    const char *spool_dir, ctl_line_fn fn, void *arg, bool *offline, struct buf *msg);

/* One SUMMARY object as a text line (no "\n"): destination ("(held)"
 * for the held line), messages, recipients, oldest age, messages per age
 * bucket ("-" when the daemon sent none), last error; width of the
 * destination column. ctl_summary_header is the matching header. */
int ctl_summary_line(
    const struct json *obj, int64_t now_s, int dest_width, struct buf *out, struct buf *err);
void ctl_summary_header(int dest_width, struct buf *out);

/* May name be an AUTH user (1..CTL_USER_MAX bytes, no ':', whitespace or
 * control characters)? */
bool ctl_user_valid(const char *name);
/* Rewrite an auth_users_file: copy old[len] with the line of user replaced
 * by "user:hash" (later duplicates dropped), or that line appended; other
 * lines and comments kept. *replaced says which. 0, or -1 when the result
 * would exceed CTL_AUTH_FILE_MAX. */
int ctl_passwd_update(const char *old, size_t len, const char *user, const char *hash,
    struct buf *out, bool *replaced);

#endif
