/* test-isolate-proto.c — the frames between agentd and an isolated child: what is
 * encoded comes back identical (messages with headers, NULL strings, binary data),
 * frames split anywhere are only taken when complete, and every malformed payload a
 * hostile child could send (short, unterminated, oversized, too many headers) is
 * refused instead of read past its end. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "isolate_proto.h"
#include "test.h"

static void test_roundtrip(void) {
        iso_buf b = {0};
        org_header h[] = {{"k1", "v1"}, {"k2", ""}};
        org_msg m = {.subject = "a.b",
                     .reply = "_INBOX.x.1",
                     .headers = h,
                     .n_headers = 2,
                     .data = "bin\0ary",
                     .len = 7,
                     .origin = NULL,
                     .ack_token = 9,
                     .delivery_count = 2};
        size_t at = iso_put_begin(&b, ISO_P_CALL);
        iso_put_str(&b, "verb");
        iso_put_msg(&b, &m);
        CHECK_INT(iso_put_end(&b, at), 0);
        at = iso_put_begin(&b, ISO_P_TICK);
        CHECK_INT(iso_put_end(&b, at), 0);
        const char *argv[] = {"echo", "x", NULL};
        at = iso_put_begin(&b, ISO_C_EXEC);
        iso_put_strv(&b, argv);
        iso_put_strv(&b, NULL);
        iso_put_bytes(&b, NULL, 0);
        CHECK_INT(iso_put_end(&b, at), 0);

        uint32_t type;
        iso_rd r;
        CHECK_INT(iso_next_frame(&b, &type, &r), 1);
        CHECK_INT(type, ISO_P_CALL);
        CHECK_STR(iso_get_str(&r), "verb");
        org_msg g;
        org_header gh[ISO_HEADERS_MAX];
        iso_get_msg(&r, &g, gh);
        CHECK(!r.bad);
        CHECK_STR(g.subject, "a.b");
        CHECK_STR(g.reply, "_INBOX.x.1");
        CHECK(g.origin == NULL);
        CHECK_INT(g.n_headers, 2);
        CHECK_STR(g.headers[1].key, "k2");
        CHECK_STR(g.headers[1].value, "");
        CHECK_INT(g.len, 7);
        CHECK(memcmp(g.data, "bin\0ary", 8) == 0); /* and the NUL after the data */
        CHECK_INT(g.ack_token, 9);
        CHECK(r.p == r.end);

        CHECK_INT(iso_next_frame(&b, &type, &r), 1);
        CHECK_INT(type, ISO_P_TICK);
        CHECK(r.p == r.end);

        CHECK_INT(iso_next_frame(&b, &type, &r), 1);
        bool null;
        const char **v = iso_get_strv(&r, &null);
        CHECK(!null && v && v[2] == NULL);
        CHECK_STR(v[1], "x");
        free(v);
        CHECK(iso_get_strv(&r, &null) == NULL && null);
        CHECK(iso_get_bytes(&r, NULL) == NULL && !r.bad);
        CHECK_INT(iso_next_frame(&b, &type, &r), 0);
        iso_buf_done(&b);
}

/* A frame is only taken once all of it is there, wherever the reads cut it. */
static void test_partial(void) {
        iso_buf whole = {0}, b = {0};
        size_t at = iso_put_begin(&whole, ISO_C_PUB);
        org_msg m = {.subject = "x", .data = "12345", .len = 5};
        iso_put_msg(&whole, &m);
        CHECK_INT(iso_put_end(&whole, at), 0);
        for (size_t i = 0; i < whole.len; i++) {
                uint32_t type;
                iso_rd r;
                CHECK_INT(iso_next_frame(&b, &type, &r), 0);
                CHECK_INT(iso_buf_reserve(&b, 1), 0);
                b.data[b.len++] = whole.data[i];
        }
        uint32_t type;
        iso_rd r;
        CHECK_INT(iso_next_frame(&b, &type, &r), 1);
        CHECK_INT(type, ISO_C_PUB);
        iso_buf_done(&whole);
        iso_buf_done(&b);
}

static void test_hostile(void) {
        /* a length beyond ISO_FRAME_MAX */
        iso_buf b = {0};
        uint32_t h[2] = {ISO_FRAME_MAX + 1, ISO_C_PUB};
        CHECK_INT(iso_buf_reserve(&b, sizeof h), 0);
        memcpy(b.data, h, sizeof h);
        b.len = sizeof h;
        uint32_t type;
        iso_rd r;
        CHECK_INT(iso_next_frame(&b, &type, &r), -EBADMSG);
        iso_buf_done(&b);

        /* a string that claims more than the payload has, one without its NUL, one with a
         * NUL inside, a short integer */
        uint8_t p1[] = {10, 0, 0, 0, 'a', 'b', 0};
        iso_rd r1 = {p1, p1 + sizeof p1};
        CHECK(iso_get_str(&r1) == NULL && r1.bad);
        uint8_t p2[] = {2, 0, 0, 0, 'a', 'b', 'c'};
        iso_rd r2 = {p2, p2 + sizeof p2};
        CHECK(iso_get_str(&r2) == NULL && r2.bad);
        uint8_t p3[] = {3, 0, 0, 0, 'a', 0, 'c', 0};
        iso_rd r3 = {p3, p3 + sizeof p3};
        CHECK(iso_get_str(&r3) == NULL && r3.bad);
        uint8_t p4[] = {1, 2, 3};
        iso_rd r4 = {p4, p4 + sizeof p4};
        CHECK(iso_get_u64(&r4) == 0 && r4.bad);
        CHECK(iso_get_str(&r4) == NULL); /* once bad, always bad */

        /* too many headers */
        iso_buf m = {0};
        iso_put_str(&m, "s");
        iso_put_str(&m, NULL);
        iso_put_str(&m, NULL);
        iso_put_u64(&m, ISO_HEADERS_MAX + 1);
        iso_rd rm = {m.data, m.data + m.len};
        org_msg g;
        org_header gh[ISO_HEADERS_MAX];
        iso_get_msg(&rm, &g, gh);
        CHECK(rm.bad);
        iso_buf_done(&m);

        /* a message cut short */
        iso_buf c = {0};
        org_msg msg = {.subject = "a", .data = "xyz", .len = 3};
        iso_put_msg(&c, &msg);
        for (size_t n = 0; n < c.len; n++) {
                iso_rd rc = {c.data, c.data + n};
                iso_get_msg(&rc, &g, gh);
                CHECK(rc.bad);
        }
        iso_buf_done(&c);
}

int main(void) {
        RUN(test_roundtrip);
        RUN(test_partial);
        RUN(test_hostile);
        return 0;
}
