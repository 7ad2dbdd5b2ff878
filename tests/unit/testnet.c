/*
 * Port helpers for unit tests; see testnet.h.
 */
#include "testnet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config/config.h"
#include "dns/dns.h"
#include "util/buf.h"
#include "util/util.h"

static bool
bindable(int type, uint16_t port)
{
    struct sockaddr_in sin;
    int fd = socket(AF_INET, type, 0);
    bool ok;
    if (fd < 0)
        return false;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    ok = bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
    close(fd);
    return ok;
}

uint16_t
testnet_free_port(void)
{
    for (int tries = 0; tries < 200; tries++) {
        uint32_t r = 0;
        uint16_t port;
        if (getrandom(&r, sizeof(r), 0) != sizeof(r))
            r = (uint32_t)rand();
        port = (uint16_t)(10000 + r % 22000);
        if (bindable(SOCK_DGRAM, port) && bindable(SOCK_STREAM, port))
            return port;
    }
    return 0;
}

bool
testnet_udp_port_taken(uint16_t port)
{
    struct sockaddr_in sin;
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    bool taken;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    taken = bind(u, (struct sockaddr *)&sin, sizeof(sin)) < 0 && errno == EADDRINUSE;
    close(u);
    return taken;
}

#define DNSMASQ_ARGS_MAX 64
#define DNSMASQ_TRIES    5
#define DNSMASQ_START_MS 20000 /* generous: the machine may be busy */
#define DNSMASQ_POLL_US  10000

/* Does a DNS server answer on 127.0.0.1:port? A query, not a bind probe: a
 * probe that binds the port could take it from under the starting server. */
static bool
dns_answers(uint16_t port)
{
    /* id 0x7e57, RD, one question: "x.test" A IN */
    static const unsigned char q[] = { 0x7e, 0x57, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x01, 'x', 0x04, 't', 'e', 's', 't', 0x00, 0x00, 0x01, 0x00, 0x01 };
    struct sockaddr_in sin;
    struct timeval tv = { 0, 50000 };
    unsigned char r[512];
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    bool ok = false;
    if (u < 0)
        return false;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(u, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        send(u, q, sizeof(q), 0) == (ssize_t)sizeof(q))
        ok = recv(u, r, sizeof(r), 0) >= 2 && r[0] == q[0] && r[1] == q[1];
    close(u);
    return ok;
}

/* One attempt on one port: the pid once it serves, 0 when the child exited
 * first (its port was taken), -1 when it neither serves nor exits. */
static pid_t
dnsmasq_try(const char *const *args, uint16_t port)
{
    const char *argv[DNSMASQ_ARGS_MAX + 4];
    char port_arg[32];
    size_t k = 0;
    pid_t pid;
    snprintf(port_arg, sizeof(port_arg), "--port=%u", port);
    argv[k++] = "dnsmasq";
    argv[k++] = "--no-daemon";
    argv[k++] = port_arg;
    for (size_t i = 0; args[i] != NULL && i < DNSMASQ_ARGS_MAX; i++)
        argv[k++] = args[i];
    argv[k] = NULL;
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        dup2(null, 2);
        execvp("dnsmasq", (char *const *)argv);
        _exit(127);
    }
    for (int64_t deadline = tern_mono_ms() + DNSMASQ_START_MS; tern_mono_ms() < deadline;) {
        int st;
        if (dns_answers(port))
            return pid;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return 0;
        usleep(DNSMASQ_POLL_US);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

pid_t
testnet_dnsmasq_start(const char *const *args, uint16_t *port)
{
    for (int tries = 0; tries < DNSMASQ_TRIES; tries++) {
        pid_t pid;
        *port = testnet_free_port();
        if (*port == 0)
            return -1;
        pid = dnsmasq_try(args, *port);
        if (pid != 0)
            return pid;
    }
    return -1;
}

struct dns *
testnet_dns_at(struct event_base *base, uint16_t port, struct buf *err)
{
    struct hostport hp;
    memset(&hp, 0, sizeof(hp));
    snprintf(hp.host, sizeof(hp.host), "127.0.0.1");
    hp.port = port;
    return dns_new(base, &hp, 1, err);
}
