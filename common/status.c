/* Status strings and errno conversion. */
#include "status.h"

#include <errno.h>

const char *duet_status_str(duet_status_t status)
{
    switch (status) {
    case DUET_OK:              return "success";
    case DUET_INPROGRESS:      return "operation in progress";
    case DUET_AGAIN:           return "try again";
    case DUET_DONE:            return "done";
    case DUET_ERR_NOMEM:       return "out of memory";
    case DUET_ERR_INVALID:     return "invalid argument";
    case DUET_ERR_IO:          return "input/output error";
    case DUET_ERR_PROTO:       return "protocol error";
    case DUET_ERR_TOO_BIG:     return "too big";
    case DUET_ERR_NOT_FOUND:   return "not found";
    case DUET_ERR_UNSUPPORTED: return "unsupported";
    case DUET_ERR_TIMEOUT:     return "timed out";
    case DUET_ERR_CANCELED:    return "canceled";
    case DUET_ERR_NO_RESOURCE: return "no resources available";
    case DUET_ERR_PEER:        return "peer failure";
    case DUET_ERR_MISMATCH:    return "mismatch";
    case DUET_ERR_BUSY:        return "busy";
    case DUET_ERR_CLOSED:      return "closed";
    case DUET_ERR_CUDA:        return "CUDA error";
    case DUET_ERR_UCX:         return "UCX error";
    case DUET_ERR_CORRUPT:     return "corrupt data";
    case DUET_ERR_INTERNAL:    return "internal error";
    }
    return "unknown status";
}

duet_status_t duet_status_from_errno(int err)
{
    switch (err) {
    case 0:            return DUET_OK;
    case ENOMEM:       return DUET_ERR_NOMEM;
    case EINVAL:       return DUET_ERR_INVALID;
    case ENOENT:       return DUET_ERR_NOT_FOUND;
    case EAGAIN:       return DUET_AGAIN;
    case EINPROGRESS:  return DUET_INPROGRESS;
    case ETIMEDOUT:    return DUET_ERR_TIMEOUT;
    case ECANCELED:    return DUET_ERR_CANCELED;
    case EBUSY:        return DUET_ERR_BUSY;
    case EFBIG:
    case E2BIG:        return DUET_ERR_TOO_BIG;
    case ECONNRESET:
    case ECONNREFUSED:
    case EPIPE:        return DUET_ERR_PEER;
    case ENOTSUP:      return DUET_ERR_UNSUPPORTED;
    default:           return DUET_ERR_IO;
    }
}
