/*
 * Unit tests of the retry policy (src/sched/retry.c): back-off growth, cap,
 * jitter bounds, overflow safety, expiry and delay warning edges and reply
 * classification.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "delivery/delivery.h"
#include "sched/retry.h"
#include "util/util.h"

#define SEC  1000LL
#define MIN  (60 * SEC)
#define HOUR (60 * MIN)
#define DAY  (24 * HOUR)

static struct config
make_cfg(int64_t initial, int64_t max, int64_t lifetime)
{
    struct config c;
    memset(&c, 0, sizeof(c));
    c.retry_initial_ms = initial;
    c.retry_max_ms = max;
    c.max_queue_lifetime_ms = lifetime;
    return c;
}

struct delay_case {
    const char *name;
    int64_t initial, max;
    uint32_t attempts;
    double rnd;
    int64_t want;
};

static const struct delay_case delay_cases[] = {
    /* rnd = 0.5 gives the factor 1.0: the pure exponential. */
    { "first retry", MIN, HOUR, 1, 0.5, MIN },
    { "attempts 0 treated as 1", MIN, HOUR, 0, 0.5, MIN },
    { "doubles", MIN, HOUR, 2, 0.5, 2 * MIN },
    { "doubles again", MIN, HOUR, 3, 0.5, 4 * MIN },
    { "32 minutes", MIN, HOUR, 6, 0.5, 32 * MIN },
    { "capped at max", MIN, HOUR, 7, 0.5, HOUR },
    { "stays capped", MIN, HOUR, 20, 0.5, HOUR },
    { "jitter low rnd=0", MIN, HOUR, 1, 0.0, 48 * SEC },
    { "jitter low on cap", MIN, HOUR, 10, 0.0, 48 * MIN },
    { "jitter high on cap", MIN, HOUR, 10, 0.999999, 4319998 },
    { "rnd 1.0 clamped below 1", MIN, HOUR, 10, 1.0, 72 * MIN },
    { "rnd > 1 clamped", MIN, HOUR, 1, 7.5, 72 * SEC },
    { "rnd negative clamped to 0", MIN, HOUR, 1, -3.0, 48 * SEC },
    { "huge attempts", MIN, HOUR, UINT32_MAX, 0.5, HOUR },
    { "shift 62", MIN, HOUR, 63, 0.5, HOUR },
    { "shift 61", 1, INT64_MAX / 2, 62, 0.5, INT64_C(1) << 61 },
    { "huge cap saturates", INT64_MAX / 4, INT64_MAX, 40, 0.999999, INT64_MAX },
    { "never below 1 second", 100, 200, 1, 0.0, SEC },
    { "cap below initial", HOUR, MIN, 1, 0.5, MIN },
    { "initial unset uses 1s", 0, HOUR, 3, 0.5, 4 * SEC },
    { "max unset uses initial", MIN, 0, 9, 0.5, MIN },
};

static void
test_delay_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(delay_cases); i++) {
        const struct delay_case *c = &delay_cases[i];
        struct config cfg = make_cfg(c->initial, c->max, DAY);
        int64_t got = retry_delay_ms(&cfg, c->attempts, c->rnd);
        if (got != c->want)
            fail_msg("%s: got %lld want %lld", c->name, (long long)got, (long long)c->want);
    }
}

/* For every attempt count and a sweep of rnd the delay stays within
 * [0.8 * backoff, 1.2 * backoff) and never exceeds 1.2 * max. */
static void
test_delay_bounds(void **state)
{
    (void)state;
    struct config cfg = make_cfg(MIN, HOUR, DAY);
    int64_t prev_low = 0;
    for (uint32_t a = 1; a <= 70; a++) {
        int64_t backoff = a <= 7 ? MIN << (a - 1) : HOUR;
        if (backoff > HOUR)
            backoff = HOUR;
        int64_t low = retry_delay_ms(&cfg, a, 0.0);
        assert_int_equal(low, backoff * 8 / 10);
        assert_true(low >= prev_low); /* monotonic in attempts */
        prev_low = low;
        for (int k = 0; k <= 1000; k++) {
            double rnd = k / 1000.0;
            if (rnd >= 1.0)
                rnd = 0.9999999;
            int64_t d = retry_delay_ms(&cfg, a, rnd);
            assert_true(d >= low);
            assert_true(d < backoff * 12 / 10);
            assert_true(d <= HOUR * 12 / 10);
        }
    }
}

struct expiry_case {
    const char *name;
    int64_t lifetime, arrival, now;
    bool want;
};

static const struct expiry_case expiry_cases[] = {
    { "fresh", 5 * DAY, 1000 * DAY, 1000 * DAY, false },
    { "one ms before", 5 * DAY, 1000 * DAY, 1005 * DAY - 1, false },
    { "exactly at lifetime", 5 * DAY, 1000 * DAY, 1005 * DAY, true },
    { "after lifetime", 5 * DAY, 1000 * DAY, 1006 * DAY, true },
    { "clock went back", 5 * DAY, 1000 * DAY, 900 * DAY, false },
    { "arrival far future no overflow", 5 * DAY, INT64_MAX - 10, 1000 * DAY, false },
    { "arrival far future, now max", 5 * DAY, INT64_MAX - 10, INT64_MAX, false },
    { "arrival 0", 5 * DAY, 0, 5 * DAY, true },
    { "lifetime max never expires", INT64_MAX, 1000 * DAY, INT64_MAX, false },
    { "negative overflow expires", -10, INT64_MIN + 5, 0, true },
};

static void
test_expiry_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(expiry_cases); i++) {
        const struct expiry_case *c = &expiry_cases[i];
        struct config cfg = make_cfg(MIN, HOUR, c->lifetime);
        bool got = retry_expired(&cfg, c->arrival, c->now);
        if (got != c->want)
            fail_msg("%s: got %d want %d", c->name, got, c->want);
    }
}

struct warn_case {
    const char *name;
    int64_t warn, arrival, now;
    bool want;
};

static const struct warn_case warn_cases[] = {
    { "fresh", 4 * HOUR, 1000 * DAY, 1000 * DAY, false },
    { "one ms before", 4 * HOUR, 1000 * DAY, 1000 * DAY + 4 * HOUR - 1, false },
    { "exactly at the time", 4 * HOUR, 1000 * DAY, 1000 * DAY + 4 * HOUR, true },
    { "later", 4 * HOUR, 1000 * DAY, 1001 * DAY, true },
    { "off", 0, 1000 * DAY, 2000 * DAY, false },
    { "negative is off", -1, 1000 * DAY, 2000 * DAY, false },
    { "clock went back", 4 * HOUR, 1000 * DAY, 900 * DAY, false },
    { "arrival far future no overflow", 4 * HOUR, INT64_MAX - 10, INT64_MAX, false },
    { "time max never comes", INT64_MAX, 1000 * DAY, INT64_MAX, false },
    { "arrival 0", SEC, 0, SEC, true },
};

static void
test_warn_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(warn_cases); i++) {
        const struct warn_case *c = &warn_cases[i];
        struct config cfg = make_cfg(MIN, HOUR, 5 * DAY);
        bool got;
        cfg.delay_warning_time_ms = c->warn;
        got = retry_warn_due(&cfg, c->arrival, c->now);
        if (got != c->want)
            fail_msg("%s: got %d want %d", c->name, got, c->want);
    }
}

struct class_case {
    int code;
    enum deliv_class want;
};

static const struct class_case class_cases[] = {
    { 250, DELIV_OK },
    { 200, DELIV_OK },
    { 299, DELIV_OK },
    { 251, DELIV_OK },
    { 451, DELIV_TEMP },
    { 421, DELIV_TEMP },
    { 452, DELIV_TEMP },
    { 550, DELIV_PERM },
    { 554, DELIV_PERM },
    { 500, DELIV_PERM },
    { 599, DELIV_PERM },
    { 0, DELIV_TEMP },
    { 999, DELIV_TEMP },
    { 600, DELIV_TEMP },
    { 354, DELIV_TEMP },
    { 199, DELIV_TEMP },
    { -550, DELIV_TEMP },
    { 5, DELIV_TEMP },
};

static void
test_classify_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < TERN_ARRAY_LEN(class_cases); i++) {
        enum deliv_class got = deliv_classify(class_cases[i].code);
        if (got != class_cases[i].want)
            fail_msg(
                "code %d: got %d want %d", class_cases[i].code, (int)got, (int)class_cases[i].want);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delay_table),
        cmocka_unit_test(test_delay_bounds),
        cmocka_unit_test(test_expiry_table),
        cmocka_unit_test(test_warn_table),
        cmocka_unit_test(test_classify_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
