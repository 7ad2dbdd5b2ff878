/*
 * File-descriptor helpers that finish what they start: whole writes and
 * whole reads, retried on EINTR; and the one rule for trusting a file or
 * directory that others must not read or change (keys, the users file, the
 * spool).
 */
#ifndef TERN_FSUTIL_H
#define TERN_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "util/buf.h"

/* Write all n bytes. 0, or -1 with errno (EIO for a write that made no
 * progress). */
int fd_write_full(int fd, const void *p, size_t n);
/* The same at offset off (the file offset is not used or moved). */
int fd_pwrite_full(int fd, const void *p, size_t n, uint64_t off);
/* Read up to n bytes at off, stopping early only at end of file. Returns the
 * number read (short at EOF), or -1 with errno. */
ssize_t fd_pread_full(int fd, void *p, size_t n, uint64_t off);

/* Append the rest of fd to out (NUL terminated). 0, or -1 with errno
 * (EFBIG once more than max bytes were read: a file that large is refused
 * rather than read in part). */
int fd_read_all(int fd, struct buf *out, size_t max);
/* fd_read_all of path, opened without following a symbolic link. */
int fs_read_file(const char *path, struct buf *out, size_t max);

/* Replace dir/name with data durably: written to dir/name.tmp (mode
 * 0600), fsynced, renamed into place, the directory fsynced. 0, or -1 and
 * err names the step and the errno text. */
int fs_replace_file(
    const char *dir, const char *name, const void *data, size_t len, struct buf *err);

/* What a private file or directory must be: its type, the permission bits
 * that must be clear, and whether it must belong to the user we run as. */
struct fs_private {
    mode_t type;  /* S_IFREG or S_IFDIR */
    mode_t deny;  /* e.g. S_IWGRP | S_IWOTH | S_IROTH */
    bool own;     /* owned by the effective uid ... */
    bool or_root; /* ... or by root */
};

enum fs_trust { FS_TRUSTED, FS_BAD_TYPE, FS_BAD_MODE, FS_BAD_OWNER };

/* Does st meet p? FS_TRUSTED, or the first problem found with a phrase
 * appended to why ("not a regular file", "writable by group or others",
 * "readable by others", "owned by uid 65534, not by uid 0 that ternd runs
 * as"), for the caller to prefix with the file's name and follow with the
 * remedy it knows (chmod 600, chown). */
enum fs_trust fs_check_private(const struct stat *st, const struct fs_private *p, struct buf *why);
/* The same for a process that will run as uid (ternd's parent checks what
 * its relay will own). */
enum fs_trust fs_check_private_as(
    const struct stat *st, const struct fs_private *p, uid_t uid, struct buf *why);

#endif
