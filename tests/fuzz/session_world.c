/*
 * The SMTP session fuzzer's world (see session_world.h). Everything here is
 * made once; only the checks and the queue clean-up run per input.
 */
#include "session_world.h"

#include <crypt.h>
#include <dirent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "smtp/smtp_int.h"
#include "spool/spool_int.h"
#include "util/log.h"
#include "util/loopq.h"
#include "util/map.h"
#include "util/util.h"

static char *world_dir; /* for the exit handler */

static _Noreturn void
die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_session: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void
remove_world(void)
{
    if (world_dir != NULL)
        nftw(world_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A private file (mode 0600) written by fn. */
static void
write_private(const char *path, void (*fn)(FILE *f, void *arg), void *arg)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL)
        die("cannot create", path);
    fn(f, arg);
    if (fclose(f) != 0)
        die("cannot write", path);
}

static void
put_key(FILE *f, void *arg)
{
    if (!PEM_write_PrivateKey(f, arg, NULL, NULL, 0, NULL, NULL))
        die("cannot write a key", NULL);
}

static void
put_cert(FILE *f, void *arg)
{
    if (!PEM_write_X509(f, arg))
        die("cannot write the certificate", NULL);
}

static void
put_users(FILE *f, void *arg)
{
    /* sha512-crypt with the fewest rounds: the check runs once per AUTH. */
    const char *hash = crypt(WORLD_PASSWORD, "$6$rounds=1000$fuzzsalt$");
    if (hash == NULL || hash[0] != '$')
        die("crypt failed", NULL);
    fprintf(f, "%s:%s\n", WORLD_USER, hash);
}

/* A self-signed P-256 certificate for the server side of STARTTLS. */
static void
make_cert(const char *cert_path, const char *key_path)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name;
    if (key == NULL || x == NULL)
        die("cannot make a key", NULL);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 365);
    X509_set_pubkey(x, key);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(
        name, "CN", MBSTRING_ASC, (const unsigned char *)"fuzz.example", -1, -1, 0);
    X509_set_issuer_name(x, name);
    if (!X509_sign(x, key, EVP_sha256()))
        die("cannot sign the certificate", NULL);
    write_private(key_path, put_key, key);
    write_private(cert_path, put_cert, x);
    X509_free(x);
    EVP_PKEY_free(key);
}

static void
make_dkim_key(const char *path)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (key == NULL)
        die("cannot make the DKIM key", NULL);
    write_private(path, put_key, key);
    EVP_PKEY_free(key);
}

static const char *
pick_tmpdir(void)
{
    const char *t = getenv("TERN_FUZZ_TMPDIR");
    if (t != NULL && *t != '\0')
        return t;
    /* fsync on tmpfs costs nothing; the spool commits every message. */
    if (access("/dev/shm", W_OK | X_OK) == 0)
        return "/dev/shm";
    t = getenv("TMPDIR");
    return t != NULL && *t != '\0' ? t : "/tmp";
}

static struct smtp_server *
make_server(struct fuzz_world *w, bool tight)
{
    char o[12][PATH_MAX + 64];
    const char *ov[24];
    size_t n = 0;
    struct buf err = BUF_INIT;
    struct config *cfg;
    struct smtp_server *srv;
    snprintf(o[n++], sizeof(o[0]), "spool_dir=%s/spool", w->dir);
    snprintf(o[n++], sizeof(o[0]), "tls_cert_file=%s/cert.pem", w->dir);
    snprintf(o[n++], sizeof(o[0]), "tls_key_file=%s/key.pem", w->dir);
    snprintf(o[n++], sizeof(o[0]), "auth_users_file=%s/users", w->dir);
    snprintf(o[n++], sizeof(o[0]), "dkim_sign=example.com:fz:%s/dkim.key", w->dir);
    for (size_t i = 0; i < n; i++)
        ov[i] = o[i];
    ov[n++] = "hostname=fuzz.example";
    ov[n++] = "smtp_listen=";
    ov[n++] = "relay_networks=127.0.0.0/8 ::1/128";
    ov[n++] = "relay_domains=relay.test";
    ov[n++] = "auth_allow_plaintext_loopback=yes";
    ov[n++] = "auth_failure_delay=0s";
    /* One receive loop, the world's own base: the fuzzer runs it and
     * reads the sessions on it (no loop threads). */
    ov[n++] = "workers=1";
    if (tight) {
        ov[n++] = "max_message_size=3000";
        ov[n++] = "max_recipients=3";
        ov[n++] = "max_errors=5";
        ov[n++] = "auth_max_failures=2";
        /* Admission: a few sessions, one kept for relay_networks, two per
         * outside address (the fuzzer opens extra connections). */
        ov[n++] = "max_sessions=4";
        ov[n++] = "reserved_sessions=1";
        ov[n++] = "max_sessions_per_ip=2";
    }
    cfg = config_load(NULL, ov, n, false, &err);
    if (cfg == NULL)
        die("configuration", err.data);
    srv = smtp_server_new(w->base, w->sp, cfg, NULL, &err);
    if (srv == NULL)
        die("server", err.data);
    config_unref(cfg);
    buf_fini(&err);
    return srv;
}

/* Every committed message, so that it can be removed after the input. */
static void
on_commit(const struct spool_env *env, void *arg)
{
    struct fuzz_world *w = arg;
    if (w->n_qids == w->cap_qids) {
        w->cap_qids = w->cap_qids ? 2 * w->cap_qids : 64;
        w->qids = xrealloc(w->qids, w->cap_qids * sizeof(*w->qids));
    }
    memcpy(w->qids[w->n_qids++], env->qid, SPOOL_QID_LEN + 1);
}

static void
on_found(const struct spool_entry *v, size_t n, void *arg)
{
    (void)v;
    (void)arg;
    if (n > 0)
        die("the new spool is not empty", NULL);
}

static void
on_recovered(void *arg, long count)
{
    struct fuzz_world *w = arg;
    (void)count;
    w->recovered = true;
}

void
world_init(struct fuzz_world *w)
{
    char path[PATH_MAX + 32];
    struct buf err = BUF_INIT;
    memset(w, 0, sizeof(*w));
    /* Replies to a client that has gone must not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    snprintf(w->dir, sizeof(w->dir), "%s/tern-fuzz-session.XXXXXX", pick_tmpdir());
    if (mkdtemp(w->dir) == NULL)
        die("mkdtemp", w->dir);
    world_dir = w->dir;
    atexit(remove_world);
    if (getenv("TERN_FUZZ_LOG") == NULL) {
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null < 0)
            die("/dev/null", NULL);
        log_set_fd(null);
    }
    log_set_level(LOG_DEBUG);
    snprintf(path, sizeof(path), "%s/cert.pem", w->dir);
    {
        char key[PATH_MAX + 32];
        snprintf(key, sizeof(key), "%s/key.pem", w->dir);
        make_cert(path, key);
    }
    snprintf(path, sizeof(path), "%s/dkim.key", w->dir);
    make_dkim_key(path);
    snprintf(path, sizeof(path), "%s/users", w->dir);
    write_private(path, put_users, NULL);
    snprintf(w->corrupt_dir, sizeof(w->corrupt_dir), "%s/spool/corrupt", w->dir);
    snprintf(path, sizeof(path), "%s/spool", w->dir);
    w->base = event_base_new();
    if (w->base == NULL)
        die("event_base_new", NULL);
    w->q = loopq_new(w->base);
    if (w->q == NULL)
        die("loopq_new", NULL);
    /* Small segments: the messages of each input are removed after it, and
     * whole dead segments are reclaimed. */
    w->sp =
        spool_open(path, w->q, &(struct spool_opts){ .segment_size = SPOOL_SEG_SIZE_MIN }, &err);
    if (w->sp == NULL)
        die("spool_open", err.data);
    spool_set_commit_hook(w->sp, on_commit, w);
    spool_recover(w->sp, on_found, on_recovered, w);
    while (!w->recovered)
        event_base_loop(w->base, EVLOOP_ONCE);
    w->srv[0] = make_server(w, false);
    w->srv[1] = make_server(w, true);
    w->client_tls = SSL_CTX_new(TLS_client_method());
    if (w->client_tls == NULL)
        die("SSL_CTX_new", NULL);
    SSL_CTX_set_verify(w->client_tls, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(w->client_tls, SSL_MODE_ENABLE_PARTIAL_WRITE);
    buf_fini(&err);
}

size_t
world_dir_entries(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *de;
    size_t n = 0;
    if (d == NULL)
        return (size_t)-1;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    }
    closedir(d);
    return n;
}

static void
synced(void *arg, int err)
{
    struct fuzz_world *w = arg;
    if (err != 0)
        die("spool_sync", strerror(err));
    w->synced = true;
}

void
world_settle(struct fuzz_world *w)
{
    w->synced = false;
    spool_sync(w->sp, w->q, synced, w);
    while (!w->synced)
        event_base_loop(w->base, EVLOOP_ONCE);
}

void
world_clear_queue(struct fuzz_world *w)
{
    for (size_t i = 0; i < w->n_qids; i++)
        spool_remove(w->sp, w->qids[i]);
    w->n_qids = 0;
    world_settle(w);
}

size_t
world_open_fds(struct fuzz_world *w)
{
    return world_list_fds(w, NULL);
}

size_t
world_list_fds(struct fuzz_world *w, FILE *out)
{
    /* The directory stream's own descriptor is counted: the same each time.
     * The spool's segment files are not: it opens, rotates and deletes
     * them as it needs. */
    char log_dir[PATH_MAX + 16], link[PATH_MAX];
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    size_t n = 0, ll;
    if (d == NULL)
        die("/proc/self/fd", NULL);
    ll = (size_t)snprintf(log_dir, sizeof(log_dir), "%s/spool/log/", w->dir);
    while ((de = readdir(d)) != NULL) {
        ssize_t k;
        if (de->d_name[0] == '.')
            continue;
        k = readlinkat(dirfd(d), de->d_name, link, sizeof(link) - 1);
        if (k > 0 && (size_t)k >= ll && memcmp(link, log_dir, ll) == 0)
            continue;
        if (out != NULL)
            fprintf(out, "fd %s -> %.*s\n", de->d_name, (int)(k > 0 ? k : 0), link);
        n++;
    }
    closedir(d);
    return n;
}
