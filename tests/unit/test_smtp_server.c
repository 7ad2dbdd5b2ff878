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
        uint64_t limit;
        bool fits;
    } cases[] = {
        { "defaults, usual limit", 1000, 500, 1, 524288, true },
        { "defaults, ulimit -n 1024", 1000, 500, 1, 1024, false },
        { "exactly the need", 300, 100, 1, 300 * 2 + 100 * 2 + 1 + 100, true },
        { "one short", 300, 100, 1, 300 * 2 + 100 * 2 + 1 + 100 - 1, false },
        { "listeners count", 300, 100, 3, 300 * 2 + 100 * 2 + 1 + 100, false },
        { "no limit known", 1000000, 100000, 1, UINT64_MAX, true },
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
        print_message("case %s\n", cases[i].name);
        assert_int_equal(smtp_server_fds_needed(&cfg), (uint64_t)cases[i].sessions * 2 +
                                                           (uint64_t)cases[i].connections * 2 +
                                                           cases[i].listeners + 100);
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
