/* Control-plane framing: a 4-byte big-endian payload length followed by a
 * msgpack map. Every map carries "t" (frame_type_t) and "v" (protocol
 * version) plus the fields that its type requires (docs/protocol.md).
 *
 * The decoder is incremental over a libevent evbuffer: it consumes exactly
 * one whole frame or nothing. Any error it returns means the peer is broken
 * or hostile; the caller closes that connection and nothing else. */
#ifndef DUET_COMMON_FRAME_H
#define DUET_COMMON_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "status.h"

struct evbuffer;

#define FRAME_PROTO_VERSION  1
#define FRAME_HEADER_SIZE    4
#define FRAME_DEFAULT_MAX    (16u << 20)   /* bytes of payload */
#define FRAME_MAX_DEPTH      16            /* msgpack nesting accepted */

typedef enum {
    FRAME_HELLO = 1,
    FRAME_HELLO_OK,
    FRAME_HEARTBEAT,
    FRAME_RESERVE,
    FRAME_NACK,
    FRAME_PREFILL,
    FRAME_FIRST_TOKEN,
    FRAME_TOKENS,
    FRAME_FINISH,
    FRAME_ABORT,
    FRAME_ERROR,
    FRAME_DRAIN,
    FRAME_TYPE_MAX,     /* one past the last valid type */
} frame_type_t;

const char *frame_type_str(frame_type_t type);

/* --- encoder ------------------------------------------------------------ */

typedef struct {
    msgpack_sbuffer sbuf;
    msgpack_packer  pk;        /* for nested values after frame_key() */
    uint32_t        declared;  /* fields promised by frame_begin */
    uint32_t        written;
} frame_writer_t;

void frame_writer_init(frame_writer_t *w);
void frame_writer_destroy(frame_writer_t *w);

/* Start a frame of the given type with nfields fields besides "t" and "v".
 * Discards anything a previous unfinished frame left. */
void frame_begin(frame_writer_t *w, frame_type_t type, uint32_t nfields);

/* Write a key; the caller then packs exactly one value with w->pk. */
void frame_key(frame_writer_t *w, const char *key);

void frame_put_u64(frame_writer_t *w, const char *key, uint64_t v);
void frame_put_i64(frame_writer_t *w, const char *key, int64_t v);
void frame_put_f64(frame_writer_t *w, const char *key, double v);
void frame_put_bool(frame_writer_t *w, const char *key, bool v);
void frame_put_str(frame_writer_t *w, const char *key, const char *s);
void frame_put_strn(frame_writer_t *w, const char *key, const char *s, size_t n);
void frame_put_bin(frame_writer_t *w, const char *key, const void *p, size_t n);
void frame_put_u32_array(frame_writer_t *w, const char *key,
                         const uint32_t *v, size_t n);

/* Append the length-prefixed frame to out. Fails with DUET_ERR_INTERNAL when
 * the number of fields written differs from the number declared, and with
 * DUET_ERR_TOO_BIG past max_frame bytes of payload (0: FRAME_DEFAULT_MAX). */
duet_status_t frame_end(frame_writer_t *w, struct evbuffer *out, size_t max_frame);

/* Same, into a plain buffer: *len_p gets the frame's length; the bytes live in
 * w->sbuf until the next frame_begin. Used by tests and UCX messages. */
duet_status_t frame_end_buf(frame_writer_t *w, size_t max_frame,
                            const uint8_t **data_p, size_t *len_p);

/* --- decoder ------------------------------------------------------------ */

typedef struct {
    frame_type_t          type;
    uint32_t              version;
    const msgpack_object_map *map;   /* borrowed from up */
    msgpack_unpacked      up;
    char                 *payload;   /* owned copy of the frame's bytes */
    size_t                size;
} frame_msg_t;

/* Try to take one frame from the front of in.
 * DUET_OK: *msg holds it (release with frame_msg_release); the bytes were
 *          removed from in.
 * DUET_AGAIN: a partial frame; nothing was consumed.
 * DUET_ERR_TOO_BIG: the length prefix exceeds max_frame (0: default).
 * DUET_ERR_PROTO: malformed msgpack, not a map, non-string keys, unknown
 *          type or a missing required field.
 * DUET_ERR_MISMATCH: wrong protocol version.
 * On any error the stream cannot be resynchronised: close the connection. */
duet_status_t frame_decode(struct evbuffer *in, size_t max_frame, frame_msg_t *msg);

/* Same over a buffer holding exactly one length-prefixed frame (or a prefix
 * of one: DUET_AGAIN). *used_p gets the bytes it spans on success. */
duet_status_t frame_decode_buf(const uint8_t *data, size_t len, size_t max_frame,
                               frame_msg_t *msg, size_t *used_p);

void frame_msg_release(frame_msg_t *msg);

/* Field accessors. NOT_FOUND when the key is absent, PROTO when the value
 * has the wrong type or does not fit. */
const msgpack_object *frame_get(const frame_msg_t *msg, const char *key);
duet_status_t frame_get_u64(const frame_msg_t *msg, const char *key, uint64_t *v_p);
duet_status_t frame_get_i64(const frame_msg_t *msg, const char *key, int64_t *v_p);
duet_status_t frame_get_f64(const frame_msg_t *msg, const char *key, double *v_p);
duet_status_t frame_get_bool(const frame_msg_t *msg, const char *key, bool *v_p);
/* String/bin values are borrowed from msg and are not NUL-terminated. */
duet_status_t frame_get_str(const frame_msg_t *msg, const char *key,
                            const char **s_p, size_t *len_p);
duet_status_t frame_get_bin(const frame_msg_t *msg, const char *key,
                            const void **p_p, size_t *len_p);
/* Copies at most max elements; more is DUET_ERR_TOO_BIG. */
duet_status_t frame_get_u32_array(const frame_msg_t *msg, const char *key,
                                  uint32_t *out, size_t max, size_t *n_p);

/* Check that a msgpack byte string is one well-formed object whose container
 * counts fit in the bytes available, nested at most max_depth deep. Run by the
 * decoder before unpacking so a hostile count cannot make msgpack-c allocate
 * gigabytes. */
duet_status_t frame_validate_msgpack(const uint8_t *data, size_t len,
                                     unsigned max_depth);

#endif
