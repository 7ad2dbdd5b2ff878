/*
 * Retry and give-up policy: pure functions of the configuration, the
 * attempt count, the clock and a random number, so tests need no timers.
 */
#ifndef TERN_SCHED_RETRY_H
#define TERN_SCHED_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"

/* Delay before attempt number attempts+1 after attempts failures (>= 1):
 * retry_initial * 2^(attempts-1), capped at retry_max, then jittered by a
 * factor in [0.8, 1.2) chosen by rnd in [0, 1) (and still capped at
 * retry_max * 1.2, never below 1 second). */
int64_t retry_delay_ms(const struct config *cfg, uint32_t attempts, double rnd);

/* Has a message that arrived at arrival_ms expired at now_ms
 * (arrival + max_queue_lifetime <= now)? */
bool retry_expired(const struct config *cfg, int64_t arrival_ms, int64_t now_ms);

/* Is a delay warning due for a recipient of a message that arrived at
 * arrival_ms and is still pending at now_ms (delay_warning_time set and
 * arrival + delay_warning_time <= now)? */
bool retry_warn_due(const struct config *cfg, int64_t arrival_ms, int64_t now_ms);

#endif
