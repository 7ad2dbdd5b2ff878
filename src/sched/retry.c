/*
 * Retry and give-up policy (see retry.h): exponential back-off with a cap
 * and jitter, queue lifetime expiry, the delay warning's time and reply
 * classification. Pure functions of their arguments; all arithmetic is
 * overflow-checked or saturating.
 */
#include "sched/retry.h"

#include <float.h>

#define RETRY_MIN_DELAY_MS 1000
#define RETRY_JITTER_LOW   0.8
#define RETRY_JITTER_SPAN  0.4
#define RETRY_JITTER_HIGH  1.2

/* base * 2^(attempts-1), saturating at cap (cap >= base > 0). */
static int64_t
retry_backoff(int64_t base, int64_t cap, uint32_t attempts)
{
    uint32_t shift = attempts > 0 ? attempts - 1 : 0;
    if (shift >= 62 || base > (cap >> shift))
        return cap;
    return base << shift;
}

int64_t
retry_delay_ms(const struct config *cfg, uint32_t attempts, double rnd)
{
    int64_t base = cfg->retry_initial_ms > 0 ? cfg->retry_initial_ms : RETRY_MIN_DELAY_MS;
    int64_t cap = cfg->retry_max_ms > 0 ? cfg->retry_max_ms : base;
    if (base > cap)
        base = cap; /* a cap below the first delay wins */

    /* Keep rnd in [0, 1) whatever the random source hands us (NaN included). */
    if (!(rnd >= 0.0))
        rnd = 0.0;
    if (rnd >= 1.0)
        rnd = 1.0 - DBL_EPSILON / 2; /* the largest double below 1 */

    double d =
        (double)retry_backoff(base, cap, attempts) * (RETRY_JITTER_LOW + RETRY_JITTER_SPAN * rnd);
    double hi = (double)cap * RETRY_JITTER_HIGH;
    if (d > hi)
        d = hi;
    /* 2^63 is exactly representable; anything at or above it saturates. */
    if (d >= 0x1p63)
        return INT64_MAX;
    int64_t ms = (int64_t)d;
    return ms < RETRY_MIN_DELAY_MS ? RETRY_MIN_DELAY_MS : ms;
}

bool
retry_expired(const struct config *cfg, int64_t arrival_ms, int64_t now_ms)
{
    int64_t deadline;
    if (__builtin_add_overflow(arrival_ms, cfg->max_queue_lifetime_ms, &deadline))
        return cfg->max_queue_lifetime_ms < 0; /* overflowed down: long past; up: never */
    return deadline <= now_ms;
}

bool
retry_warn_due(const struct config *cfg, int64_t arrival_ms, int64_t now_ms)
{
    int64_t due;
    if (cfg->delay_warning_time_ms <= 0)
        return false; /* off */
    if (__builtin_add_overflow(arrival_ms, cfg->delay_warning_time_ms, &due))
        return false; /* a time so far ahead never comes */
    return due <= now_ms;
}
