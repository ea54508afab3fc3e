/* Character classes, UTF-8 repair and the GPT-2 byte mapping. */
#include <stdbool.h>

#include "model/unicode.h"

#define L UNICODE_LETTER
#define N UNICODE_NUMBER
#define S UNICODE_SPACE

const uint8_t unicode_ascii_class[128] = {
    /* 0x00 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, S, S, S, S, S, 0, 0,
    /* 0x10 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x20 */ S, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x30 */ N, N, N, N, N, N, N, N, N, N, 0, 0, 0, 0, 0, 0,
    /* 0x40 */ 0, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,
    /* 0x50 */ L, L, L, L, L, L, L, L, L, L, L, 0, 0, 0, 0, 0,
    /* 0x60 */ 0, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,
    /* 0x70 */ L, L, L, L, L, L, L, L, L, L, L, 0, 0, 0, 0, 0,
};

unsigned unicode_class_slow(uint32_t cp)
{
    unsigned lo = 0, hi = unicode_n_ranges;

    /* White_Space beyond ASCII (PropList.txt). */
    if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
        cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000)
        return UNICODE_SPACE;
    if (cp == UNICODE_INVALID)
        return UNICODE_OTHER;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;

        if (cp < unicode_ranges[mid].first)
            hi = mid;
        else if (cp > unicode_ranges[mid].last)
            lo = mid + 1;
        else
            return unicode_ranges[mid].cls;
    }
    return UNICODE_OTHER;
}

typedef enum { SEQ_OK, SEQ_INCOMPLETE, SEQ_BAD } seq_t;

/* Classify the sequence at s: SEQ_OK (*len_p = its length), SEQ_INCOMPLETE
 * (a valid prefix running to the end: *len_p = n), or SEQ_BAD (*len_p = the
 * maximal ill-formed subpart, at least 1). */
static seq_t seq_check(const uint8_t *s, size_t n, size_t *len_p)
{
    uint8_t c = s[0], lo = 0x80, hi = 0xBF;
    size_t need, i;

    if (c < 0x80) {
        *len_p = 1;
        return SEQ_OK;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        *len_p = 1;
        return SEQ_BAD;
    }
    for (i = 1; i < need; i++) {
        if (i >= n) {
            *len_p = n;
            return SEQ_INCOMPLETE;
        }
        if (s[i] < lo || s[i] > hi) {
            *len_p = i;
            return SEQ_BAD;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    *len_p = need;
    return SEQ_OK;
}

size_t unicode_incomplete_tail(const uint8_t *s, size_t n)
{
    /* Only the last 3 bytes can start an incomplete sequence. */
    size_t start = n > 3 ? n - 3 : 0;

    for (size_t i = start; i < n; i++) {
        size_t len;

        if (s[i] >= 0xC2 && s[i] <= 0xF4 && seq_check(s + i, n - i, &len) == SEQ_INCOMPLETE)
            return n - i;
    }
    return 0;
}

size_t unicode_repair(char *out, const uint8_t *s, size_t n)
{
    size_t i = 0, o = 0;

    while (i < n) {
        size_t len;
        seq_t k = seq_check(s + i, n - i, &len);

        if (k == SEQ_OK) {
            for (size_t j = 0; j < len; j++)
                out[o++] = (char)s[i + j];
        } else {
            out[o++] = (char)0xEF;
            out[o++] = (char)0xBF;
            out[o++] = (char)0xBD;
        }
        i += len;
    }
    return o;
}

int unicode_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* GPT-2: printable bytes (33..126, 161..172, 174..255) map to themselves;
 * the other 68 map, in byte order, to 256, 257, ... */
static bool byte_printable(unsigned b)
{
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

uint32_t unicode_byte_to_cp(uint8_t b)
{
    unsigned k = 0;

    if (byte_printable(b))
        return b;
    for (unsigned i = 0; i < b; i++)
        k += !byte_printable(i);
    return 256 + k;
}

int unicode_cp_to_byte(uint32_t cp)
{
    if (cp < 256)
        return byte_printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 68)
        return -1;
    for (unsigned b = 0, k = 0; b < 256; b++) {
        if (byte_printable(b))
            continue;
        if (256 + k == cp)
            return (int)b;
        k++;
    }
    return -1;
}
