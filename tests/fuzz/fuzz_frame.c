/* libFuzzer entry point for the control-plane frame decoder.
 * Build: CC=clang meson setup build-fuzz -Dfuzz=enabled -Db_sanitize=address,undefined
 * Run:   ./build-fuzz/tests/fuzz_frame -max_total_time=60 */
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "common/frame.h"
#include "common/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct evbuffer *buf = evbuffer_new();
    frame_msg_t m;

    log_set_level(LOG_LEVEL_OFF);
    evbuffer_add(buf, data, size);
    while (frame_decode(buf, 1 << 16, &m) == DUET_OK) {
        uint64_t u;
        uint32_t arr[64];
        size_t n;
        const char *s;

        frame_get_u64(&m, "rid", &u);
        frame_get_u32_array(&m, "tokens", arr, 64, &n);
        frame_get_str(&m, "role", &s, &n);
        frame_msg_release(&m);
    }
    evbuffer_free(buf);
    return 0;
}
