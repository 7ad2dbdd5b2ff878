/*
 * Dropping privileges for good and the seccomp filters of the relay and the
 * keys process. Order matters: the capability bounding set is emptied while
 * still root (it needs CAP_SETPCAP), then groups, gid and uid change, each
 * checked, and a setuid(0) that must fail proves that root cannot come back.
 */
#include "privsep/privsep.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "util/util.h"

int
ps_ident_lookup(const char *user, bool as_root, struct ps_ident *out, struct buf *err)
{
    struct passwd pw, *res = NULL;
    char tmp[4096];
    int e;
    memset(out, 0, sizeof(*out));
    if (!as_root) {
        /* Not root: nobody to become; the processes run as we are. */
        out->uid = getuid();
        out->gid = getgid();
        e = getpwuid_r(out->uid, &pw, tmp, sizeof(tmp), &res);
        snprintf(out->name, sizeof(out->name), "%s", e == 0 && res ? pw.pw_name : "?");
        return 0;
    }
    e = getpwnam_r(user, &pw, tmp, sizeof(tmp), &res);
    if (res == NULL) {
        buf_printf(err, "user \"%s\": %s (create the account, or set user to another)\n", user,
            e != 0 ? strerror(e) : "no such account");
        return -1;
    }
    if (pw.pw_uid == 0 || pw.pw_gid == 0) {
        buf_printf(err, "user \"%s\": has uid or gid 0; the relay must not run as root\n", user);
        return -1;
    }
    out->uid = pw.pw_uid;
    out->gid = pw.pw_gid;
    out->switch_user = true;
    snprintf(out->name, sizeof(out->name), "%s", pw.pw_name);
    return 0;
}

static int
drop_bounding_set(struct buf *err)
{
    for (int cap = 0; cap <= 63; cap++) {
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) < 0)
            break; /* past the kernel's last capability */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            buf_printf(err, "cannot drop capability %d: %s\n", cap, strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int
switch_user(const struct ps_ident *id, struct buf *err)
{
    uid_t r, e, s;
    gid_t rg, eg, sg;
    if (setgroups(1, &id->gid) < 0 || setresgid(id->gid, id->gid, id->gid) < 0 ||
        setresuid(id->uid, id->uid, id->uid) < 0) {
        buf_printf(err, "cannot become %s: %s\n", id->name, strerror(errno));
        return -1;
    }
    if (getresuid(&r, &e, &s) < 0 || getresgid(&rg, &eg, &sg) < 0 || r != id->uid || e != id->uid ||
        s != id->uid || rg != id->gid || eg != id->gid || sg != id->gid) {
        buf_printf(err, "ids did not change to %s\n", id->name);
        return -1;
    }
    /* Proof that the way back is closed. */
    if (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0) {
        buf_printf(err, "uid 0 could be regained after becoming %s\n", id->name);
        return -1;
    }
    return 0;
}

int
ps_drop(const struct ps_ident *id, struct buf *err)
{
    if (id->switch_user && drop_bounding_set(err) < 0)
        return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) {
        buf_printf(err, "cannot clear ambient capabilities: %s\n", strerror(errno));
        return -1;
    }
    /* setresuid away from 0 clears the permitted and effective sets. */
    if (id->switch_user && switch_user(id, err) < 0)
        return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        buf_printf(err, "cannot set no_new_privs: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

/* What neither process ever needs: running programs, looking into other
 * processes, the kernel's module, BPF, key ring and mount machinery. */
static const int deny_always[] = { SCMP_SYS(execve), SCMP_SYS(execveat), SCMP_SYS(ptrace),
    SCMP_SYS(process_vm_readv), SCMP_SYS(process_vm_writev), SCMP_SYS(mount), SCMP_SYS(umount2),
    SCMP_SYS(pivot_root), SCMP_SYS(chroot), SCMP_SYS(kexec_load), SCMP_SYS(kexec_file_load),
    SCMP_SYS(init_module), SCMP_SYS(finit_module), SCMP_SYS(delete_module), SCMP_SYS(bpf),
    SCMP_SYS(perf_event_open), SCMP_SYS(keyctl), SCMP_SYS(add_key), SCMP_SYS(request_key),
    SCMP_SYS(personality), SCMP_SYS(userfaultfd), SCMP_SYS(swapon), SCMP_SYS(swapoff),
    SCMP_SYS(reboot), SCMP_SYS(acct), SCMP_SYS(settimeofday), SCMP_SYS(clock_settime),
    SCMP_SYS(clock_adjtime), SCMP_SYS(adjtimex), SCMP_SYS(iopl), SCMP_SYS(ioperm),
    SCMP_SYS(open_by_handle_at), SCMP_SYS(name_to_handle_at), SCMP_SYS(unshare), SCMP_SYS(setns),
    SCMP_SYS(fanotify_init), SCMP_SYS(quotactl), SCMP_SYS(kcmp), SCMP_SYS(process_madvise),
    SCMP_SYS(pidfd_getfd), SCMP_SYS(io_uring_setup), SCMP_SYS(syslog), SCMP_SYS(vhangup),
    SCMP_SYS(setuid), SCMP_SYS(setgid), SCMP_SYS(setreuid), SCMP_SYS(setregid), SCMP_SYS(setresuid),
    SCMP_SYS(setresgid), SCMP_SYS(setgroups), SCMP_SYS(setfsuid), SCMP_SYS(setfsgid) };

/* The keys process reads its sockets and blobs, signs, runs crypt(3) on a
 * few threads and writes log lines: nothing else is allowed. */
static const int keys_allow[] = { SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(pread64),
    SCMP_SYS(readv), SCMP_SYS(writev), SCMP_SYS(recvmsg), SCMP_SYS(sendmsg), SCMP_SYS(recvfrom),
    SCMP_SYS(sendto), SCMP_SYS(close), SCMP_SYS(fstat), SCMP_SYS(newfstatat), SCMP_SYS(lseek),
    SCMP_SYS(mmap), SCMP_SYS(munmap), SCMP_SYS(mprotect), SCMP_SYS(madvise), SCMP_SYS(mremap),
    SCMP_SYS(brk), SCMP_SYS(futex), SCMP_SYS(clone), SCMP_SYS(clone3), SCMP_SYS(set_robust_list),
    SCMP_SYS(rseq), SCMP_SYS(exit), SCMP_SYS(exit_group), SCMP_SYS(rt_sigprocmask),
    SCMP_SYS(rt_sigaction), SCMP_SYS(rt_sigreturn), SCMP_SYS(sigaltstack), SCMP_SYS(getpid),
    SCMP_SYS(gettid), SCMP_SYS(getrandom), SCMP_SYS(clock_gettime), SCMP_SYS(clock_nanosleep),
    SCMP_SYS(nanosleep), SCMP_SYS(sched_yield), SCMP_SYS(sched_getaffinity), SCMP_SYS(poll),
    SCMP_SYS(ppoll), SCMP_SYS(getuid), SCMP_SYS(geteuid), SCMP_SYS(getgid), SCMP_SYS(getegid),
    SCMP_SYS(prctl), SCMP_SYS(tgkill), SCMP_SYS(openat), SCMP_SYS(fcntl), SCMP_SYS(getrlimit),
    SCMP_SYS(prlimit64), SCMP_SYS(uname), SCMP_SYS(shutdown), SCMP_SYS(restart_syscall) };

int
ps_seccomp(enum ps_filter which, struct buf *err)
{
    /* Relay: allowed unless listed (it does much: sockets, files, threads,
     * DNS); a listed call returns EPERM rather than killing, so a library
     * that probes one (personality, io_uring) copes while an exploit still
     * gets nothing. Keys: an allow-list; anything else is ENOSYS, as on a
     * kernel without it (libraries fall back), and the listed dangerous
     * calls kill it. */
    uint32_t def = which == PS_FILTER_RELAY ? SCMP_ACT_ALLOW : SCMP_ACT_ERRNO(ENOSYS);
    uint32_t deny = which == PS_FILTER_RELAY ? SCMP_ACT_ERRNO(EPERM) : SCMP_ACT_KILL_PROCESS;
    scmp_filter_ctx ctx = seccomp_init(def);
    int rc = ctx == NULL ? -ENOMEM : 0;
    /* A binary tree rather than a list: the relay's hot path pays a few
     * comparisons per system call at most (and none for the calls the
     * kernel's action cache knows are always allowed). */
    if (rc == 0)
        rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    for (size_t i = 0; rc == 0 && i < TERN_ARRAY_LEN(deny_always); i++)
        rc = seccomp_rule_add(ctx, deny, deny_always[i], 0);
    for (size_t i = 0; rc == 0 && which == PS_FILTER_KEYS && i < TERN_ARRAY_LEN(keys_allow); i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, keys_allow[i], 0);
    if (rc == 0)
        rc = seccomp_load(ctx);
    if (ctx != NULL)
        seccomp_release(ctx);
    if (rc < 0) {
        buf_printf(err, "cannot install the seccomp filter: %s\n", strerror(-rc));
        return -1;
    }
    return 0;
}
