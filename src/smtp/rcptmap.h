/*
 * relay_recipients: the addresses a backup MX or inbound gateway accepts
 * for relay_domains, so that it refuses an unknown one at RCPT instead of
 * accepting it and bouncing later (backscatter to a forged sender). A map
 * is parsed once and never changes; a list is the file behind it, looked at
 * again (stat) at most once a second when asked and read again when it
 * changed, thread safe. Lookups compare the domain and, as Postfix does by
 * default, the local part without regard to ASCII case (RFC 5321 §2.4 lets
 * a host treat local parts as case-sensitive; no real one does for routing).
 */
#ifndef TERN_SMTP_RCPTMAP_H
#define TERN_SMTP_RCPTMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "util/buf.h"

#define RCPTMAP_LINE_MAX    1000                 /* bytes of a line, line end excluded */
#define RCPTMAP_ENTRIES_MAX 1000000              /* addresses and domains of one file */
#define RCPTMAP_FILE_MAX    (128u * 1024 * 1024) /* bytes of one file */
#define RCPTMAP_RECHECK_MS  1000                 /* how often the file is looked at, at most */

/* ---- a parsed map ---- */

struct rcpt_map;

/* Parse a file's text: one entry a line, "local@domain" or "@domain" (every
 * address of the domain), optionally followed by white space and anything
 * (the value of a Postfix map, ignored); blank lines and lines starting
 * with '#' are skipped, leading and trailing white space too. NULL with a
 * message in err ("line N: ...") when a line is bad, too long, or there are
 * too many entries: a broken file is refused whole, never half used. */
struct rcpt_map *rcpt_map_parse(const char *text, size_t len, struct buf *err);
void rcpt_map_free(struct rcpt_map *m);           /* NULL is fine */
size_t rcpt_map_count(const struct rcpt_map *m);  /* distinct entries */
size_t rcpt_map_memory(const struct rcpt_map *m); /* bytes it holds */
/* Is addr ("local@domain" as the SMTP parser gives it) listed, itself or
 * by its domain? */
bool rcpt_map_has(const struct rcpt_map *m, const char *addr);

/* ---- the file ---- */

struct rcpt_list;

struct rcpt_list *rcpt_list_new(void);
void rcpt_list_free(struct rcpt_list *l); /* NULL is fine */
/* Use the file at path (copied; NULL: no list, every address passes), read
 * now. -1 with err when it cannot be read, is not trusted (a regular file
 * not writable by group or others, owned by the user we run as or root)
 * or is broken: the list is then left as it was. */
int rcpt_list_load(struct rcpt_list *l, const char *path, struct buf *err);
/* May addr be accepted: no list, or listed. Looks at the file first when
 * RCPTMAP_RECHECK_MS have passed since the last look, and reads it again
 * when its inode, size or modification time changed; a file that cannot be
 * read then keeps the list in use, with an error in the log (once per
 * change). Any thread. */
bool rcpt_list_accepts(struct rcpt_list *l, const char *addr);

/* For ternd --check: the file at path as the relay running as uid:gid will
 * find it (readable by it, trusted as rcpt_list_load requires, not broken).
 * 0, or -1 with err naming the file and the problem. */
int rcpt_list_check(const char *path, uid_t uid, gid_t gid, struct buf *err);

#endif
