/*
 * The AUTH user table: `user:crypt-hash` lines from auth_users_file
 * (yescrypt, sha512-crypt, bcrypt through libxcrypt), re-read when the file
 * changes, and the password check. Used by the SMTP server (which never
 * sees a hash with privilege separation), the keys process that checks
 * passwords, and ternctl passwd; it depends on nothing above util.
 */
#ifndef TERN_UTIL_USERDB_H
#define TERN_UTIL_USERDB_H

#include <stdbool.h>
#include <stddef.h>

#include "util/buf.h"

#define AUTH_USER_MAX 255  /* bytes of an authentication identity */
#define AUTH_PASS_MAX 1023 /* bytes of a password */

/* ---- users ---- */

struct auth_users;

/* The table for path (borrowed string, copied). Nothing is read yet. */
struct auth_users *auth_users_new(const char *path);
void auth_users_free(struct auth_users *u);
const char *auth_users_path(const struct auth_users *u);
/* Re-read the file when its inode, size or mtime changed (or always with
 * force). 0 when the table is current (bad lines are skipped and described
 * in warn); -1 with err when the file cannot be read: the old table is kept. */
int auth_users_refresh(struct auth_users *u, bool force, struct buf *warn, struct buf *err);
/* The same, returning 1 when the file was read (changed, or force; its
 * text is then appended to copy, which ternd's parent hands to the keys
 * process), 0 when the table was current, -1 on error. */
int auth_users_refresh_text(
    struct auth_users *u, bool force, struct buf *warn, struct buf *err, struct buf *copy);
/* Parse a file's text into u (replacing the table). Bad lines are skipped
 * and one message per bad line is appended to warn ("line N: ..."). */
void auth_users_parse(struct auth_users *u, const char *text, size_t len, struct buf *warn);
size_t auth_users_count(const struct auth_users *u);
/* The stored hash of user (borrowed until the next refresh), or NULL. */
const char *auth_users_hash(const struct auth_users *u, const char *user);
/* A hash of the same cost as the table's (to check against when the user is
 * unknown, so that timing does not tell whether a user exists). */
const char *auth_users_dummy_hash(const struct auth_users *u);

/* Does crypt(pass, hash) reproduce hash? Constant-time compare; false for
 * any failure of crypt. Thread safe. */
bool auth_check_password(const char *hash, const char *pass);

#endif
