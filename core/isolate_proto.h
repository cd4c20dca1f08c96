/* isolate_proto.h — the wire between agentd and the child process of an isolated
 * instance: length-prefixed binary frames on a socketpair, plus one shared memory page
 * where the child says which hook it is running since when (so the parent can kill a
 * hook past hook_timeout and name it, without a syscall per hook).
 *
 * A frame is a header {u32 payload length, u32 type} and a payload of fields: u64
 * integers (host byte order: both ends are the same binary) and strings/blobs as u32
 * length + bytes + a NUL (so a decoded string is usable in place; length ISO_NULL_LEN
 * encodes a NULL pointer). Many frames go out per write and come in per read. The
 * parent checks every frame from the child: the child runs untrusted code. */
#ifndef CORE_ISOLATE_PROTO_H
#define CORE_ISOLATE_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <organism/msg.h>

#define ISO_FRAME_MAX   (64u << 20)
#define ISO_NULL_LEN    UINT32_MAX
#define ISO_HEADERS_MAX 256

/* parent -> child */
enum {
        ISO_P_HELLO = 1, /* json text, restore blob (NULL: none) */
        ISO_P_MSG,       /* message: handle */
        ISO_P_CALL,      /* verb, message: call */
        ISO_P_TICK,
        ISO_P_REPLY,     /* creq, error, has_msg, [message] */
        ISO_P_EXEC_DONE, /* exec id, status, timed_out, dry_run, out, out_trunc, err, err_trunc, duration */
        ISO_P_ANSWER,    /* rpc id, r, then per call: value | rows | (exec) the exec id */
        ISO_P_SAVE,      /* -> ISO_C_SAVED */
        ISO_P_VERIFY,    /* -> ISO_C_VERIFIED */
        ISO_P_FINI,      /* fini, then exit 0 */
        ISO_P_DURABLE,   /* message of a durable consumer (ack_token set): handle, not counted */
};

/* child -> parent */
enum {
        ISO_C_READY = 64,     /* r, error text */
        ISO_C_PUB,            /* subject, n headers, (key, value)..., data */
        ISO_C_SUB,            /* csid, pattern */
        ISO_C_UNSUB,          /* csid */
        ISO_C_REQ,            /* creq, subject, data, timeout_ms */
        /* Exec ids are the parent's (unique in the instance, across children): the
         * answer to ISO_C_EXEC carries the id the child uses from then on. */
        ISO_C_EXEC,           /* rpc, argv, env, cwd, uid, gid, flags, timeout, capture_max, stdin */
        ISO_C_EXEC_CANCEL,    /* exec id */
        ISO_C_METRIC_SET,     /* name, type, value bits, help */
        ISO_C_METRIC_ADD,     /* name, delta bits, help */
        ISO_C_STORE_EXEC,     /* rpc, sql, n, params... */
        ISO_C_STORE_QUERY,    /* rpc, sql, n, params... */
        ISO_C_KV_GET,         /* rpc, key */
        ISO_C_KV_SET,         /* rpc, key, value */
        ISO_C_ACK,            /* messages done so far */
        ISO_C_SAVED,          /* r, blob */
        ISO_C_VERIFIED,       /* r, json text */
        ISO_C_PUB_DURABLE,    /* rpc, subject, msg id, data -> answer r, then ISO_P_REPLY */
        ISO_C_CONSUME,        /* rpc, stream, durable, filter, max_deliver, ack_wait_ms, max_pending */
        ISO_C_CONSUME_CANCEL, /* id */
        ISO_C_DACK,           /* ack token, kind, delay_ms */
        /* A reload's new child re-attaches a command of the child it replaces (which the
         * parent owns); only during its init/restore. */
        ISO_C_EXEC_ADOPT, /* rpc, exec id -> answer r */
};

/* What the child is running (the shared page's busy_kind); 0 = idle. */
enum {
        ISO_HOOK_NONE = 0,
        ISO_HOOK_INIT,
        ISO_HOOK_TICK,
        ISO_HOOK_HANDLE,
        ISO_HOOK_CALL,
        ISO_HOOK_VERIFY,
        ISO_HOOK_SAVE,
        ISO_HOOK_RESTORE,
        ISO_HOOK_FINI,
        ISO_HOOK_TIMER,
        ISO_HOOK_IO,
        ISO_HOOK_REPLY,
        ISO_HOOK_EXEC_DONE,
        ISO_HOOK_HANDLE_DURABLE, /* handle, of a durable message (not one of the counted ones) */
};
const char *iso_hook_name(unsigned kind);

typedef struct iso_shm {
        uint32_t busy_kind; /* written by the child before and after each hook */
        uint32_t pad;
        uint64_t busy_since_us; /* CLOCK_MONOTONIC */
        uint64_t msgs_done;     /* ISO_P_MSG/ISO_P_CALL frames finished */
} iso_shm;

typedef struct iso_buf {
        uint8_t *data;
        size_t len, cap;
        size_t off; /* input: bytes already consumed */
        bool oom;
} iso_buf;

void iso_buf_done(iso_buf *b);
int iso_buf_reserve(iso_buf *b, size_t extra);
/* Drops consumed bytes (off) from the front. */
void iso_buf_compact(iso_buf *b);

/* Encoding: begin returns the frame's offset; end fills its length (and fails with
 * -ENOMEM when anything in between could not be stored, leaving b as before begin). */
size_t iso_put_begin(iso_buf *b, uint32_t type);
int iso_put_end(iso_buf *b, size_t at);
void iso_put_u64(iso_buf *b, uint64_t v);
void iso_put_bytes(iso_buf *b, const void *p, size_t len); /* p NULL: a NULL */
void iso_put_str(iso_buf *b, const char *s);
void iso_put_msg(iso_buf *b, const org_msg *m);
void iso_put_strv(iso_buf *b, const char *const *v); /* count then strings; NULL = count 0 and a flag */

/* Decoding a payload; any fault sets bad and returns zero/NULL from then on. */
typedef struct iso_rd {
        const uint8_t *p, *end;
        bool bad;
} iso_rd;

uint64_t iso_get_u64(iso_rd *r);
const char *iso_get_bytes(iso_rd *r, size_t *ret_len); /* NUL-terminated; NULL for a NULL */
const char *iso_get_str(iso_rd *r);
/* Fills m; headers go to hdrs (ISO_HEADERS_MAX). */
void iso_get_msg(iso_rd *r, org_msg *m, org_header *hdrs);
/* A NULL-terminated array of pointers into the frame, malloc'd (the strings are not). */
const char **iso_get_strv(iso_rd *r, bool *ret_null);

/* The next complete frame in b (from b->off), or 0 when none is complete yet; -EBADMSG
 * for a frame larger than ISO_FRAME_MAX. Advances b->off past it. */
int iso_next_frame(iso_buf *b, uint32_t *ret_type, iso_rd *ret_payload);

/* Writes all of b (from off) on a non-blocking fd, waiting with poll; for the child
 * and for the parent's short synchronous exchanges. */
int iso_write_all(int fd, iso_buf *b, int timeout_ms);

#endif
