/* One status type for the whole project. Zero is success, positive values are
 * non-error outcomes, negative values are errors. errno, ucs_status_t,
 * cudaError_t and ncclResult_t are converted at module edges only. */
#ifndef DUET_COMMON_STATUS_H
#define DUET_COMMON_STATUS_H

typedef enum {
    DUET_OK              = 0,
    DUET_INPROGRESS      = 1,   /* started, drive with a progress function */
    DUET_AGAIN           = 2,   /* nothing ready yet (e.g. partial frame) */
    DUET_DONE            = 3,   /* nothing more to do (e.g. --help printed) */

    DUET_ERR_NOMEM       = -1,
    DUET_ERR_INVALID     = -2,  /* bad argument or input */
    DUET_ERR_IO          = -3,
    DUET_ERR_PROTO       = -4,  /* malformed or unexpected message */
    DUET_ERR_TOO_BIG     = -5,
    DUET_ERR_NOT_FOUND   = -6,
    DUET_ERR_UNSUPPORTED = -7,
    DUET_ERR_TIMEOUT     = -8,
    DUET_ERR_CANCELED    = -9,
    DUET_ERR_NO_RESOURCE = -10, /* e.g. no free KV blocks */
    DUET_ERR_PEER        = -11, /* remote side failed or went away */
    DUET_ERR_MISMATCH    = -12, /* fingerprint / layout / version mismatch */
    DUET_ERR_BUSY        = -13,
    DUET_ERR_CLOSED      = -14,
    DUET_ERR_CUDA        = -15,
    DUET_ERR_UCX         = -16,
    DUET_ERR_CORRUPT     = -17, /* file contents are inconsistent */
    DUET_ERR_INTERNAL    = -18,
} duet_status_t;

/* Static string for a status; never NULL. */
const char *duet_status_str(duet_status_t status);

/* Map an errno value to a status. */
duet_status_t duet_status_from_errno(int err);

#endif
