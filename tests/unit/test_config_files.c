/*
 * Unit tests for the configuration's files: which file the programs read
 * (config_pick_file).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void
test_pick_file(void **state)
{
    char dir[] = "/tmp/tern-test-config-files.XXXXXX", there[PATH_MAX], missing[PATH_MAX],
         under_file[PATH_MAX];
    FILE *f;
    assert_non_null(mkdtemp(dir));
    snprintf(there, sizeof(there), "%s/tern.conf", dir);
    snprintf(missing, sizeof(missing), "%s/missing.conf", dir);
    snprintf(under_file, sizeof(under_file), "%s/tern.conf/x.conf", dir);
    f = fopen(there, "we");
    assert_non_null(f);
    assert_int_equal(fclose(f), 0);
    const struct {
        const char *given, *dflt, *want;
    } cases[] = {
        { "/etc/other.conf", there, "/etc/other.conf" }, /* -c wins */
        { "/etc/other.conf", missing, "/etc/other.conf" },
        { NULL, there, there },     /* no -c: the default file when it is there */
        { NULL, missing, NULL },    /* ... else the built-in defaults */
        { NULL, under_file, NULL }, /* a path through a file (ENOTDIR): not there */
        { "", there, "" },          /* given, even empty: not replaced */
    };
    for (size_t i = 0; i < N(cases); i++) {
        const char *got = config_pick_file(cases[i].given, cases[i].dflt);
        if (cases[i].want == NULL)
            assert_null(got);
        else
            assert_string_equal(got, cases[i].want);
    }
    assert_string_equal(config_file_or_default("x.conf"), "x.conf");
    assert_int_equal(unlink(there), 0);
    assert_int_equal(rmdir(dir), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
