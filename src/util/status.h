/*
 * One reply shape for the whole program: SMTP code, RFC 3463 enhanced code
 * and text. Replies, log lines and DSNs are all built from it.
 */
#ifndef TERN_STATUS_H
#define TERN_STATUS_H

#include <stdio.h>

#define STATUS_TEXT_MAX 400

struct tern_status {
    int code;      /* 250, 451, 550 ... */
    char esc[12];  /* "5.1.1"; "" when none */
    char text[STATUS_TEXT_MAX];
};

#define STATUS_SET(st, c, e, ...)                                                              \
    do {                                                                                       \
        (st)->code = (c);                                                                      \
        snprintf((st)->esc, sizeof((st)->esc), "%s", (e));                                    \
        snprintf((st)->text, sizeof((st)->text), __VA_ARGS__);                                \
    } while (0)

#endif
