/*
 * File-descriptor helpers that finish what they start: whole writes and
 * whole reads, retried on EINTR.
 */
#ifndef TERN_FSUTIL_H
#define TERN_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Write all n bytes. 0, or -1 with errno (EIO for a write that made no
 * progress). */
int fd_write_full(int fd, const void *p, size_t n);
/* Read up to n bytes at off, stopping early only at end of file. Returns the
 * number read (short at EOF), or -1 with errno. */
ssize_t fd_pread_full(int fd, void *p, size_t n, uint64_t off);

#endif
