/*
 * The hosts file for client names: what the C library enumerates of its
 * "hosts" database (gethostent_r: /etc/hosts, the "files" source), taken
 * when a resolver is made and when its servers are set again (a reload).
 * A client's name is looked up here before the DNS, as the system
 * resolver does with "files" before "dns" (and so Postfix's smtpd): a
 * relay's own clients named there (127.0.0.1 localhost) cost no query, and
 * a slow or dead DNS server costs them nothing either.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dns_int.h"
#include "util/util.h"

#define HOSTS_MAX   10000 /* entries kept; a bigger file is a DNS's job */
#define HOSTENT_BUF 8192

struct hosts_ent {
    int family;
    unsigned char addr[16];
    char *name; /* owned: the line's first (canonical) name */
};

struct dns_hosts {
    struct hosts_ent *v;
    size_t n;
};

/* The enumeration is one process-wide cursor. */
static pthread_mutex_t hosts_lock = PTHREAD_MUTEX_INITIALIZER;

static bool
known(const struct dns_hosts *h, int family, const void *addr, size_t alen)
{
    for (size_t i = 0; i < h->n; i++) {
        if (h->v[i].family == family && memcmp(h->v[i].addr, addr, alen) == 0)
            return true;
    }
    return false;
}

struct dns_hosts *
dns_hosts_load(void)
{
    struct dns_hosts *h = xcalloc(1, sizeof(*h));
    struct hostent he, *res;
    char *buf = xmalloc(HOSTENT_BUF);
    int herr;
    size_t cap = 0;
    pthread_mutex_lock(&hosts_lock);
    sethostent(0);
    while (
        h->n < HOSTS_MAX && gethostent_r(&he, buf, HOSTENT_BUF, &res, &herr) == 0 && res != NULL) {
        size_t alen = he.h_addrtype == AF_INET ? 4 : he.h_addrtype == AF_INET6 ? 16 : 0;
        if (alen == 0 || (size_t)he.h_length != alen || he.h_name == NULL ||
            strlen(he.h_name) >= 256)
            continue;
        for (char **a = he.h_addr_list; a != NULL && *a != NULL && h->n < HOSTS_MAX; a++) {
            /* The first line naming an address wins, as the resolver has it. */
            if (known(h, he.h_addrtype, *a, alen))
                continue;
            if (h->n == cap) {
                cap = cap ? 2 * cap : 16;
                h->v = xrealloc(h->v, cap * sizeof(*h->v));
            }
            memset(&h->v[h->n], 0, sizeof(h->v[h->n]));
            h->v[h->n].family = he.h_addrtype;
            memcpy(h->v[h->n].addr, *a, alen);
            h->v[h->n].name = xstrdup(he.h_name);
            h->n++;
        }
    }
    endhostent();
    pthread_mutex_unlock(&hosts_lock);
    free(buf);
    return h;
}

void
dns_hosts_free(struct dns_hosts *h)
{
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->n; i++)
        free(h->v[i].name);
    free(h->v);
    free(h);
}

const char *
dns_hosts_find(const struct dns_hosts *h, const struct sockaddr *sa)
{
    const void *addr;
    size_t alen;
    if (h == NULL)
        return NULL;
    if (sa->sa_family == AF_INET) {
        addr = &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        alen = 4;
    } else if (sa->sa_family == AF_INET6) {
        addr = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        alen = 16;
    } else {
        return NULL;
    }
    for (size_t i = 0; i < h->n; i++) {
        if (h->v[i].family == sa->sa_family && memcmp(h->v[i].addr, addr, alen) == 0)
            return h->v[i].name;
    }
    return NULL;
}
