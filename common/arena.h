/* Arena: a bump allocator for per-request memory, freed as one.
 * Allocations are 16-byte aligned; memory is never freed piecemeal. */
#ifndef DUET_COMMON_ARENA_H
#define DUET_COMMON_ARENA_H

#include <stddef.h>

#include "status.h"

typedef struct arena arena_t;

/* Create an arena that grabs chunks of at least chunk_size bytes (0 picks a
 * default of 64 KiB). max_bytes bounds the total it may hold (0: unbounded). */
duet_status_t arena_create(size_t chunk_size, size_t max_bytes, arena_t **arena_p);

/* Free every chunk and the arena itself. NULL is ignored. */
void arena_destroy(arena_t *arena);

/* size bytes, 16-byte aligned, uninitialised; NULL when out of memory or over
 * the arena's bound. Zero-size requests return a valid unique pointer. */
void *arena_alloc(arena_t *arena, size_t size);

/* Like arena_alloc, zero-filled; n * size is checked for overflow. */
void *arena_calloc(arena_t *arena, size_t n, size_t size);

/* Copy of s (len bytes plus a NUL) in the arena. */
char *arena_strndup(arena_t *arena, const char *s, size_t len);

/* Forget every allocation but keep the first chunk for reuse. */
void arena_reset(arena_t *arena);

/* Bytes handed out since creation or the last reset. */
size_t arena_used(const arena_t *arena);

#endif
