/*
 * The sessions' deadlines: a timing wheel per receive loop, one list per
 * second and one timer ticking each second, instead of a libevent timer
 * per session. A timer is 128 bytes and a heap operation at each command;
 * a session here pays two pointers and a list move. A deadline falls up to
 * a second late, which no SMTP time limit minds (RFC 5321 §4.5.3.2 counts
 * them in minutes).
 */
#include <event2/event.h>

#include "smtp_int.h"
#include "util/util.h"

/* The second a deadline belongs to: the first whole second at or after it,
 * so that every session in a processed slot is due (but for those a whole
 * turn of the wheel later). */
static int64_t
slot_second(int64_t deadline_ms)
{
    return deadline_ms <= 0 ? 0 : (deadline_ms + 999) / 1000;
}

static void
link_into(struct smtp_session **head, struct smtp_session *s)
{
    s->dl_next = *head;
    if (*head != NULL)
        (*head)->dl_pprev = &s->dl_next;
    *head = s;
    s->dl_pprev = head;
}

void
smtp_wheel_unset(struct smtp_session *s)
{
    if (s->dl_pprev == NULL)
        return;
    *s->dl_pprev = s->dl_next;
    if (s->dl_next != NULL)
        s->dl_next->dl_pprev = s->dl_pprev;
    s->dl_next = NULL;
    s->dl_pprev = NULL;
}

void
smtp_wheel_set(struct smtp_session *s)
{
    struct smtp_wheel *w = &s->lp->wheel;
    int64_t sec = slot_second(s->deadline_ms);
    smtp_wheel_unset(s);
    /* A second already processed is the next one to come. */
    if (sec <= w->done_s)
        sec = w->done_s + 1;
    link_into(&w->slot[sec % SMTP_WHEEL_SLOTS], s);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_loop *lp = arg;
    struct smtp_wheel *w = &lp->wheel;
    int64_t now_ms = tern_mono_ms(), now_s = now_ms / 1000;
    struct smtp_session *due = NULL, *later = NULL, *s;
    /* A loop that stalled longer than a turn looks at each slot once. */
    if (now_s - w->done_s > SMTP_WHEEL_SLOTS)
        w->done_s = now_s - SMTP_WHEEL_SLOTS;
    while (w->done_s < now_s) {
        struct smtp_session **slot = &w->slot[++w->done_s % SMTP_WHEEL_SLOTS];
        while ((s = *slot) != NULL) {
            smtp_wheel_unset(s);
            link_into(s->deadline_ms <= now_ms ? &due : &later, s);
        }
    }
    /* A turn or more away: back where they belong. */
    while ((s = later) != NULL)
        smtp_wheel_set(s);
    /* Each handler may set its own deadline again or end its session
     * (either takes it off this list), never free another. */
    while ((s = due) != NULL) {
        smtp_wheel_unset(s);
        smtp_session_deadline_fell(s);
    }
}

bool
smtp_wheel_init(struct smtp_loop *lp)
{
    struct timeval tv = { 1, 0 };
    lp->wheel.done_s = tern_mono_ms() / 1000;
    lp->wheel.tick = event_new(lp->base, -1, EV_PERSIST, tick_cb, lp);
    return lp->wheel.tick != NULL && event_add(lp->wheel.tick, &tv) == 0;
}

void
smtp_wheel_fini(struct smtp_loop *lp)
{
    if (lp->wheel.tick != NULL)
        event_free(lp->wheel.tick);
    lp->wheel.tick = NULL;
}
