/*
 * The maildrop: where local submission leaves a message when ternd cannot
 * be reached (Postfix's postdrop/pickup model). tern-sendmail writes a drop
 * file there itself when it may (root, the daemon's user), else through the
 * setgid helper tern-drop; ternd picks every file up, commits it to the
 * spool and only then removes it. A drop file is hostile input to ternd:
 * the submitter is the file's owner (set by the kernel), never a claim in it.
 *
 * Drop file, version 1 (header lines end with LF, nothing optional but the
 * sender line, in this order):
 *     tern-maildrop 1
 *     sender ADDR          at most once; "<>" is the null sender; without
 *                          it ternd uses the owner's login @ hostname
 *     rcpt ADDR            1 to MAILDROP_RCPTS_MAX lines
 *     size N               bytes of message that follow the empty line
 *     (empty line)
 *     N bytes: the message, CRLF lines of at most 998 octets, no NUL, no
 *     bare CR or LF, not dot-stuffed
 *     end                  the end marker, with its LF; nothing after it
 * Names in the directory: "t.ID" while being written, "d.ID" once complete,
 * "c.ID.QID" once ternd claimed it for queue id QID (ID: 32 hex digits).
 */
#ifndef TERN_MAILDROP_H
#define TERN_MAILDROP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "util/buf.h"

#define MAILDROP_MAGIC       "tern-maildrop 1"
#define MAILDROP_TRAILER     "end\n"
#define MAILDROP_TRAILER_LEN 4
#define MAILDROP_HEAD_MAX    (1200u * 1024) /* the header lines: 1000 long addresses fit */
#define MAILDROP_RCPTS_MAX   1000
#define MAILDROP_MSG_MAX     (256u * 1024 * 1024) /* tern-drop's cap (tern-sendmail's too) */
#define MAILDROP_ADDR_MAX    998
#define MAILDROP_LINE_MAX    998 /* RFC 5322 §2.1.1, without CRLF */
#define MAILDROP_ID_HEX      32
#define MAILDROP_NAME_MAX    64
#define MAILDROP_FILE_MODE   0644 /* read by ternd's user; the directory keeps others out */
#define MAILDROP_DIR_MODE    01730
#define MAILDROP_CORRUPT     "corrupt"

/* The envelope of a drop file. */
struct maildrop_head {
    char *sender; /* owned; NULL: none given; "" the null sender */
    char **rcpts; /* owned */
    size_t n_rcpts;
    uint64_t size;   /* message bytes */
    size_t head_len; /* bytes of the header lines, the empty line included */
};
void maildrop_head_fini(struct maildrop_head *h);

/* Is a[len] usable as an envelope address here: 1..MAILDROP_ADDR_MAX bytes,
 * no control characters, no space or angle bracket outside a quoted local
 * part, a domain after the last '@'? */
bool maildrop_addr_ok(const char *a, size_t len);

/* The header lines (through the empty line) for sender (NULL: none given,
 * "" the null sender), rcpts and a message of size bytes, appended to out.
 * -1 with a reason in err when an address or the count is unusable. */
int maildrop_format_head(const char *sender, char *const *rcpts, size_t n_rcpts, uint64_t size,
    struct buf *out, struct buf *err);

/* Parse the header lines at the start of p[len] (len may be the whole file
 * or its first MAILDROP_HEAD_MAX bytes). 1 with *h filled (the caller
 * finishes it), 0 when p ends before the empty line (want more, and len is
 * under MAILDROP_HEAD_MAX), -1 with a reason in err when malformed or when
 * size exceeds max_size. */
int maildrop_parse_head(
    const char *p, size_t len, uint64_t max_size, struct maildrop_head *h, struct buf *err);

/* Streaming check of the message bytes (CRLF lines, see above), noting
 * 8-bit octets in the header section and in the body. */
struct maildrop_body {
    uint64_t seen;
    size_t line;    /* octets of the current line so far */
    bool cr;        /* the previous octet was CR */
    bool in_header; /* before the empty line that ends the header section */
    bool hdr_8bit, body_8bit;
};
void maildrop_body_init(struct maildrop_body *b);
/* 0, or -1 with a reason in err. */
int maildrop_body_feed(struct maildrop_body *b, const char *p, size_t n, struct buf *err);
/* At the end: the last line must be complete. 0, or -1 with a reason. */
int maildrop_body_end(struct maildrop_body *b, struct buf *err);

/* A whole drop file in p[len] (what tern-drop reads on stdin): 0 with *h
 * filled, or -1 with a reason. */
int maildrop_parse_file(
    const char *p, size_t len, uint64_t max_size, struct maildrop_head *h, struct buf *err);

/* Kinds of names in the directory. */
enum maildrop_name {
    MAILDROP_N_OTHER,   /* not ours */
    MAILDROP_N_TMP,     /* t.ID */
    MAILDROP_N_READY,   /* d.ID */
    MAILDROP_N_CLAIMED, /* c.ID.QID: qid_out (17 bytes) gets QID */
    MAILDROP_N_CORRUPT, /* the corrupt/ subdirectory */
};
enum maildrop_name maildrop_name_kind(const char *name, char *qid_out);

/* Write a complete drop file (data[len], already formatted) into the
 * directory dirfd: t.ID created with O_EXCL|O_NOFOLLOW, mode
 * MAILDROP_FILE_MODE, written, fsynced, closed, renamed to d.ID, and the
 * directory fsynced. name_out (MAILDROP_NAME_MAX) gets d.ID. 0, or -1 with
 * errno (the temporary file is removed). */
int maildrop_write(int dirfd, const char *data, size_t len, char *name_out);

/* May tern-drop write into the directory st describes: a directory of its
 * group gid, sticky, not writable by others? */
bool maildrop_dir_usable(const struct stat *st, gid_t gid);

/* ternd's start: make dir when missing (mode 0700 and ours) and set its
 * group to group_name with mode MAILDROP_DIR_MODE when the group exists and
 * may be given (else 0700 and *warn says why), and its corrupt/
 * subdirectory (0700). An existing dir must be a directory (not a symbolic
 * link) owned by the user we run as; its mode and group are set as above.
 * 0; 1 when dir is missing and cannot be made (*warn says why: ternd runs
 * without a maildrop); -1 with a message naming the problem. Messages call
 * the directory name (dir may reach it another way, see pickup_new). */
int maildrop_prepare(
    const char *dir, const char *name, const char *group_name, struct buf *warn, struct buf *err);
/* For --check: 0 when dir is missing or a directory owned by uid (the
 * user ternd's processes run as; or root when root_ok: a start as root
 * hands it over); -1 with a message otherwise. Changes nothing. */
int maildrop_check(const char *dir, uid_t uid, bool root_ok, struct buf *err);

/* --- ternd's pickup service --- */

struct event_base;
struct loopq;
struct spool;
struct sched;
struct config;
struct pickup;

/* Watch cfg's maildrop_dir (prepared) and pick up its files: at start once
 * the spool's recovery is done, when inotify reports a new name, and every
 * MAILDROP_SCAN_MS. Call it before the queue is loaded (sched_load_spool):
 * it settles the claims a crash left against the spool as it was. inbox:
 * the loop's inbox (spool commits and worker results come back there). sch
 * (may be NULL) tells when the queue is loaded. NULL and err when the
 * directory cannot be opened. */
#define MAILDROP_SCAN_MS 30000
/* dir: where to open cfg->maildrop_dir (the same path, or one that reaches
 * the directory another way); messages name cfg->maildrop_dir. */
struct pickup *pickup_new(struct event_base *base, struct loopq *inbox, struct spool *sp,
    struct sched *sch, struct config *cfg, const char *dir, struct buf *err);
/* Messages picked up and committed since the start (0 for NULL). */
uint64_t pickup_count(const struct pickup *p);
/* A reloaded configuration (hostname, max_message_size, dkim); the
 * directory stays the one of the start. */
void pickup_set_config(struct pickup *p, struct config *cfg);
/* Stop: no new work; waits for the worker. Its last result is posted to
 * inbox: run the inbox while the spool is still open (an uncommitted
 * message is dropped, its claimed file stays for the next start). NULL is
 * fine. */
void pickup_stop(struct pickup *p);
/* After pickup_stop, once the spool is freed and the inbox run (a commit
 * in flight has called back). NULL is fine. */
void pickup_free(struct pickup *p);

#endif
