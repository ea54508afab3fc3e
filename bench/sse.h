/* Incremental parser of a text/event-stream (Server-Sent Events) body, as
 * the WHATWG spec defines it: lines end in LF, CRLF or CR; "data:" lines
 * accumulate (joined by LF) and a blank line dispatches the event; lines
 * starting with ':' are comments; other fields (event, id, retry) are
 * ignored. Bytes may arrive split anywhere, even between CR and LF. */
#ifndef DUET_BENCH_SSE_H
#define DUET_BENCH_SSE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"

/* Called once per dispatched event with its data (NUL-terminated, len
 * bytes, borrowed until the callback returns). A negative return stops the
 * feed and is returned by sse_feed. */
typedef duet_status_t (*sse_event_cb_t)(void *arg, const char *data, size_t len);

typedef struct {
    char   *line;       /* the current, incomplete line */
    size_t  line_len, line_cap;
    char   *data;       /* data of the event being assembled */
    size_t  data_len, data_cap;
    bool    has_data;   /* at least one data field was seen */
    bool    after_cr;   /* the previous byte ended a line with CR */
    size_t  max_bytes;  /* bound on one line and one event's data */
    size_t  n_events;   /* dispatched so far */
} sse_parser_t;

/* max_bytes bounds a line and an event (0: 1 MiB). No allocation yet. */
void sse_init(sse_parser_t *p, size_t max_bytes);
void sse_reset(sse_parser_t *p);    /* drop partial state, keep buffers */
void sse_free(sse_parser_t *p);

/* Feed n bytes. Returns DUET_OK, DUET_ERR_TOO_BIG (a line or event over the
 * bound), DUET_ERR_NOMEM, or the callback's negative status. */
duet_status_t sse_feed(sse_parser_t *p, const char *buf, size_t n, sse_event_cb_t cb,
                       void *arg);

/* True when bytes of an unfinished line or event are pending (a stream
 * that ends here was cut short). */
bool sse_pending(const sse_parser_t *p);

#endif
