/* Arena and object pool: alignment, bounds, reuse and accounting. */
#include <stdint.h>
#include <string.h>

#include "common/arena.h"
#include "common/pool.h"
#include "tests/tap.h"

static void test_arena(void)
{
    arena_t *a = NULL;
    char *s;
    int aligned = 1, distinct = 1;
    void *prev = NULL;

    ok(arena_create(256, 0, &a) == DUET_OK, "arena_create");
    for (int i = 1; i < 200; i++) {
        void *p = arena_alloc(a, (size_t)i);
        if (p == NULL || ((uintptr_t)p & 15) != 0)
            aligned = 0;
        if (p == prev)
            distinct = 0;
        memset(p, 0xab, (size_t)i);   /* ASan catches an undersized block */
        prev = p;
    }
    ok(aligned, "allocations are 16-byte aligned");
    ok(distinct, "allocations are distinct");
    ok(arena_alloc(a, 100000) != NULL, "allocation larger than a chunk");
    ok(arena_alloc(a, 0) != NULL, "zero-size allocation gives a pointer");
    ok(arena_calloc(a, SIZE_MAX / 2, 4) == NULL, "calloc overflow is refused");
    ok(arena_alloc(a, SIZE_MAX - 3) == NULL, "huge allocation is refused");
    s = arena_strndup(a, "hello world", 5);
    ok(s != NULL && strcmp(s, "hello") == 0, "strndup copies and terminates");
    arena_reset(a);
    ok(arena_used(a) == 0, "reset forgets allocations");
    ok(arena_alloc(a, 64) != NULL, "allocation after reset");
    arena_destroy(a);

    ok(arena_create(1024, 4096, &a) == DUET_OK, "bounded arena");
    ok(arena_alloc(a, 3000) != NULL, "within bound");
    ok(arena_alloc(a, 3000) == NULL, "over the bound is refused");
    arena_destroy(a);
    arena_destroy(NULL);
}

static void test_pool(void)
{
    pool_t *p = NULL;
    void *objs[100];
    int zeroed = 1, aligned = 1;

    ok(pool_create(0, 8, 0, &p) == DUET_ERR_INVALID, "zero object size refused");
    ok(pool_create(40, 8, 100, &p) == DUET_OK, "pool_create");
    for (int i = 0; i < 100; i++) {
        unsigned char *o = pool_get(p);
        objs[i] = o;
        if (o == NULL) {
            zeroed = 0;
            break;
        }
        for (int j = 0; j < 40; j++)
            if (o[j] != 0)
                zeroed = 0;
        if (((uintptr_t)o & 15) != 0)
            aligned = 0;
        memset(o, 0xcd, 40);
    }
    ok(zeroed, "objects come zero-filled");
    ok(aligned, "objects are 16-byte aligned");
    is_int(pool_in_use(p), 100, "100 in use");
    ok(pool_get(p) == NULL, "max_objs enforced");
    for (int i = 0; i < 100; i += 2)
        pool_put(p, objs[i]);
    is_int(pool_in_use(p), 50, "50 in use after returning half");
    for (int i = 0; i < 100; i += 2)
        objs[i] = pool_get(p);
    is_int(pool_capacity(p), 100, "returned objects are reused, not regrown");
    for (int i = 0; i < 100; i++)
        pool_put(p, objs[i]);
    is_int(pool_in_use(p), 0, "all returned");
    pool_put(p, NULL);
    pool_destroy(p);
}

int main(void)
{
    test_arena();
    test_pool();
    return tap_done();
}
