/*
 * libFuzzer target: the history journal's reader (src/history/history_read.c)
 * on hostile lines. A journal is written by ternd, but it lies in a
 * directory an attacker with the spool user's rights could write, and every
 * value in it came from the network once. The input is cut into lines at
 * LF; each goes through history_parse_line and, when accepted, through the
 * trace object writer and the query matcher. Invariants: an accepted line
 * has a queue id of 16 lowercase hex digits or "-", an event name of
 * letters and '_', and borrowed strings inside its tree; the trace object
 * is one line of JSON that the reader parses again and that names the same
 * id and event; matching never reads outside the strings.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "history/history.h"
#include "spool/spool.h"
#include "util/buf.h"
#include "util/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool
event_ok(const char *e)
{
    if (e[0] == '\0')
        return false;
    for (const char *p = e; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || *p == '_'))
            return false;
    }
    return true;
}

static void
check_line(const char *line, size_t len, const struct history_query *q)
{
    struct history_rec r;
    struct json *tree = NULL, *again = NULL;
    struct buf out = BUF_INIT;
    const struct json *v;
    memset(&r, 0, sizeof(r));
    if (history_parse_line(line, len, &r, &tree) < 0) {
        json_free(tree);
        return;
    }
    CHECK(strcmp(r.id, "-") == 0 || spool_qid_valid(r.id));
    CHECK(event_ok(r.event));
    history_rec_json(&r, &out);
    CHECK(out.len > 0 && out.data[out.len - 1] == '\n');
    CHECK(memchr(out.data, '\n', out.len) == out.data + out.len - 1);
    CHECK(json_parse(out.data, out.len - 1, &again, NULL) == 0);
    v = json_get(again, "event");
    CHECK(v != NULL && json_str(v) != NULL && strcmp(json_str(v), r.event) == 0);
    v = json_get(again, "id");
    CHECK(v != NULL && json_str(v) != NULL && strcmp(json_str(v), r.id) == 0);
    (void)history_query_match(q, &r);
    if (r.recipient != NULL && r.relay != NULL)
        (void)history_addr_eq(r.recipient, r.relay);
    json_free(again);
    json_free(tree);
    buf_fini(&out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct history_query q;
    const char *p = (const char *)data, *end = p + size;
    char qtext[64];
    size_t qn = 0;
    bool have_q;
    /* The query: the first line's first bytes (a qid, an address, a
     * Message-ID, or junk that history_query_init may refuse). */
    while (qn < sizeof(qtext) - 1 && qn < size && data[qn] != '\n' && data[qn] != '\0') {
        qtext[qn] = (char)data[qn];
        qn++;
    }
    qtext[qn] = '\0';
    have_q = history_query_init(&q, qtext) == 0;
    if (!have_q && history_query_init(&q, "x@example.org") != 0)
        abort();
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        if (n <= HISTORY_LINE_MAX)
            check_line(p, n, &q);
        p += n + (nl != NULL);
    }
    history_query_fini(&q);
    return 0;
}
