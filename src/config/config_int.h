/*
 * Private to src/config: the settings table and the typed value parsers
 * (settings.c), used by the loader (config.c). Errors go through one
 * collector that prefixes each line with where the value came from.
 */
#ifndef TERN_CONFIG_INT_H
#define TERN_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "util/buf.h"

/* Longest line of a configuration file or value of an -o override. */
#define CONFIG_LINE_MAX 4096
/* Errors printed before the rest are only counted. */
#define CONFIG_ERRORS_MAX 100

enum cfg_type {
    CFG_STRING,        /* char *; NULL when empty */
    CFG_PATH,          /* char *; NULL when empty */
    CFG_HOSTPORT,      /* struct hostport; host "" when empty */
    CFG_HOSTPORT_LIST, /* struct hostport *, size_t count */
    CFG_CIDR_LIST,     /* struct cidr *, size_t count */
    CFG_DOMAIN_LIST,   /* char **, size_t count; lowercased, no trailing dot, ".d" = subdomains */
    CFG_SIZE,          /* uint64_t bytes */
    CFG_DURATION,      /* int64_t milliseconds */
    CFG_U32,           /* uint32_t within [min, max] */
    CFG_PORT,          /* uint16_t 1..65535 */
    CFG_ENUM,          /* int: index into names */
    CFG_DKIM,          /* struct dkim_entry *, size_t count */
    CFG_ROUTES,        /* struct route *, size_t count: MATCH=HOP[,HOP...] words */
};

/* Setting flags. */
#define CFG_F_NONEMPTY 0x01u /* an empty value is an error */
#define CFG_F_DOMAIN   0x02u /* CFG_STRING holding a domain name */
#define CFG_F_NUMERIC  0x04u /* hostports must be IP addresses */
#define CFG_F_ZERO_OK  0x08u /* a duration of 0 is allowed */
#define CFG_F_FILE     0x10u /* a file checked for readability by check_files */
#define CFG_F_SECRET   0x20u /* ... that must not be readable by group or others */
#define CFG_F_LOGDEST  0x40u /* CFG_STRING: "stderr", "syslog" or an absolute path */
#define CFG_F_MILTERS  0x80u /* CFG_STRING: a list of milter addresses */

struct cfg_setting {
    const char *name;
    enum cfg_type type;
    const char *def; /* default text, parsed like a user value; NULL: computed */
    size_t off;      /* offsetof(struct config, field) */
    size_t off_n;    /* offsetof the count, for list types */
    unsigned flags;
    uint32_t min, max;        /* CFG_U32 */
    uint16_t default_port;    /* hostport types; 0: a port is required */
    const char *const *names; /* CFG_ENUM: NULL-terminated; value = index */
    const char *desc;         /* one line for the reference */
};

extern const struct cfg_setting config_settings[];
extern const size_t config_n_settings;

/* Error collector: each message becomes "WHERE: message\n" in out. */
struct cfg_errs {
    struct buf *out;
    const char *where; /* borrowed; set by the caller before each parse */
    unsigned n;        /* errors seen, printed or not */
};

void cfg_error(struct cfg_errs *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Printable, shortened form of untrusted text for messages; returns tmp. */
const char *cfg_shown(const char *s, char *tmp, size_t cap);

/* The setting called name, or NULL. */
const struct cfg_setting *cfg_find(const char *name);
/* Nearest setting name by edit distance when it is close enough, or NULL. */
const char *cfg_suggest(const char *name);
/* Parse value (already unquoted) for s and store it in c, replacing the old
 * value; on error leave c as it was, report every problem and return -1. */
int cfg_set(struct config *c, const struct cfg_setting *s, const char *value, struct cfg_errs *e);
/* Free what s owns in c and reset it to empty. */
void cfg_clear(struct config *c, const struct cfg_setting *s);
/* Check a file named by a setting (check_files); reports and returns -1. */
int cfg_check_file(const char *what, const char *path, bool secret, struct cfg_errs *e);

#endif
