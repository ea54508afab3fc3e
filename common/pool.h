/* Fixed-size object pool for hot objects (requests, transfer descriptors).
 * Objects come from chunks that are never returned to the system until the
 * pool is destroyed; get and put are O(1). Not thread-safe. */
#ifndef DUET_COMMON_POOL_H
#define DUET_COMMON_POOL_H

#include <stddef.h>

#include "status.h"

typedef struct pool pool_t;

/* obj_size bytes per object (rounded up to 16-byte alignment), grown
 * per_chunk objects at a time, at most max_objs live (0: unbounded). */
duet_status_t pool_create(size_t obj_size, size_t per_chunk, size_t max_objs,
                          pool_t **pool_p);

/* Free every chunk. Objects still out are invalid afterwards. NULL ignored. */
void pool_destroy(pool_t *pool);

/* A zero-filled object, or NULL when the pool is at max_objs or out of
 * memory. */
void *pool_get(pool_t *pool);

/* Return an object obtained from this pool. NULL is ignored. */
void pool_put(pool_t *pool, void *obj);

/* Objects currently handed out. */
size_t pool_in_use(const pool_t *pool);

/* Objects allocated in total (in use + free). */
size_t pool_capacity(const pool_t *pool);

#endif
