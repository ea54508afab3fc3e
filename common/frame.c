/* Control-plane framing: encoder, validator and incremental decoder. */
#define DUET_LOG_COMPONENT "frame"
#include "frame.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "log.h"

static const char *const frame_type_names[FRAME_TYPE_MAX] = {
    [FRAME_HELLO] = "HELLO",             [FRAME_HELLO_OK] = "HELLO_OK",
    [FRAME_HEARTBEAT] = "HEARTBEAT",     [FRAME_RESERVE] = "RESERVE",
    [FRAME_NACK] = "NACK",               [FRAME_PREFILL] = "PREFILL",
    [FRAME_FIRST_TOKEN] = "FIRST_TOKEN", [FRAME_TOKENS] = "TOKENS",
    [FRAME_FINISH] = "FINISH",           [FRAME_ABORT] = "ABORT",
    [FRAME_ERROR] = "ERROR",             [FRAME_DRAIN] = "DRAIN",
};

/* Fields each type must carry besides "t" and "v"; docs/protocol.md has the
 * full schema. Handlers check optional fields and value ranges themselves. */
static const char *const frame_required[FRAME_TYPE_MAX][4] = {
    [FRAME_HELLO]       = {"role", "node", "token", NULL},
    [FRAME_HELLO_OK]    = {"node", NULL},
    [FRAME_RESERVE]     = {"rid", NULL},
    [FRAME_NACK]        = {"rid", NULL},
    [FRAME_PREFILL]     = {"rid", "tokens", NULL},
    [FRAME_FIRST_TOKEN] = {"rid", "token", NULL},
    [FRAME_TOKENS]      = {"items", NULL},
    [FRAME_FINISH]      = {"rid", "reason", NULL},
    [FRAME_ABORT]       = {"rid", NULL},
    [FRAME_ERROR]       = {"msg", NULL},
};

const char *frame_type_str(frame_type_t type)
{
    if (type <= 0 || type >= FRAME_TYPE_MAX)
        return "UNKNOWN";
    return frame_type_names[type];
}

/* --- encoder ------------------------------------------------------------ */

void frame_writer_init(frame_writer_t *w)
{
    msgpack_sbuffer_init(&w->sbuf);
    msgpack_packer_init(&w->pk, &w->sbuf, msgpack_sbuffer_write);
    w->declared = w->written = 0;
}

void frame_writer_destroy(frame_writer_t *w)
{
    msgpack_sbuffer_destroy(&w->sbuf);
}

static void frame_pack_cstr(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void frame_begin(frame_writer_t *w, frame_type_t type, uint32_t nfields)
{
    static const uint8_t hdr[FRAME_HEADER_SIZE];

    msgpack_sbuffer_clear(&w->sbuf);
    /* room for the length prefix, filled in by frame_end */
    msgpack_sbuffer_write(&w->sbuf, (const char *)hdr, sizeof(hdr));
    msgpack_pack_map(&w->pk, nfields + 2);
    frame_pack_cstr(&w->pk, "t", 1);
    msgpack_pack_uint32(&w->pk, (uint32_t)type);
    frame_pack_cstr(&w->pk, "v", 1);
    msgpack_pack_uint32(&w->pk, FRAME_PROTO_VERSION);
    w->declared = nfields;
    w->written = 0;
}

void frame_key(frame_writer_t *w, const char *key)
{
    frame_pack_cstr(&w->pk, key, strlen(key));
    w->written++;
}

void frame_put_u64(frame_writer_t *w, const char *key, uint64_t v)
{
    frame_key(w, key);
    msgpack_pack_uint64(&w->pk, v);
}

void frame_put_i64(frame_writer_t *w, const char *key, int64_t v)
{
    frame_key(w, key);
    msgpack_pack_int64(&w->pk, v);
}

void frame_put_f64(frame_writer_t *w, const char *key, double v)
{
    frame_key(w, key);
    msgpack_pack_double(&w->pk, v);
}

void frame_put_bool(frame_writer_t *w, const char *key, bool v)
{
    frame_key(w, key);
    if (v)
        msgpack_pack_true(&w->pk);
    else
        msgpack_pack_false(&w->pk);
}

void frame_put_str(frame_writer_t *w, const char *key, const char *s)
{
    frame_put_strn(w, key, s, strlen(s));
}

void frame_put_strn(frame_writer_t *w, const char *key, const char *s, size_t n)
{
    frame_key(w, key);
    frame_pack_cstr(&w->pk, s, n);
}

void frame_put_bin(frame_writer_t *w, const char *key, const void *p, size_t n)
{
    frame_key(w, key);
    msgpack_pack_bin(&w->pk, n);
    msgpack_pack_bin_body(&w->pk, p, n);
}

void frame_put_u32_array(frame_writer_t *w, const char *key,
                         const uint32_t *v, size_t n)
{
    frame_key(w, key);
    msgpack_pack_array(&w->pk, n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_uint32(&w->pk, v[i]);
}

duet_status_t frame_end_buf(frame_writer_t *w, size_t max_frame,
                            const uint8_t **data_p, size_t *len_p)
{
    size_t payload;
    uint8_t *p = (uint8_t *)w->sbuf.data;

    if (max_frame == 0)
        max_frame = FRAME_DEFAULT_MAX;
    if (w->written != w->declared) {
        log_error("frame declared %u fields but wrote %u", w->declared, w->written);
        return DUET_ERR_INTERNAL;
    }
    payload = w->sbuf.size - FRAME_HEADER_SIZE;
    if (payload > max_frame)
        return DUET_ERR_TOO_BIG;
    p[0] = (uint8_t)(payload >> 24);
    p[1] = (uint8_t)(payload >> 16);
    p[2] = (uint8_t)(payload >> 8);
    p[3] = (uint8_t)payload;
    *data_p = p;
    *len_p = w->sbuf.size;
    return DUET_OK;
}

duet_status_t frame_end(frame_writer_t *w, struct evbuffer *out, size_t max_frame)
{
    const uint8_t *data;
    size_t len;

    CHECK(frame_end_buf(w, max_frame, &data, &len));
    if (evbuffer_add(out, data, len) != 0)
        return DUET_ERR_NOMEM;
    return DUET_OK;
}

/* --- validator ---------------------------------------------------------- */

static uint64_t frame_be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;

    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

duet_status_t frame_validate_msgpack(const uint8_t *data, size_t len,
                                     unsigned max_depth)
{
    uint64_t stack[FRAME_MAX_DEPTH + 1];
    unsigned depth = 0;
    size_t pos = 0;

    if (max_depth > FRAME_MAX_DEPTH)
        max_depth = FRAME_MAX_DEPTH;
    stack[0] = 1;   /* exactly one top-level object */
    for (;;) {
        uint8_t b;
        uint64_t items = 0, skip = 0;
        unsigned lenbytes = 0;
        int container = 0;

        while (stack[depth] == 0) {
            if (depth == 0)
                return pos == len ? DUET_OK : DUET_ERR_PROTO;
            depth--;
        }
        stack[depth]--;
        if (pos >= len)
            return DUET_ERR_PROTO;
        b = data[pos++];
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            continue;
        } else if (b <= 0x8f) {
            items = 2ull * (b & 0x0f); container = 1;
        } else if (b <= 0x9f) {
            items = b & 0x0f; container = 1;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;
            case 0xc5: case 0xda: lenbytes = 2; break;
            case 0xc6: case 0xdb: lenbytes = 4; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xdc: case 0xde: lenbytes = 2; container = 1; break;
            case 0xdd: case 0xdf: lenbytes = 4; container = 1; break;
            default:
                return DUET_ERR_PROTO;   /* 0xc1 and ext types: not used */
            }
            if (lenbytes) {
                if (len - pos < lenbytes)
                    return DUET_ERR_PROTO;
                if (container)
                    items = frame_be(data + pos, lenbytes) * ((b == 0xde || b == 0xdf) ? 2 : 1);
                else
                    skip = frame_be(data + pos, lenbytes);
                pos += lenbytes;
            }
        }
        if (container) {
            /* every item takes at least one byte */
            if (items > len - pos)
                return DUET_ERR_PROTO;
            if (items == 0)
                continue;
            if (depth + 1 > max_depth)
                return DUET_ERR_PROTO;
            stack[++depth] = items;
        } else {
            if (skip > len - pos)
                return DUET_ERR_PROTO;
            pos += skip;
        }
    }
}

/* --- decoder ------------------------------------------------------------ */

static int frame_key_eq(const msgpack_object *k, const char *key)
{
    size_t n = strlen(key);

    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, key, n) == 0;
}

const msgpack_object *frame_get(const frame_msg_t *msg, const char *key)
{
    for (uint32_t i = 0; i < msg->map->size; i++)
        if (frame_key_eq(&msg->map->ptr[i].key, key))
            return &msg->map->ptr[i].val;
    return NULL;
}

/* Parse the payload already copied into msg->payload. */
static duet_status_t frame_parse(frame_msg_t *msg, size_t size)
{
    const msgpack_object *o;
    size_t off = 0;
    uint64_t t, v;

    if (frame_validate_msgpack((const uint8_t *)msg->payload, size,
                               FRAME_MAX_DEPTH) != DUET_OK)
        return DUET_ERR_PROTO;
    msgpack_unpacked_init(&msg->up);
    if (msgpack_unpack_next(&msg->up, msg->payload, size, &off) !=
            MSGPACK_UNPACK_SUCCESS || off != size)
        return DUET_ERR_PROTO;
    if (msg->up.data.type != MSGPACK_OBJECT_MAP)
        return DUET_ERR_PROTO;
    msg->map = &msg->up.data.via.map;
    for (uint32_t i = 0; i < msg->map->size; i++)
        if (msg->map->ptr[i].key.type != MSGPACK_OBJECT_STR)
            return DUET_ERR_PROTO;
    if (frame_get_u64(msg, "v", &v) != DUET_OK)
        return DUET_ERR_PROTO;
    if (v != FRAME_PROTO_VERSION)
        return DUET_ERR_MISMATCH;
    if (frame_get_u64(msg, "t", &t) != DUET_OK || t == 0 || t >= FRAME_TYPE_MAX)
        return DUET_ERR_PROTO;
    msg->type = (frame_type_t)t;
    msg->version = (uint32_t)v;
    for (int i = 0; i < 4 && frame_required[t][i] != NULL; i++) {
        o = frame_get(msg, frame_required[t][i]);
        if (o == NULL)
            return DUET_ERR_PROTO;
    }
    return DUET_OK;
}

static duet_status_t frame_decode_payload(frame_msg_t *msg, const uint8_t *src,
                                          struct evbuffer *in, size_t size)
{
    duet_status_t status;

    memset(msg, 0, sizeof(*msg));
    msg->payload = malloc(size ? size : 1);
    if (msg->payload == NULL)
        return DUET_ERR_NOMEM;
    if (src != NULL)
        memcpy(msg->payload, src, size);
    else if (evbuffer_remove(in, msg->payload, size) != (int)size)
        return DUET_ERR_INTERNAL;
    msg->size = size;
    status = frame_parse(msg, size);
    if (status != DUET_OK)
        frame_msg_release(msg);
    return status;
}

duet_status_t frame_decode(struct evbuffer *in, size_t max_frame, frame_msg_t *msg)
{
    uint8_t hdr[FRAME_HEADER_SIZE];
    size_t size;

    if (max_frame == 0)
        max_frame = FRAME_DEFAULT_MAX;
    if (evbuffer_get_length(in) < FRAME_HEADER_SIZE)
        return DUET_AGAIN;
    evbuffer_copyout(in, hdr, sizeof(hdr));
    size = (size_t)frame_be(hdr, FRAME_HEADER_SIZE);
    if (size > max_frame)
        return DUET_ERR_TOO_BIG;
    if (evbuffer_get_length(in) < FRAME_HEADER_SIZE + size)
        return DUET_AGAIN;
    evbuffer_drain(in, FRAME_HEADER_SIZE);
    return frame_decode_payload(msg, NULL, in, size);
}

duet_status_t frame_decode_buf(const uint8_t *data, size_t len, size_t max_frame,
                               frame_msg_t *msg, size_t *used_p)
{
    duet_status_t status;
    size_t size;

    if (max_frame == 0)
        max_frame = FRAME_DEFAULT_MAX;
    if (len < FRAME_HEADER_SIZE)
        return DUET_AGAIN;
    size = (size_t)frame_be(data, FRAME_HEADER_SIZE);
    if (size > max_frame)
        return DUET_ERR_TOO_BIG;
    if (len - FRAME_HEADER_SIZE < size)
        return DUET_AGAIN;
    status = frame_decode_payload(msg, data + FRAME_HEADER_SIZE, NULL, size);
    if (status == DUET_OK && used_p != NULL)
        *used_p = FRAME_HEADER_SIZE + size;
    return status;
}

void frame_msg_release(frame_msg_t *msg)
{
    if (msg->payload != NULL) {
        msgpack_unpacked_destroy(&msg->up);
        free(msg->payload);
    }
    memset(msg, 0, sizeof(*msg));
}

/* --- accessors ---------------------------------------------------------- */

duet_status_t frame_get_u64(const frame_msg_t *msg, const char *key, uint64_t *v_p)
{
    const msgpack_object *o = frame_get(msg, key);

    if (o == NULL)
        return DUET_ERR_NOT_FOUND;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return DUET_ERR_PROTO;
    *v_p = o->via.u64;
    return DUET_OK;
}

duet_status_t frame_get_i64(const frame_msg_t *msg, const char *key, int64_t *v_p)
{
    const msgpack_object *o = frame_get(msg, key);

    if (o == NULL)
        return DUET_ERR_NOT_FOUND;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v_p = o->via.i64;
    } else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
               o->via.u64 <= (uint64_t)INT64_MAX) {
        *v_p = (int64_t)o->via.u64;
    } else {
        return DUET_ERR_PROTO;
    }
    return DUET_OK;
}

duet_status_t frame_get_f64(const frame_msg_t *msg, const char *key, double *v_p)
{
    const msgpack_object *o = frame_get(msg, key);

    if (o == NULL)
        return DUET_ERR_NOT_FOUND;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:          *v_p = o->via.f64; break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *v_p = (double)o->via.u64; break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *v_p = (double)o->via.i64; break;
    default:                              return DUET_ERR_PROTO;
    }
    return DUET_OK;
}

duet_status_t frame_get_bool(const frame_msg_t *msg, const char *key, bool *v_p)
{
    const msgpack_object *o = frame_get(msg, key);

    if (o == NULL)
        return DUET_ERR_NOT_FOUND;
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return DUET_ERR_PROTO;
    *v_p = o->via.boolean;
    return DUET_OK;
}

duet_status_t frame_get_str(const frame_msg_t *msg, const char *key,
                            const char **s_p, size_t *len_p)
{
    const msgpack_object *o = frame_get(msg, key);

    if (o == NULL)
        return DUET_ERR_NOT_FOUND;
    if (o->type != MSGPACK_OBJECT_STR)
        return DUET_ERR_PROTO;
    *s_p = o->via.str.ptr;
    *len_p = o->via.str.size;
    return DUET_OK;
}

duet_status_t frame_get_bin(const frame_msg_t *msg, const char *key,
                            const void **p_p, size_t *len_p)
{
    const msgpack_object *o = frame_get(msg, key);

    if (o == NULL)
        return DUET_ERR_NOT_FOUND;
    if (o->type != MSGPACK_OBJECT_BIN)
        return DUET_ERR_PROTO;
    *p_p = o->via.bin.ptr;
    *len_p = o->via.bin.size;
    return DUET_OK;
}

duet_status_t frame_get_u32_array(const frame_msg_t *msg, const char *key,
                                  uint32_t *out, size_t max, size_t *n_p)
{
    const msgpack_object *o = frame_get(msg, key);

    if (o == NULL)
        return DUET_ERR_NOT_FOUND;
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return DUET_ERR_PROTO;
    if (o->via.array.size > max)
        return DUET_ERR_TOO_BIG;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];

        if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER || e->via.u64 > UINT32_MAX)
            return DUET_ERR_PROTO;
        out[i] = (uint32_t)e->via.u64;
    }
    *n_p = o->via.array.size;
    return DUET_OK;
}
