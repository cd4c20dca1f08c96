/* test-yamlnode.c — the YAML reader: positions of nodes, typed JSON, and the inputs it
 * must refuse with a position (syntax errors, anchors, aliases, duplicate keys, deep
 * nesting, several documents). */
#include <errno.h>

#include "test.h"
#include "util.h"
#include "yamlnode.h"

static ynode *parse_ok(const char *text) {
        diag d;
        ynode *n = NULL;
        diag_init(&d, "t.yaml");
        int r = ynode_parse_string(text, strlen(text), &n, &d);
        if (r < 0) {
                diag_print(&d, stderr);
                fprintf(stderr, "parse failed: %d\n", r);
                exit(1);
        }
        CHECK_INT(d.n, 0);
        diag_done(&d);
        return n;
}

/* Parses text that must fail; returns the joined diagnostics (malloc'd). */
static char *parse_fail(const char *text) {
        diag d;
        ynode *n = (ynode *)0x1; /* must stay untouched */
        diag_init(&d, "t.yaml");
        int r = ynode_parse_string(text, strlen(text), &n, &d);
        CHECK_INT(r, -EINVAL);
        CHECK(n == (ynode *)0x1);
        CHECK(d.n > 0);
        char *s = diag_join(&d);
        diag_done(&d);
        return s;
}

static void test_positions(void) {
        ynode *n = parse_ok("# comment\n"
                            "agent:\n"
                            "  name: host1\n"
                            "  dirs: [a, \"b\"]\n"
                            "list:\n"
                            "  - x\n"
                            "  - {k: v}\n");
        const ynode *k, *agent, *v;
        CHECK_INT(n->kind, YNODE_MAP);
        CHECK_INT(n->n, 2);
        agent = ynode_get(n, "agent", &k);
        CHECK(agent);
        CHECK_INT(k->line, 2);
        CHECK_INT(k->col, 1);
        CHECK_INT(agent->kind, YNODE_MAP);
        v = ynode_get(agent, "name", &k);
        CHECK_STR(v->scalar, "host1");
        CHECK_INT(k->line, 3);
        CHECK_INT(k->col, 3);
        CHECK_INT(v->line, 3);
        CHECK_INT(v->col, 9);
        CHECK(v->plain);
        v = ynode_get(agent, "dirs", NULL);
        CHECK_INT(v->kind, YNODE_SEQ);
        CHECK_INT(v->n, 2);
        CHECK_INT(v->values[1]->col, 13);
        CHECK(!v->values[1]->plain);
        v = ynode_get(n, "list", NULL);
        CHECK_INT(v->values[1]->kind, YNODE_MAP);
        CHECK_INT(v->values[1]->line, 7);
        CHECK(ynode_get(n, "nope", NULL) == NULL);
        CHECK(ynode_get(v, "x", NULL) == NULL); /* not a map */
        ynode_free(n);
}

static void test_json(void) {
        ynode *n = parse_ok("a: 12\n"
                            "b: \"12\"\n"
                            "c: true\n"
                            "d: ~\n"
                            "e:\n"
                            "f: 1.5\n"
                            "g: 0x1f\n"
                            "h: -7\n"
                            "i: yes\n"
                            "j: [1, two, null]\n"
                            "k: {x: False}\n"
                            "l: 99999999999999999999\n"
                            "m: .inf\n"
                            "n: !!str 5\n"
                            "o: 1e3\n");
        json_t *j = ynode_to_json(n);
        char *s = json_dumps(j, JSON_COMPACT);
        CHECK_STR(s, "{\"a\":12,\"b\":\"12\",\"c\":true,\"d\":null,\"e\":null,\"f\":1.5,\"g\":31,\"h\":-7,"
                     "\"i\":\"yes\",\"j\":[1,\"two\",null],\"k\":{\"x\":false},\"l\":1e20,"
                     "\"m\":\".inf\",\"n\":\"5\",\"o\":1000.0}");
        free(s);
        json_decref(j);
        CHECK(ynode_is_null(ynode_get(n, "d", NULL)));
        CHECK(ynode_is_null(ynode_get(n, "e", NULL)));
        CHECK(ynode_is_null(NULL));
        CHECK(!ynode_is_null(ynode_get(n, "b", NULL)));
        ynode_free(n);
}

static void test_empty(void) {
        const char *texts[] = {"", "# only a comment\n", "---\n", "~\n"};
        for (size_t i = 0; i < ELEMENTSOF(texts); i++) {
                ynode *n = parse_ok(texts[i]);
                CHECK_INT(n->kind, YNODE_MAP);
                CHECK_INT(n->n, 0);
                ynode_free(n);
        }
        ynode_free(NULL);
}

static void test_errors(void) {
        char *s;

        s = parse_fail("a: 1\nb: [1, 2\n");
        CHECK_CONTAINS(s, "t.yaml:3:1: ");
        free(s);

        s = parse_fail("a:\n  b: 1\n c: 2\n");
        CHECK_CONTAINS(s, "t.yaml:3:");
        free(s);

        s = parse_fail("a: \"unterminated\n");
        CHECK_CONTAINS(s, "t.yaml:");
        free(s);

        s = parse_fail("a: 1\nb: 2\na: 3\n");
        CHECK_CONTAINS(s, "t.yaml:3:1: duplicate key \"a\" (first at line 1)");
        free(s);

        /* Every fault that leaves the tree whole is reported, not only the first. */
        s = parse_fail("base: &b {x: 1}\n"
                       "copy: *b\n"
                       "m:\n"
                       "  k: 1\n"
                       "  k: 2\n");
        CHECK_CONTAINS(s, "t.yaml:1:7: anchors (&b) are not supported");
        CHECK_CONTAINS(s, "t.yaml:2:7: aliases (*b) are not supported");
        CHECK_CONTAINS(s, "t.yaml:5:3: duplicate key \"k\"");
        free(s);

        s = parse_fail("? [a, b]\n: c\n");
        CHECK_CONTAINS(s, "t.yaml:1:3: mapping keys must be plain strings");
        free(s);

        s = parse_fail("a: 1\n---\nb: 2\n");
        CHECK_CONTAINS(s, "t.yaml:2:1: only one YAML document is allowed");
        free(s);

        s = parse_fail("a: \"x\\0y\"\n");
        CHECK_CONTAINS(s, "NUL character");
        free(s);
}

static void test_depth(void) {
        char buf[512];
        size_t o = 0;

        /* 64 levels pass, 65 do not. */
        for (int i = 0; i < 63; i++)
                buf[o++] = '[';
        for (int i = 0; i < 63; i++)
                buf[o++] = ']';
        buf[o] = '\0';
        ynode *n = parse_ok(buf);
        CHECK_INT(n->kind, YNODE_SEQ);
        ynode_free(n);

        o = 0;
        for (int i = 0; i < 64; i++)
                buf[o++] = '[';
        for (int i = 0; i < 64; i++)
                buf[o++] = ']';
        buf[o] = '\0';
        n = parse_ok(buf);
        ynode_free(n);

        o = 0;
        for (int i = 0; i < 65; i++)
                buf[o++] = '[';
        for (int i = 0; i < 65; i++)
                buf[o++] = ']';
        buf[o] = '\0';
        char *s = parse_fail(buf);
        CHECK_CONTAINS(s, "nesting deeper than 64 levels");
        free(s);

        /* Far deeper than the stack would allow if anything recursed without a bound. */
        size_t deep = 200000;
        char *big = malloc(deep + 1);
        CHECK(big);
        memset(big, '[', deep);
        big[deep] = '\0';
        s = parse_fail(big);
        CHECK_CONTAINS(s, "nesting deeper");
        free(s);
        free(big);
}

static void test_limits(void) {
        /* Too large a text is refused before libyaml sees it. */
        size_t len = (1u << 20) + 1;
        char *big = malloc(len + 1);
        CHECK(big);
        memset(big, '#', len);
        big[len] = '\0';
        char *s = parse_fail(big);
        CHECK_CONTAINS(s, "too large");
        free(s);
        free(big);

        /* Many duplicate keys stay cheap (sorted, not compared pairwise). */
        size_t n = 20000;
        char *text = malloc(n * 5 + 1);
        CHECK(text);
        for (size_t i = 0; i < n; i++)
                memcpy(text + i * 5, "a: 1\n", 5);
        text[n * 5] = '\0';
        diag d;
        ynode *y = NULL;
        diag_init(&d, "t.yaml");
        CHECK_INT(ynode_parse_string(text, n * 5, &y, &d), -EINVAL);
        CHECK_INT(d.n, n - 1);
        diag_done(&d);
        free(text);
}

static void test_file(void) {
        char path[] = "/tmp/test-yamlnode-XXXXXX";
        int fd = mkstemp(path);
        CHECK(fd >= 0);
        const char *text = "x: [1, 2]\n";
        CHECK_INT(write(fd, text, strlen(text)), (long long)strlen(text));
        close(fd);

        diag d;
        ynode *n = NULL;
        diag_init(&d, path);
        CHECK_INT(ynode_parse_file(path, &n, &d), 0);
        CHECK_INT(ynode_get(n, "x", NULL)->n, 2);
        ynode_free(n);
        unlink(path);
        n = NULL;
        CHECK_INT(ynode_parse_file(path, &n, &d), -ENOENT);
        CHECK(n == NULL);
        diag_done(&d);
}

int main(void) {
        RUN(test_positions);
        RUN(test_json);
        RUN(test_empty);
        RUN(test_errors);
        RUN(test_depth);
        RUN(test_limits);
        RUN(test_file);
        return 0;
}
