/*
 * Shared helper of the libFuzzer targets: CHECK aborts with the failed
 * condition so libFuzzer records the input as a crash.
 */
#ifndef TERN_FUZZ_CHECK_H
#define TERN_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
