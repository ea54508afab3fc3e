/* Fixed-size object pool: chunks of objects threaded on a free list. */
#include "pool.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct pool_free {
    struct pool_free *next;
} pool_free_t;

typedef struct pool_chunk {
    struct pool_chunk *next;
    _Alignas(16) unsigned char data[];
} pool_chunk_t;

struct pool {
    size_t        obj_size;
    size_t        per_chunk;
    size_t        max_objs;
    size_t        capacity;
    size_t        in_use;
    pool_free_t  *free_list;
    pool_chunk_t *chunks;
};

duet_status_t pool_create(size_t obj_size, size_t per_chunk, size_t max_objs,
                          pool_t **pool_p)
{
    pool_t *pool;

    if (obj_size == 0 || obj_size > SIZE_MAX / 2)
        return DUET_ERR_INVALID;
    pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return DUET_ERR_NOMEM;
    if (obj_size < sizeof(pool_free_t))
        obj_size = sizeof(pool_free_t);
    pool->obj_size = (obj_size + 15) & ~(size_t)15;
    pool->per_chunk = per_chunk ? per_chunk : 64;
    pool->max_objs = max_objs;
    *pool_p = pool;
    return DUET_OK;
}

void pool_destroy(pool_t *pool)
{
    pool_chunk_t *c, *next;

    if (pool == NULL)
        return;
    for (c = pool->chunks; c != NULL; c = next) {
        next = c->next;
        free(c);
    }
    free(pool);
}

static int pool_grow(pool_t *pool)
{
    size_t n = pool->per_chunk;
    pool_chunk_t *c;

    if (pool->max_objs && pool->capacity + n > pool->max_objs)
        n = pool->max_objs - pool->capacity;
    if (n == 0 || n > (SIZE_MAX - sizeof(*c)) / pool->obj_size)
        return -1;
    c = malloc(sizeof(*c) + n * pool->obj_size);
    if (c == NULL)
        return -1;
    c->next = pool->chunks;
    pool->chunks = c;
    for (size_t i = n; i-- > 0;) {
        pool_free_t *f = (pool_free_t *)(c->data + i * pool->obj_size);
        f->next = pool->free_list;
        pool->free_list = f;
    }
    pool->capacity += n;
    return 0;
}

void *pool_get(pool_t *pool)
{
    pool_free_t *f;

    if (pool->free_list == NULL && pool_grow(pool) != 0)
        return NULL;
    f = pool->free_list;
    pool->free_list = f->next;
    pool->in_use++;
    memset(f, 0, pool->obj_size);
    return f;
}

void pool_put(pool_t *pool, void *obj)
{
    pool_free_t *f = obj;

    if (obj == NULL)
        return;
    assert(pool->in_use > 0);
    f->next = pool->free_list;
    pool->free_list = f;
    pool->in_use--;
}

size_t pool_in_use(const pool_t *pool)
{
    return pool->in_use;
}

size_t pool_capacity(const pool_t *pool)
{
    return pool->capacity;
}
