/* test-example.c — the example plugin against the fake host: init subscribes to the
 * configured pattern, tick publishes a heartbeat, handle counts, verbs answer, state
 * survives save/restore, verify reports, a running sleep_echo is adopted by the state
 * that restores the blob and completes there (the old one never hears of it). */
#include <errno.h>

#include <jansson.h>

#include "fakehost.h"
#include "test.h"

extern const org_plugin organism_plugin;

static void test_lifecycle(void) {
        org_ctx ctx;
        fake_ctx_init(&ctx, "ex1",
                      "{\"heartbeat_subject\":\"agent.heartbeat\",\"subscribe\":\"example.>\",\"greeting\":\"hi\"}");
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        CHECK_INT(ctx.n_subscriptions, 1);
        CHECK_STR(ctx.subscriptions[0], "example.>");

        CHECK_INT(organism_plugin.tick(state), 0);
        const char *beat = fake_last_published(&ctx, "agent.heartbeat");
        CHECK(beat);
        json_error_t e;
        json_t *o = json_loads(beat, 0, &e);
        CHECK(o);
        CHECK_STR(json_string_value(json_object_get(o, "greeting")), "hi");
        CHECK_STR(json_string_value(json_object_get(o, "instance")), "ex1");
        CHECK(json_string_value(json_object_get(o, "ts")));
        CHECK_INT(json_integer_value(json_object_get(o, "beat")), 1);
        json_decref(o);

        for (int i = 0; i < 5; i++)
                CHECK_INT(fake_deliver(&organism_plugin, state, "example.x", "{}"), 0);
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "count", "{}", &reply), 0);
        o = json_loads(reply, 0, &e);
        CHECK_INT(json_integer_value(json_object_get(o, "count")), 5);
        CHECK_STR(json_string_value(json_object_get(o, "last_subject")), "example.x");
        json_decref(o);
        free(reply);

        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "nosuchverb", "{}", &reply), -EOPNOTSUPP);

        /* save/restore hands the count to a new state */
        void *blob = NULL;
        size_t len = 0;
        CHECK_INT(organism_plugin.save_state(state, &blob, &len), 0);
        void *state2 = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state2), 0);
        CHECK_INT(organism_plugin.restore_state(state2, blob, len), 0);
        free(blob);
        CHECK_INT(fake_call(&organism_plugin, state2, &ctx, "count", "{}", &reply), 0);
        CHECK_CONTAINS(reply, "\"count\":5");
        free(reply);
        CHECK_INT(organism_plugin.restore_state(state2, "x", 1), -EINVAL);

        char *v = NULL;
        CHECK_INT(organism_plugin.verify(state2, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":true");
        free(v);

        CHECK_INT(organism_plugin.tick(state2), 0);
        CHECK(fake_metric(&ctx, "example_messages_counted") == 5.0);

        organism_plugin.fini(state);
        organism_plugin.fini(state2);
        fake_ctx_done(&ctx);
}

static void test_descriptor(void) {
        CHECK_INT(organism_plugin.abi_version, ORG_PLUGIN_ABI_VERSION);
        CHECK_INT(organism_plugin.struct_size, sizeof(org_plugin));
        CHECK_STR(organism_plugin.name, "example");
        size_t n = 0;
        for (const org_config_entry *e = organism_plugin.config_map; e->key; e++)
                n++;
        CHECK_INT(n, 10);
        bool reset_mutating = false;
        for (const org_verb *v = organism_plugin.verbs; v->name; v++)
                if (strcmp(v->name, "reset") == 0)
                        reset_mutating = v->mutating;
        CHECK(reset_mutating);
}

/* The fake host's exec_adopt re-points a pending exec: the reload as the plugin sees it. */
static void test_adopt(void) {
        org_ctx ctx;
        fake_ctx_init(&ctx, "ex1", "{\"heartbeat_subject\":\"hb\",\"subscribe\":\"example.>\",\"adopt_execs\":true}");
        ctx.exec_deferred = true;
        void *old = NULL, *new = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &old), 0);
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, old, &ctx, "sleep_echo", "{\"seconds\":3,\"text\":\"t\"}", &reply), 0);
        CHECK_CONTAINS(reply, "\"id\":1");
        free(reply);
        CHECK_STR(ctx.execs[0].argv[0], "sh");
        CHECK_STR(ctx.execs[0].argv[5], "t"); /* an argument, not script text */

        void *blob = NULL;
        size_t len = 0;
        CHECK_INT(organism_plugin.save_state(old, &blob, &len), 0);
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &new), 0);
        CHECK_INT(organism_plugin.restore_state(new, blob, len), 0);
        free(blob);
        organism_plugin.fini(old); /* frees its own run records; the command is the new one's */
        CHECK(fake_exec_complete(&ctx, 0, "begin\nt\n"));
        CHECK_INT(fake_call(&organism_plugin, new, &ctx, "execs", "{}", &reply), 0);
        CHECK_CONTAINS(reply, "\"running\":[]");
        CHECK_CONTAINS(reply, "\"out\":\"begin\\nt\\n\"");
        CHECK_CONTAINS(reply, "\"restores\":1");
        free(reply);
        organism_plugin.fini(new);
        fake_ctx_done(&ctx);
}

int main(void) {
        RUN(test_descriptor);
        RUN(test_adopt);
        RUN(test_lifecycle);
        return 0;
}
