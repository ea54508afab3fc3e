/* Arena: a list of chunks, bump-allocated, freed together. */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN         16
#define ARENA_DEFAULT_CHUNK (64 * 1024)

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t              size;   /* usable bytes in data */
    size_t              used;
    _Alignas(ARENA_ALIGN) unsigned char data[];
} arena_chunk_t;

struct arena {
    arena_chunk_t *head;        /* current chunk; older ones follow */
    size_t         chunk_size;
    size_t         max_bytes;
    size_t         held;        /* bytes of all chunks */
    size_t         used;
};

duet_status_t arena_create(size_t chunk_size, size_t max_bytes, arena_t **arena_p)
{
    arena_t *arena = calloc(1, sizeof(*arena));

    if (arena == NULL)
        return DUET_ERR_NOMEM;
    arena->chunk_size = chunk_size ? chunk_size : ARENA_DEFAULT_CHUNK;
    arena->max_bytes = max_bytes;
    *arena_p = arena;
    return DUET_OK;
}

void arena_destroy(arena_t *arena)
{
    arena_chunk_t *c, *next;

    if (arena == NULL)
        return;
    for (c = arena->head; c != NULL; c = next) {
        next = c->next;
        free(c);
    }
    free(arena);
}

static arena_chunk_t *arena_chunk_new(arena_t *arena, size_t need)
{
    size_t size = need > arena->chunk_size ? need : arena->chunk_size;
    arena_chunk_t *c;

    if (size > SIZE_MAX - sizeof(*c))
        return NULL;
    if (arena->max_bytes && arena->held + size > arena->max_bytes)
        return NULL;
    c = malloc(sizeof(*c) + size);
    if (c == NULL)
        return NULL;
    c->size = size;
    c->used = 0;
    c->next = arena->head;
    arena->head = c;
    arena->held += size;
    return c;
}

void *arena_alloc(arena_t *arena, size_t size)
{
    arena_chunk_t *c = arena->head;
    size_t need;
    void *p;

    if (size > SIZE_MAX - ARENA_ALIGN)
        return NULL;
    need = (size + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (need == 0)
        need = ARENA_ALIGN;
    if (c == NULL || c->size - c->used < need) {
        c = arena_chunk_new(arena, need);
        if (c == NULL)
            return NULL;
    }
    p = c->data + c->used;
    c->used += need;
    arena->used += need;
    return p;
}

void *arena_calloc(arena_t *arena, size_t n, size_t size)
{
    void *p;

    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    p = arena_alloc(arena, n * size);
    if (p != NULL)
        memset(p, 0, n * size);
    return p;
}

char *arena_strndup(arena_t *arena, const char *s, size_t len)
{
    char *p;

    if (len == SIZE_MAX)
        return NULL;
    p = arena_alloc(arena, len + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void arena_reset(arena_t *arena)
{
    arena_chunk_t *c, *last = NULL, *next;

    /* keep the oldest chunk (the tail): it is the one sized by chunk_size */
    for (c = arena->head; c != NULL; c = next) {
        next = c->next;
        if (next == NULL) {
            last = c;
            break;
        }
        arena->held -= c->size;
        free(c);
    }
    arena->head = last;
    if (last != NULL)
        last->used = 0;
    arena->used = 0;
}

size_t arena_used(const arena_t *arena)
{
    return arena->used;
}
