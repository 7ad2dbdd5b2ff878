/*
 * Unit tests for the SMTP server's start-up sizing: the file descriptors a
 * configuration may need at once against RLIMIT_NOFILE.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/smtp.h"
#include "util/util.h"

static void
test_fds_needed(void **state)
{
    static const struct {
        const char *name;
        uint32_t sessions, connections;
        size_t listeners;
        uint32_t workers;
        uint64_t limit;
        bool fits;
        uint64_t need;
    } cases[] = {
        { "defaults, usual limit", 1000, 500, 1, 1, 524288, true, 1000 * 2 + 500 * 2 + 1 + 100 },
        { "defaults, ulimit -n 1024", 1000, 500, 1, 1, 1024, false, 1000 * 2 + 500 * 2 + 1 + 100 },
        { "exactly the need", 300, 100, 1, 1, 300 * 2 + 100 * 2 + 1 + 100, true,
            300 * 2 + 100 * 2 + 1 + 100 },
        { "one short", 300, 100, 1, 1, 300 * 2 + 100 * 2 + 1 + 100 - 1, false,
            300 * 2 + 100 * 2 + 1 + 100 },
        { "listeners count", 300, 100, 3, 1, 300 * 2 + 100 * 2 + 1 + 100, false,
            300 * 2 + 100 * 2 + 3 + 100 },
        /* 4 loops: a socket per address each, an epoll and an inbox each. */
        { "loops count", 300, 100, 3, 4, 300 * 2 + 100 * 2 + 3 + 100, false,
            300 * 2 + 100 * 2 + 3 * 4 + 4 * 2 + 100 },
        { "unset workers is one loop", 300, 100, 3, 0, 300 * 2 + 100 * 2 + 3 + 100, true,
            300 * 2 + 100 * 2 + 3 + 100 },
        { "no limit known", 1000000, 100000, 1, 16, UINT64_MAX, true,
            1000000 * 2 + 100000 * 2 + 16 + 16 * 2 + 100 },
    };
    struct hostport hp[3];
    memset(hp, 0, sizeof(hp));
    for (size_t i = 0; i < TERN_ARRAY_LEN(cases); i++) {
        struct config cfg;
        struct buf err = BUF_INIT;
        memset(&cfg, 0, sizeof(cfg));
        cfg.max_sessions = cases[i].sessions;
        cfg.max_connections = cases[i].connections;
        cfg.smtp_listen = hp;
        cfg.n_smtp_listen = cases[i].listeners;
        cfg.workers = cases[i].workers;
        print_message("case %s\n", cases[i].name);
        assert_int_equal(smtp_server_fds_needed(&cfg), cases[i].need);
        assert_int_equal(smtp_server_check_fds(&cfg, cases[i].limit, &err), cases[i].fits ? 0 : -1);
        if (cases[i].fits) {
            assert_int_equal(err.len, 0);
        } else {
            assert_non_null(strstr(err.data, "max_sessions"));
            assert_non_null(strstr(err.data, "RLIMIT_NOFILE"));
        }
        buf_fini(&err);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fds_needed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
