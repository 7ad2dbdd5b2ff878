/*
 * The text form of the queue list, shared by `ternctl queue list`,
 * `tern-sendmail -bp` and `mailq`: rows collected from LIST lines (from
 * the daemon, or from the spool read directly when no daemon runs) and
 * printed as one line per message starting with its id.
 */
#include "client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spool/spool.h"
#include "util/util.h"

#define SENDER_COL_MAX 40
#define RCPTS_COL_MAX  60

int
ctl_list_collect(const char *line, size_t len, void *arg)
{
    struct ctl_list *st = arg;
    struct json *obj = NULL;
    struct buf err = BUF_INIT;
    struct ctl_row row;
    if (json_parse(line, len, &obj, &err) < 0 ||
        ctl_row_from_json(obj, tern_now_ms() / 1000, &row, &err) < 0) {
        fprintf(stderr, "%s: skipping a LIST line: %s\n", st->prog, err.data);
        st->bad = true;
    } else {
        if (st->n == st->cap) {
            st->cap = st->cap ? st->cap * 2 : 64;
            st->rows = xrealloc(st->rows, st->cap * sizeof(*st->rows));
        }
        st->rows[st->n++] = row;
    }
    json_free(obj);
    buf_fini(&err);
    return 0;
}

static int
col_width(size_t w, size_t min, size_t max)
{
    return (int)(w < min ? min : (w > max ? max : w));
}

void
ctl_list_print(const struct ctl_list *st, FILE *out)
{
    size_t ws = 0, wr = 0;
    /* Every line starts with its queue id (CONTRACT.md): no header line, and
     * an empty queue prints nothing. */
    if (st->n == 0)
        return;
    for (size_t i = 0; i < st->n; i++) {
        size_t a = strlen(st->rows[i].sender), b = strlen(st->rows[i].rcpts);
        ws = a > ws ? a : ws;
        wr = b > wr ? b : wr;
    }
    int s = col_width(ws, 6, SENDER_COL_MAX), r = col_width(wr, 10, RCPTS_COL_MAX);
    for (size_t i = 0; i < st->n; i++) {
        const struct ctl_row *row = &st->rows[i];
        fprintf(out, "%-16s  %-7s  %-10s  %-4s  %-*s  %-*s  %5u  %s\n", row->id, row->age,
            row->next, row->held ? "yes" : "no", s, row->sender, r, row->rcpts, row->attempts,
            row->last_error);
    }
}

void
ctl_list_fini(struct ctl_list *st)
{
    for (size_t i = 0; i < st->n; i++)
        ctl_row_fini(&st->rows[i]);
    FREE_NULL(&st->rows);
    st->n = st->cap = 0;
}

struct offline_list {
    ctl_line_fn fn;
    void *arg;
    bool failed;
};

static void
offline_one(struct spool_env *env, void *arg)
{
    struct offline_list *o = arg;
    struct buf line = BUF_INIT;
    spool_env_list_json(env, NULL, NULL, &line);
    if (!o->failed && o->fn(line.data, line.len - 1, o->arg) < 0)
        o->failed = true;
    buf_fini(&line);
    spool_env_free(env);
}

enum ctl_rc
ctl_list_fetch(const char *spool_dir, ctl_line_fn fn, void *arg, bool *offline, struct buf *msg)
{
    struct offline_list o = { fn, arg, false };
    enum ctl_rc rc = ctl_call(spool_dir, "LIST", CTL_TIMEOUT_MS, fn, arg, msg);
    *offline = false;
    if (rc != CTL_NODAEMON)
        return rc;
    /* ternd is not running: read its spool directly (read-only; the spool's
     * records are checked, so a spool being written is read safely too). */
    *offline = true;
    buf_reset(msg);
    if (spool_scan(spool_dir, offline_one, &o, msg) < 0)
        return CTL_FAIL;
    if (o.failed) {
        buf_append_str(msg, "bad queue list line");
        return CTL_FAIL;
    }
    return CTL_OK;
}
