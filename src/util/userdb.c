/*
 * The AUTH user table and the password check (see userdb.h).
 */
#include "util/userdb.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/fsutil.h"
#include "util/map.h"
#include "util/parse.h"
#include "util/util.h"

#define USERS_FILE_MAX  (16u * 1024 * 1024)
#define USERS_LINE_MAX  1024
#define USERS_COUNT_MAX 100000u
#define HASH_MAX        512

/* A yescrypt hash (default cost) of a random string: checked against when
 * the table is empty, so an unknown user costs as much as a known one. */
static const char dummy_yescrypt[] =
    "$y$j9T$t.cayOb8nKgxrX3Nytz4t1$hkMMFdSn7owSm7jVavYGOMA1wXZfnKAJUXmrjBEmn7D";

/* ---- crypt ---- */

static bool
hash_supported(const char *h)
{
    static const char *const prefixes[] = { "$y$", "$gy$", "$7$", "$6$", "$5$", "$2b$", "$2y$",
        "$2a$" };
    bool known = false;
    for (size_t i = 0; i < TERN_ARRAY_LEN(prefixes); i++) {
        if (strncmp(h, prefixes[i], strlen(prefixes[i])) == 0)
            known = true;
    }
    return known && crypt_checksalt(h) == CRYPT_SALT_OK;
}

bool
auth_check_password(const char *hash, const char *pass)
{
    struct crypt_data *cd = xcalloc(1, sizeof(*cd));
    const char *h = crypt_rn(pass, hash, cd, (int)sizeof(*cd));
    bool ok = false;
    if (h != NULL && h[0] != '*') {
        size_t a = strlen(h), b = strlen(hash);
        unsigned char diff = a != b;
        for (size_t i = 0; i < a && i < b; i++)
            diff |= (unsigned char)(h[i] ^ hash[i]);
        ok = diff == 0;
    }
    explicit_bzero(cd, sizeof(*cd));
    free(cd);
    return ok;
}

/* ---- users ---- */

struct auth_users {
    char *path;
    struct map *users; /* user -> owned hash string */
    char *dummy;       /* owned copy of one stored hash, or NULL */
    bool loaded;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

struct auth_users *
auth_users_new(const char *path)
{
    struct auth_users *u = xcalloc(1, sizeof(*u));
    u->path = xstrdup(path);
    u->users = map_new();
    return u;
}

static void
free_val(const void *k, size_t kl, void *v, void *arg)
{
    secret_free(v);
}

static void
users_clear(struct auth_users *u)
{
    map_each(u->users, free_val, NULL);
    map_free(u->users);
    u->users = map_new();
    secret_free(u->dummy);
    u->dummy = NULL;
}

void
auth_users_free(struct auth_users *u)
{
    if (u == NULL)
        return;
    users_clear(u);
    map_free(u->users);
    free(u->path);
    free(u);
}

const char *
auth_users_path(const struct auth_users *u)
{
    return u->path;
}

size_t
auth_users_count(const struct auth_users *u)
{
    return map_count(u->users);
}

const char *
auth_users_hash(const struct auth_users *u, const char *user)
{
    return map_get_str(u->users, user);
}

const char *
auth_users_dummy_hash(const struct auth_users *u)
{
    return u->dummy ? u->dummy : dummy_yescrypt;
}

/* One "user:hash" line (no end of line). NULL when good, else why not. */
static const char *
parse_user_line(struct auth_users *u, const char *p, size_t len)
{
    const char *colon = memchr(p, ':', len);
    size_t ul, hl;
    char *user, *hash;
    if (colon == NULL)
        return "expected user:hash";
    ul = (size_t)(colon - p);
    hl = len - ul - 1;
    if (ul == 0 || ul > AUTH_USER_MAX)
        return "bad user name length";
    for (size_t i = 0; i < ul; i++) {
        if ((unsigned char)p[i] < 0x21 || p[i] == 0x7f)
            return "control character or space in user name";
    }
    if (hl == 0 || hl > HASH_MAX || memchr(colon + 1, ':', hl) != NULL)
        return "bad hash field";
    hash = xstrndup(colon + 1, hl);
    if (!hash_supported(hash)) {
        secret_free(hash);
        return "unsupported hash (use yescrypt, sha512-crypt or bcrypt: ternctl passwd)";
    }
    if (map_count(u->users) >= USERS_COUNT_MAX) {
        secret_free(hash);
        return "too many users";
    }
    user = xstrndup(p, ul);
    if (map_get_str(u->users, user) != NULL) {
        free(user);
        secret_free(hash);
        return "duplicate user";
    }
    map_put_str(u->users, user, hash);
    if (u->dummy == NULL)
        u->dummy = xstrdup(hash);
    free(user);
    return NULL;
}

void
auth_users_parse(struct auth_users *u, const char *text, size_t len, struct buf *warn)
{
    unsigned lineno = 0;
    users_clear(u);
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - (text + i)) : len - i;
        const char *why = NULL;
        const char *line = text + i;
        lineno++;
        i += ll + (nl ? 1 : 0);
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        if (ll == 0 || line[0] == '#')
            continue;
        if (ll > USERS_LINE_MAX)
            why = "line too long";
        else if (memchr(line, '\0', ll) != NULL)
            why = "NUL byte";
        else
            why = parse_user_line(u, line, ll);
        if (why != NULL && warn != NULL)
            buf_printf(warn, "%s line %u: %s\n", u->path, lineno, why);
    }
}

/* Anyone who can change the users file can add a login, and anyone who can
 * read it can run a dictionary against the hashes: refuse a file writable by
 * group or others, readable by others, or owned by someone but us or root.
 * Group read is allowed (a group shared with ternctl's operators). */
static bool
users_file_untrusted(const char *path, const struct stat *st, struct buf *err)
{
    static const struct fs_private rule = { S_IFREG, S_IWGRP | S_IWOTH | S_IROTH, true, true };
    struct buf why = BUF_INIT;
    enum fs_trust t = fs_check_private(st, &rule, &why);
    if (t != FS_TRUSTED)
        buf_printf(err, "auth_users_file %s: %s%s\n", path, why.data,
            t == FS_BAD_MODE    ? " (chmod 600 it)"
            : t == FS_BAD_OWNER ? " (chown it)"
                                : "");
    buf_fini(&why);
    return t != FS_TRUSTED;
}

int
auth_users_refresh(struct auth_users *u, bool force, struct buf *warn, struct buf *err)
{
    return auth_users_refresh_text(u, force, warn, err, NULL) < 0 ? -1 : 0;
}

int
auth_users_refresh_text(
    struct auth_users *u, bool force, struct buf *warn, struct buf *err, struct buf *copy)
{
    struct stat st;
    struct buf text = BUF_INIT;
    int fd = open(u->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        buf_printf(err, "auth_users_file %s: %s\n", u->path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        buf_printf(err, "auth_users_file %s: %s\n", u->path, strerror(errno));
        close(fd);
        return -1;
    }
    if (users_file_untrusted(u->path, &st, err)) {
        close(fd); /* read-only: nothing to flush */
        return -1;
    }
    if (!force && u->loaded && st.st_dev == u->dev && st.st_ino == u->ino &&
        st.st_size == u->size && st.st_mtim.tv_sec == u->mtime.tv_sec &&
        st.st_mtim.tv_nsec == u->mtime.tv_nsec) {
        close(fd);
        return 0;
    }
    if (fd_read_all(fd, &text, USERS_FILE_MAX) < 0) {
        buf_printf(err, "auth_users_file %s: %s\n", u->path, strerror(errno));
        close(fd);
        if (text.data)
            explicit_bzero(text.data, text.len);
        buf_fini(&text);
        return -1;
    }
    close(fd); /* read-only: nothing to flush */
    auth_users_parse(u, text.data ? text.data : "", text.len, warn);
    if (copy != NULL)
        buf_append(copy, text.data ? text.data : "", text.len);
    if (text.data)
        explicit_bzero(text.data, text.len);
    buf_fini(&text);
    u->loaded = true;
    u->dev = st.st_dev;
    u->ino = st.st_ino;
    u->size = st.st_size;
    u->mtime = st.st_mtim;
    return 1;
}
