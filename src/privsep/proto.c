/*
 * The messages between ternd's processes: one fixed-size struct per
 * SOCK_SEQPACKET message, at most one descriptor with it (SCM_RIGHTS), and
 * blobs of TLV records in sealed memfds for what is large (configuration,
 * certificate chain, keys, the users file). Every receive checks the size,
 * and every blob walk checks each length against what is left.
 */
#include "privsep/privsep.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/fsutil.h"
#include "util/util.h"

int
ps_send(int sock, const struct ps_msg *m, int fd)
{
    struct iovec iov = { (void *)m, sizeof(*m) };
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh;
    ssize_t w;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (fd >= 0) {
        struct cmsghdr *c;
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.buf;
        mh.msg_controllen = sizeof(u.buf);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    do
        w = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        return -1;
    if ((size_t)w != sizeof(*m)) {
        errno = EMSGSIZE;
        return -1;
    }
    return 0;
}

int
ps_recv(int sock, struct ps_msg *m, int *fd)
{
    struct iovec iov = { m, sizeof(*m) };
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh;
    ssize_t r;
    *fd = -1;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = u.buf;
    mh.msg_controllen = sizeof(u.buf);
    do
        r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(fd, CMSG_DATA(c), sizeof(int));
    }
    if (r == 0)
        return 0;
    /* A truncated message, or one of another size, is never acted on. */
    if ((size_t)r != sizeof(*m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
        m->type < PS_TLS_RSA_SIGN || m->type > PS_LOG || m->len > PS_DATA_MAX) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        errno = EBADMSG;
        return -1;
    }
    m->user[PS_USER_MAX] = '\0';
    m->pass[PS_PASS_MAX] = '\0';
    m->host[PS_HOST_MAX - 1] = '\0';
    return 1;
}

void
ps_blob_add(struct buf *b, uint32_t type, const void *p, size_t n)
{
    uint32_t h[2] = { type, (uint32_t)n };
    TERN_ASSERT(n <= PS_BLOB_MAX);
    buf_append(b, h, sizeof(h));
    buf_append(b, p, n);
}

int
ps_blob_fd(struct buf *b)
{
    int e, fd = memfd_create("tern-blob", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        goto out;
    /* Sealed: the receiver reads what was written, and nobody changes it. */
    if (fd_write_full(fd, b->data ? b->data : "", b->len) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
        e = errno;
        close(fd);
        errno = e;
        fd = -1;
    }
out:
    if (b->data != NULL)
        explicit_bzero(b->data, b->cap);
    b->len = 0;
    return fd;
}

int
ps_blob_read(int fd, struct buf *out)
{
    struct stat st;
    ssize_t k = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= (off_t)PS_BLOB_MAX) {
        buf_reserve(out, (size_t)st.st_size);
        k = fd_pread_full(fd, out->data, (size_t)st.st_size, 0);
        if (k == (ssize_t)st.st_size) {
            out->len = (size_t)k;
            out->data[out->len] = '\0';
        } else {
            k = -1;
        }
    }
    close(fd);
    return k < 0 ? -1 : 0;
}

int
ps_blob_next(const struct buf *b, size_t *off, uint32_t *type, const char **p, size_t *n)
{
    uint32_t h[2];
    if (*off == b->len)
        return 0;
    if (b->len - *off < sizeof(h))
        return -1;
    memcpy(h, b->data + *off, sizeof(h));
    if (h[1] > b->len - *off - sizeof(h))
        return -1;
    *type = h[0];
    *p = b->data + *off + sizeof(h);
    *n = h[1];
    *off += sizeof(h) + h[1];
    return 1;
}
