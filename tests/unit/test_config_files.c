/*
 * Unit tests for the configuration's files: which file the programs read
 * (config_pick_file), and the documents that describe the settings, held
 * against the settings table. tern.conf(5) (argv[1], the man page source)
 * must have an entry for every setting with the table's default and no
 * entry for a name that is not a setting; README.md (argv[2]) must list
 * every setting in its settings table with that default.
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
#include "config/config_int.h"
#include "util/buf.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const char *man_path, *readme_path;

/* The whole file, NUL terminated; fails the test when it cannot be read. */
static char *
slurp(const char *path)
{
    struct buf b = BUF_INIT;
    char chunk[4096];
    size_t n;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(&b, chunk, n);
    assert_int_equal(ferror(f), 0);
    fclose(f);
    buf_append_str(&b, "");
    return buf_take(&b);
}

/* Split text into its lines, in place; returns the count. */
static size_t
split_lines(char *text, char ***lines)
{
    size_t n = 0, cap = 0;
    *lines = NULL;
    for (char *p = text; *p != '\0';) {
        char *nl = strchr(p, '\n');
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            *lines = realloc(*lines, cap * sizeof(**lines));
            assert_non_null(*lines);
        }
        (*lines)[n++] = p;
        if (nl == NULL)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    return n;
}

/* The text a roff line shows, for the escapes the page uses: font changes
 * and \& dropped, \- as '-', \e as '\', \(aq as '\''. */
static void
roff_plain(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    while (*s != '\0' && o + 1 < cap) {
        if (s[0] == '\\' && s[1] == 'f' && s[2] != '\0') {
            s += 3;
        } else if (s[0] == '\\' && s[1] == '&') {
            s += 2;
        } else if (s[0] == '\\' && (s[1] == '-' || s[1] == 'e')) {
            out[o++] = s[1] == '-' ? '-' : '\\';
            s += 2;
        } else if (strncmp(s, "\\(aq", 4) == 0) {
            out[o++] = '\'';
            s += 4;
        } else {
            out[o++] = *s++;
        }
    }
    out[o] = '\0';
}

/* A documented setting: its name and the "Default:" line (plain text). */
struct entry {
    char name[64];
    char def_line[512];
};

/* The entries of the SETTINGS section: a ".TP" line followed by ".B name";
 * the entry runs to the next .TP, .SS or .SH. */
static size_t
man_entries(char **lines, size_t n, struct entry *out, size_t cap)
{
    size_t k = 0;
    bool in_settings = false;
    struct entry *cur = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *l = lines[i];
        if (strncmp(l, ".SH ", 4) == 0)
            in_settings = strcmp(l, ".SH SETTINGS") == 0;
        if (strncmp(l, ".SH", 3) == 0 || strncmp(l, ".SS", 3) == 0 || strcmp(l, ".TP") == 0)
            cur = NULL;
        if (!in_settings)
            continue;
        if (strcmp(l, ".TP") == 0 && i + 1 < n && strncmp(lines[i + 1], ".B ", 3) == 0 &&
            strchr(lines[i + 1] + 3, ' ') == NULL) {
            assert_true(k < cap);
            cur = &out[k++];
            memset(cur, 0, sizeof(*cur));
            roff_plain(lines[i + 1] + 3, cur->name, sizeof(cur->name));
            i++;
            continue;
        }
        if (cur != NULL && strncmp(l, "Default:", 8) == 0)
            roff_plain(l, cur->def_line, sizeof(cur->def_line));
    }
    return k;
}

/* Does the plain "Default: ..." line state def? It must start with
 * "Default: DEF" followed by the end, '.', ',' or a blank. */
static bool
default_matches(const char *line, const char *def)
{
    size_t n = strlen(def);
    if (strncmp(line, "Default: ", 9) != 0 || strncmp(line + 9, def, n) != 0)
        return false;
    return line[9 + n] == '\0' || strchr(". ,", line[9 + n]) != NULL;
}

static void
test_man_documents_every_setting(void **state)
{
    char *text = slurp(man_path), **lines;
    size_t n = split_lines(text, &lines);
    struct entry entries[256];
    size_t ne = man_entries(lines, n, entries, N(entries));
    unsigned bad = 0;
    for (size_t i = 0; i < config_n_settings; i++) {
        const struct cfg_setting *s = &config_settings[i];
        const struct entry *e = NULL;
        for (size_t j = 0; j < ne && e == NULL; j++)
            e = strcmp(entries[j].name, s->name) == 0 ? &entries[j] : NULL;
        if (e == NULL) {
            print_error("%s: no entry for the setting %s\n", man_path, s->name);
            bad++;
        } else if (e->def_line[0] == '\0') {
            print_error("%s: %s has no \"Default:\" line\n", man_path, s->name);
            bad++;
        } else if (s->def != NULL && s->def[0] != '\0' && !default_matches(e->def_line, s->def)) {
            print_error("%s: %s: \"%s\" does not state the default \"%s\"\n", man_path, s->name,
                e->def_line, s->def);
            bad++;
        }
    }
    free(lines);
    free(text);
    assert_int_equal(bad, 0);
}

static void
test_man_names_only_settings(void **state)
{
    char *text = slurp(man_path), **lines;
    size_t n = split_lines(text, &lines);
    struct entry entries[256];
    size_t ne = man_entries(lines, n, entries, N(entries));
    unsigned bad = 0;
    assert_true(ne > 0);
    for (size_t i = 0; i < ne; i++) {
        if (cfg_find(entries[i].name) == NULL) {
            print_error("%s: entry for %s, which is not a setting\n", man_path, entries[i].name);
            bad++;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(entries[i].name, entries[j].name) == 0) {
                print_error("%s: two entries for %s\n", man_path, entries[i].name);
                bad++;
            }
        }
    }
    free(lines);
    free(text);
    assert_int_equal(bad, 0);
}

/* The README's settings table: rows "| `name`[, `name`] | default | meaning |"
 * after the "### Settings" heading, up to the next heading. */
static void
test_readme_lists_every_setting(void **state)
{
    char *text = slurp(readme_path), **lines;
    size_t n = split_lines(text, &lines);
    unsigned bad = 0;
    for (size_t i = 0; i < config_n_settings; i++) {
        const struct cfg_setting *s = &config_settings[i];
        char want[80], def[200];
        bool in_table = false, found = false;
        snprintf(want, sizeof(want), "`%s`", s->name);
        snprintf(def, sizeof(def), "`%s`", s->def ? s->def : "");
        for (size_t j = 0; j < n && !found; j++) {
            const char *l = lines[j], *cell2, *cell3;
            if (strncmp(l, "#", 1) == 0)
                in_table = strcmp(l, "### Settings") == 0;
            if (!in_table || strncmp(l, "| ", 2) != 0 || (cell2 = strchr(l + 1, '|')) == NULL)
                continue;
            char first[200];
            snprintf(first, sizeof(first), "%.*s", (int)(cell2 - l), l);
            if (strstr(first, want) == NULL)
                continue;
            found = true;
            cell3 = strchr(cell2 + 1, '|');
            if (s->def != NULL && s->def[0] != '\0' && cell3 != NULL) {
                char second[200];
                snprintf(second, sizeof(second), "%.*s", (int)(cell3 - cell2), cell2);
                if (strstr(second, def) == NULL) {
                    print_error("%s: the row of %s does not give the default %s\n", readme_path,
                        s->name, def);
                    bad++;
                }
            }
        }
        if (!found) {
            print_error("%s: the settings table has no row for %s\n", readme_path, s->name);
            bad++;
        }
    }
    free(lines);
    free(text);
    assert_int_equal(bad, 0);
}

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
main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_man_documents_every_setting),
        cmocka_unit_test(test_man_names_only_settings),
        cmocka_unit_test(test_readme_lists_every_setting),
        cmocka_unit_test(test_pick_file),
    };
    if (argc != 3) {
        fprintf(stderr, "usage: %s TERN_CONF_5_SOURCE README_MD\n", argv[0]);
        return 2;
    }
    man_path = argv[1];
    readme_path = argv[2];
    return cmocka_run_group_tests(tests, NULL, NULL);
}
