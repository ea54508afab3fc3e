/* Control-plane framing: round trip, byte-by-byte delivery, hostile input and
 * 10 000 random frames. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "common/frame.h"
#include "common/log.h"
#include "tests/tap.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd_from(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static uint64_t rnd(void)
{
    return rnd_from(&rng);
}

/* A PREFILL frame with a token array and a few scalars. */
static void build_prefill(frame_writer_t *w, uint64_t rid, const uint32_t *tok,
                          size_t n, double temp, const char *name)
{
    frame_begin(w, FRAME_PREFILL, 5);
    frame_put_u64(w, "rid", rid);
    frame_put_u32_array(w, "tokens", tok, n);
    frame_put_f64(w, "temp", temp);
    frame_put_str(w, "name", name);
    frame_put_bin(w, "blob", tok, n * sizeof(*tok));
}

static int check_prefill(const frame_msg_t *m, uint64_t rid, const uint32_t *tok,
                         size_t n, double temp, const char *name)
{
    uint64_t r;
    double t;
    const char *s;
    const void *b;
    size_t len, blen, ntok;
    uint32_t got[4096];

    if (m->type != FRAME_PREFILL || m->version != FRAME_PROTO_VERSION)
        return 0;
    if (frame_get_u64(m, "rid", &r) || r != rid)
        return 0;
    if (frame_get_f64(m, "temp", &t) || t != temp)
        return 0;
    if (frame_get_str(m, "name", &s, &len) || len != strlen(name) ||
        memcmp(s, name, len) != 0)
        return 0;
    if (frame_get_u32_array(m, "tokens", got, 4096, &ntok) || ntok != n ||
        memcmp(got, tok, n * sizeof(*tok)) != 0)
        return 0;
    if (frame_get_bin(m, "blob", &b, &blen) || blen != n * 4 ||
        memcmp(b, tok, blen) != 0)
        return 0;
    return 1;
}

static void test_round_trip(void)
{
    frame_writer_t w;
    struct evbuffer *buf = evbuffer_new();
    uint32_t tok[5] = {1, 2, 3, 70000, 4000000000u};
    frame_msg_t m;
    uint64_t u;
    int64_t i;
    bool b;
    uint32_t small[2];
    size_t n;

    frame_writer_init(&w);
    build_prefill(&w, 42, tok, 5, 0.7, "hello");
    ok(frame_end(&w, buf, 0) == DUET_OK, "encode PREFILL");
    ok(frame_decode(buf, 0, &m) == DUET_OK, "decode PREFILL");
    ok(check_prefill(&m, 42, tok, 5, 0.7, "hello"), "fields round-trip");
    ok(evbuffer_get_length(buf) == 0, "frame consumed whole");
    ok(frame_get_u64(&m, "missing", &u) == DUET_ERR_NOT_FOUND, "absent key");
    ok(frame_get_u64(&m, "name", &u) == DUET_ERR_PROTO, "wrong type");
    ok(frame_get_bool(&m, "rid", &b) == DUET_ERR_PROTO, "int is not bool");
    ok(frame_get_u32_array(&m, "tokens", small, 2, &n) == DUET_ERR_TOO_BIG,
       "array longer than the caller's room");
    frame_msg_release(&m);

    frame_begin(&w, FRAME_ABORT, 3);
    frame_put_u64(&w, "rid", 7);
    frame_put_i64(&w, "neg", -5);
    frame_put_bool(&w, "flag", true);
    ok(frame_end(&w, buf, 0) == DUET_OK, "encode ABORT");
    ok(frame_decode(buf, 0, &m) == DUET_OK && m.type == FRAME_ABORT, "decode ABORT");
    ok(frame_get_i64(&m, "neg", &i) == DUET_OK && i == -5, "negative int");
    ok(frame_get_i64(&m, "rid", &i) == DUET_OK && i == 7, "positive as i64");
    ok(frame_get_bool(&m, "flag", &b) == DUET_OK && b, "bool");
    frame_msg_release(&m);

    frame_begin(&w, FRAME_ABORT, 2);
    frame_put_u64(&w, "rid", 7);
    ok(frame_end(&w, buf, 0) == DUET_ERR_INTERNAL, "field count mismatch caught");
    ok(evbuffer_get_length(buf) == 0, "nothing written on encoder error");

    frame_begin(&w, FRAME_ERROR, 1);
    frame_put_bin(&w, "msg", tok, 20);
    ok(frame_end(&w, buf, 8) == DUET_ERR_TOO_BIG, "encoder enforces max size");
    ok(strcmp(frame_type_str(FRAME_TOKENS), "TOKENS") == 0, "type names");
    ok(strcmp(frame_type_str(99), "UNKNOWN") == 0, "unknown type name");
    frame_writer_destroy(&w);
    evbuffer_free(buf);
}

static void test_split(void)
{
    frame_writer_t w;
    uint32_t tok[64];
    const uint8_t *data;
    size_t len;
    int all_ok = 1;

    for (int i = 0; i < 64; i++)
        tok[i] = (uint32_t)(i * 977);
    frame_writer_init(&w);
    build_prefill(&w, 9, tok, 64, 1.5, "split");
    frame_end_buf(&w, 0, &data, &len);
    for (size_t cut = 0; cut <= len; cut++) {
        struct evbuffer *buf = evbuffer_new();
        frame_msg_t m;
        duet_status_t s;

        evbuffer_add(buf, data, cut);
        s = frame_decode(buf, 0, &m);
        if (cut < len && (s != DUET_AGAIN || evbuffer_get_length(buf) != cut))
            all_ok = 0;
        if (cut < len) {
            evbuffer_add(buf, data + cut, len - cut);
            s = frame_decode(buf, 0, &m);
        }
        if (s != DUET_OK || !check_prefill(&m, 9, tok, 64, 1.5, "split"))
            all_ok = 0;
        if (s == DUET_OK)
            frame_msg_release(&m);
        evbuffer_free(buf);
    }
    ok(all_ok, "split at every byte boundary (%zu bytes)", len);

    /* byte-by-byte delivery of three back-to-back frames */
    {
        struct evbuffer *stream = evbuffer_new(), *buf = evbuffer_new();
        unsigned char *bytes;
        size_t total;
        int got = 0;

        for (int f = 0; f < 3; f++) {
            build_prefill(&w, (uint64_t)f, tok, (size_t)(f * 20), 0.1, "abc");
            frame_end(&w, stream, 0);
        }
        total = evbuffer_get_length(stream);
        bytes = evbuffer_pullup(stream, -1);
        for (size_t i = 0; i < total; i++) {
            frame_msg_t m;

            evbuffer_add(buf, bytes + i, 1);
            if (frame_decode(buf, 0, &m) == DUET_OK) {
                if (check_prefill(&m, (uint64_t)got, tok, (size_t)(got * 20), 0.1, "abc"))
                    got++;
                frame_msg_release(&m);
            }
        }
        is_int(got, 3, "three frames delivered one byte at a time");
        evbuffer_free(stream);
        evbuffer_free(buf);
    }
    frame_writer_destroy(&w);
}

/* Feed raw payload bytes with a correct length prefix. */
static duet_status_t decode_raw(const void *payload, size_t n, size_t max)
{
    struct evbuffer *buf = evbuffer_new();
    uint8_t hdr[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8),
                      (uint8_t)n};
    frame_msg_t m;
    duet_status_t s;

    evbuffer_add(buf, hdr, 4);
    evbuffer_add(buf, payload, n);
    s = frame_decode(buf, max, &m);
    if (s == DUET_OK)
        frame_msg_release(&m);
    evbuffer_free(buf);
    return s;
}

static void test_hostile(void)
{
    frame_writer_t w;
    const uint8_t *data;
    size_t len;

    /* oversize length prefix: rejected before the payload arrives */
    {
        struct evbuffer *buf = evbuffer_new();
        uint8_t hdr[4] = {0x7f, 0xff, 0xff, 0xff};
        frame_msg_t m;

        evbuffer_add(buf, hdr, 4);
        ok(frame_decode(buf, 1 << 20, &m) == DUET_ERR_TOO_BIG, "oversize prefix");
        evbuffer_free(buf);
    }
    frame_writer_init(&w);
    frame_begin(&w, FRAME_ABORT, 1);
    frame_put_u64(&w, "rid", 1);
    frame_end_buf(&w, 0, &data, &len);
    ok(decode_raw(data + 4, len - 4, 4) == DUET_ERR_TOO_BIG, "payload over max");
    ok(decode_raw(data + 4, len - 5, 0) == DUET_ERR_PROTO, "truncated msgpack");
    {
        uint8_t more[64];

        memcpy(more, data + 4, len - 4);
        more[len - 4] = 0xc0;
        ok(decode_raw(more, len - 3, 0) == DUET_ERR_PROTO, "trailing garbage");
    }

    /* not a map; non-string key; missing t; bad t; wrong version; missing field */
    {
        const uint8_t arr[] = {0x92, 0x01, 0x02};
        const uint8_t intkey[] = {0x83, 0xa1, 't', 0x0a, 0xa1, 'v', 0x01, 0x05, 0x06};
        const uint8_t no_t[] = {0x82, 0xa1, 'v', 0x01, 0xa3, 'r', 'i', 'd', 0x01};
        const uint8_t bad_t[] = {0x83, 0xa1, 't', 0x63, 0xa1, 'v', 0x01, 0xa3, 'r', 'i', 'd', 0x01};
        const uint8_t zero_t[] = {0x82, 0xa1, 't', 0x00, 0xa1, 'v', 0x01};
        const uint8_t str_t[] = {0x82, 0xa1, 't', 0xa1, 'x', 0xa1, 'v', 0x01};
        const uint8_t bad_v[] = {0x83, 0xa1, 't', 0x0a, 0xa1, 'v', 0x02, 0xa3, 'r', 'i', 'd', 0x01};
        const uint8_t no_rid[] = {0x82, 0xa1, 't', 0x0a, 0xa1, 'v', 0x01};
        const uint8_t good[] = {0x83, 0xa1, 't', 0x0a, 0xa1, 'v', 0x01, 0xa3, 'r', 'i', 'd', 0x01};
        const uint8_t huge_arr[] = {0x83, 0xa1, 't', 0x0a, 0xa1, 'v', 0x01, 0xa3, 'r', 'i', 'd',
                                    0xdd, 0xff, 0xff, 0xff, 0xff};
        const uint8_t huge_map[] = {0xdf, 0x7f, 0xff, 0xff, 0xff, 0x01};
        const uint8_t huge_str[] = {0x83, 0xa1, 't', 0x0a, 0xa1, 'v', 0x01, 0xa3, 'r', 'i', 'd',
                                    0xdb, 0xff, 0xff, 0xff, 0xf0, 'a'};
        const uint8_t ext[] = {0x83, 0xa1, 't', 0x0a, 0xa1, 'v', 0x01, 0xa3, 'r', 'i', 'd',
                               0xd4, 0x01, 0x02};
        const uint8_t c1[] = {0xc1};
        uint8_t deep[64];

        ok(decode_raw(good, sizeof(good), 0) == DUET_OK, "minimal ABORT accepted");
        ok(decode_raw(arr, sizeof(arr), 0) == DUET_ERR_PROTO, "array at top");
        ok(decode_raw(intkey, sizeof(intkey), 0) == DUET_ERR_PROTO, "integer key");
        ok(decode_raw(no_t, sizeof(no_t), 0) == DUET_ERR_PROTO, "missing type");
        ok(decode_raw(bad_t, sizeof(bad_t), 0) == DUET_ERR_PROTO, "unknown type");
        ok(decode_raw(zero_t, sizeof(zero_t), 0) == DUET_ERR_PROTO, "type zero");
        ok(decode_raw(str_t, sizeof(str_t), 0) == DUET_ERR_PROTO, "type as string");
        ok(decode_raw(bad_v, sizeof(bad_v), 0) == DUET_ERR_MISMATCH, "wrong version");
        ok(decode_raw(no_rid, sizeof(no_rid), 0) == DUET_ERR_PROTO, "missing required field");
        ok(decode_raw(huge_arr, sizeof(huge_arr), 0) == DUET_ERR_PROTO, "huge array count");
        ok(decode_raw(huge_map, sizeof(huge_map), 0) == DUET_ERR_PROTO, "huge map count");
        ok(decode_raw(huge_str, sizeof(huge_str), 0) == DUET_ERR_PROTO, "huge string length");
        ok(decode_raw(ext, sizeof(ext), 0) == DUET_ERR_PROTO, "ext type refused");
        ok(decode_raw(c1, sizeof(c1), 0) == DUET_ERR_PROTO, "reserved byte 0xc1");
        ok(decode_raw("", 0, 0) == DUET_ERR_PROTO, "empty payload");
        for (int i = 0; i < 64; i++)
            deep[i] = 0x91;   /* [[[[...]]]] */
        deep[63] = 0x01;
        ok(decode_raw(deep, sizeof(deep), 0) == DUET_ERR_PROTO, "nesting too deep");
    }

    /* garbage: random bytes never crash and never yield OK with a bad type */
    {
        int crashed_or_bad = 0;

        for (int i = 0; i < 20000; i++) {
            uint8_t g[48];
            size_t n = rnd() % sizeof(g);
            struct evbuffer *buf = evbuffer_new();
            frame_msg_t m;
            duet_status_t s;

            for (size_t j = 0; j < n; j++)
                g[j] = (uint8_t)rnd();
            if (n >= 4 && (rnd() & 1)) {   /* often a plausible length */
                g[0] = g[1] = 0;
                g[2] = 0;
                g[3] = (uint8_t)(n - 4);
            }
            evbuffer_add(buf, g, n);
            s = frame_decode(buf, 1024, &m);
            if (s == DUET_OK) {
                if (m.type <= 0 || m.type >= FRAME_TYPE_MAX)
                    crashed_or_bad = 1;
                frame_msg_release(&m);
            }
            evbuffer_free(buf);
        }
        ok(!crashed_or_bad, "20000 garbage inputs handled");
    }
    frame_writer_destroy(&w);
}

static void test_random_frames(void)
{
    frame_writer_t w;
    struct evbuffer *stream = evbuffer_new();
    static uint32_t tok[4096];
    int good = 0;
    uint64_t seed0;
    char name[32];

    frame_writer_init(&w);
    seed0 = rng;
    for (int i = 0; i < 10000; i++) {
        size_t n = rnd() % 300;

        for (size_t j = 0; j < n; j++)
            tok[j] = (uint32_t)rnd();
        uint64_t rid = rnd();
        double temp = (double)(rnd() % 1000) / 7.0;

        snprintf(name, sizeof(name), "req-%d", i);
        build_prefill(&w, rid, tok, n, temp, name);
        frame_end(&w, stream, 0);
    }
    rng = seed0;
    /* decode, delivering the stream in random-sized pieces */
    {
        struct evbuffer *in = evbuffer_new();
        uint64_t split_rng = 12345;
        int i = 0;

        while (evbuffer_get_length(stream) > 0 || i < 10000) {
            size_t piece = 1 + rnd_from(&split_rng) % 3000;
            frame_msg_t m;

            evbuffer_remove_buffer(stream, in, piece);
            while (frame_decode(in, 0, &m) == DUET_OK) {
                size_t n = rnd() % 300;
                uint64_t rid;
                double temp;

                for (size_t j = 0; j < n; j++)
                    tok[j] = (uint32_t)rnd();
                snprintf(name, sizeof(name), "req-%d", i);
                rid = rnd();
                temp = (double)(rnd() % 1000) / 7.0;
                if (check_prefill(&m, rid, tok, n, temp, name))
                    good++;
                frame_msg_release(&m);
                i++;
            }
            if (evbuffer_get_length(stream) == 0 && evbuffer_get_length(in) == 0)
                break;
        }
        evbuffer_free(in);
    }
    is_int(good, 10000, "10000 random frames round-trip through random splits");
    frame_writer_destroy(&w);
    evbuffer_free(stream);
}

int main(void)
{
    log_set_level(LOG_LEVEL_OFF);
    test_round_trip();
    test_split();
    test_hostile();
    test_random_frames();
    return tap_done();
}
