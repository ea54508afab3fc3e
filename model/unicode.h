/* The little of Unicode the tokenizer needs: UTF-8 decoding that never
 * fails (an ill-formed byte decodes as itself, one byte long), the character
 * classes the pre-tokenizer regexes use (\p{L}, \p{N}, \s), lossy UTF-8
 * repair (maximal-subpart U+FFFD substitution, as Python and Rust do), and
 * GPT-2's byte <-> printable code point mapping. */
#ifndef DUET_MODEL_UNICODE_H
#define DUET_MODEL_UNICODE_H

#include <stddef.h>
#include <stdint.h>

enum {
    UNICODE_OTHER  = 0,
    UNICODE_LETTER = 1,     /* general category L* */
    UNICODE_NUMBER = 2,     /* general category N* */
    UNICODE_SPACE  = 4,     /* White_Space property */
};

/* Code point standing for one ill-formed byte (classed OTHER). */
#define UNICODE_INVALID 0xFFFFFFFFu

typedef struct {
    uint32_t first, last;
    uint32_t cls;
} unicode_range_t;

extern const unicode_range_t unicode_ranges[];     /* unicode_tables.c */
extern const unsigned        unicode_n_ranges;

/* Decode one code point at s (n > 0 bytes left). Returns its length (1-4);
 * an ill-formed or truncated sequence gives UNICODE_INVALID, length 1. */
static inline int unicode_next(const uint8_t *s, size_t n, uint32_t *cp_p);

/* Class of a code point (one of the enum values). */
unsigned unicode_class_slow(uint32_t cp);
extern const uint8_t unicode_ascii_class[128];

static inline unsigned unicode_class(uint32_t cp)
{
    return cp < 128 ? unicode_ascii_class[cp] : unicode_class_slow(cp);
}

/* Length of the longest prefix of s[0..n) that is a proper prefix of a
 * well-formed sequence and reaches the end of s: 0 when s does not end
 * inside an incomplete (but so far valid) sequence, else 1-3. */
size_t unicode_incomplete_tail(const uint8_t *s, size_t n);

/* Append s[0..n) to out (capacity at least 3 * n bytes) replacing each
 * maximal ill-formed subpart by U+FFFD. Returns the bytes written. */
size_t unicode_repair(char *out, const uint8_t *s, size_t n);

/* Encode cp as UTF-8 into out (4 bytes room); returns the length. */
int unicode_put(char *out, uint32_t cp);

/* GPT-2 byte-level mapping: each byte has a printable code point. */
uint32_t unicode_byte_to_cp(uint8_t b);
/* Inverse: the byte for cp, or -1 when cp is not in the mapping. */
int      unicode_cp_to_byte(uint32_t cp);

/* --- inline ------------------------------------------------------------ */

static inline int unicode_next(const uint8_t *s, size_t n, uint32_t *cp_p)
{
    uint8_t c = s[0];

    if (c < 0x80) {
        *cp_p = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        if (n >= 2 && (s[1] & 0xC0) == 0x80) {
            *cp_p = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
            return 2;
        }
    } else if (c >= 0xE0 && c <= 0xEF) {
        if (n >= 3 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
            uint32_t cp = ((uint32_t)(c & 0x0F) << 12) |
                          ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
            if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) {
                *cp_p = cp;
                return 3;
            }
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        if (n >= 4 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 &&
            (s[3] & 0xC0) == 0x80) {
            uint32_t cp = ((uint32_t)(c & 0x07) << 18) |
                          ((uint32_t)(s[1] & 0x3F) << 12) |
                          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
            if (cp >= 0x10000 && cp <= 0x10FFFF) {
                *cp_p = cp;
                return 4;
            }
        }
    }
    *cp_p = UNICODE_INVALID;
    return 1;
}

#endif
