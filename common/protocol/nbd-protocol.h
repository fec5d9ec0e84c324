/* nbdsrv: every NBD wire constant and wire struct, in one place.
 *
 * Values are from the NBD protocol document; section numbers in
 * comments refer to ../shared/docs/protocol-rules.md.  All integers on
 * the wire are big-endian.
 */
#ifndef NBDSRV_NBD_PROTOCOL_H
#define NBDSRV_NBD_PROTOCOL_H

#include <stdint.h>

/* §1.1 greeting. */
#define NBD_MAGIC              UINT64_C (0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_NEW_VERSION        UINT64_C (0x49484156454F5054) /* "IHAVEOPT" */
#define NBD_OLD_VERSION        UINT64_C (0x0000420281861253)
#define NBD_OPT_REPLY_MAGIC    UINT64_C (0x0003e889045565a9)

#define NBD_FLAG_FIXED_NEWSTYLE   (1 << 0)
#define NBD_FLAG_NO_ZEROES        (1 << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1 << 0)
#define NBD_FLAG_C_NO_ZEROES      (1 << 1)

/* §1.3 option codes. */
#define NBD_OPT_EXPORT_NAME        1
#define NBD_OPT_ABORT              2
#define NBD_OPT_LIST               3
#define NBD_OPT_STARTTLS           5
#define NBD_OPT_INFO               6
#define NBD_OPT_GO                 7
#define NBD_OPT_STRUCTURED_REPLY   8
#define NBD_OPT_LIST_META_CONTEXT  9
#define NBD_OPT_SET_META_CONTEXT   10
#define NBD_OPT_EXTENDED_HEADERS   11

/* §1.2 option reply types. */
#define NBD_REP_ACK                1
#define NBD_REP_SERVER             2
#define NBD_REP_INFO               3
#define NBD_REP_META_CONTEXT       4
#define NBD_REP_ERR(n)             ((1u << 31) | (n))
#define NBD_REP_ERR_UNSUP          NBD_REP_ERR (1)
#define NBD_REP_ERR_POLICY         NBD_REP_ERR (2)
#define NBD_REP_ERR_INVALID        NBD_REP_ERR (3)
#define NBD_REP_ERR_PLATFORM       NBD_REP_ERR (4)
#define NBD_REP_ERR_TLS_REQD       NBD_REP_ERR (5)
#define NBD_REP_ERR_UNKNOWN        NBD_REP_ERR (6)
#define NBD_REP_ERR_SHUTDOWN       NBD_REP_ERR (7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR (8)
#define NBD_REP_ERR_TOO_BIG        NBD_REP_ERR (9)
#define NBD_REP_ERR_EXT_HEADER_REQD NBD_REP_ERR (10)

/* §1.4 info types. */
#define NBD_INFO_EXPORT            0
#define NBD_INFO_NAME              1
#define NBD_INFO_DESCRIPTION       2
#define NBD_INFO_BLOCK_SIZE        3

/* §1.7 transmission flags. */
#define NBD_FLAG_HAS_FLAGS         (1 << 0)
#define NBD_FLAG_READ_ONLY         (1 << 1)
#define NBD_FLAG_SEND_FLUSH        (1 << 2)
#define NBD_FLAG_SEND_FUA          (1 << 3)
#define NBD_FLAG_ROTATIONAL        (1 << 4)
#define NBD_FLAG_SEND_TRIM         (1 << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1 << 6)
#define NBD_FLAG_SEND_DF           (1 << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1 << 8)
#define NBD_FLAG_SEND_RESIZE       (1 << 9)
#define NBD_FLAG_SEND_CACHE        (1 << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1 << 11)
#define NBD_FLAG_BLOCK_STATUS_PAYLOAD (1 << 12)

/* §2.1 requests. */
#define NBD_REQUEST_MAGIC          0x25609513
#define NBD_EXTENDED_REQUEST_MAGIC 0x21e41c71

#define NBD_CMD_READ               0
#define NBD_CMD_WRITE              1
#define NBD_CMD_DISC               2
#define NBD_CMD_FLUSH              3
#define NBD_CMD_TRIM               4
#define NBD_CMD_CACHE              5
#define NBD_CMD_WRITE_ZEROES       6
#define NBD_CMD_BLOCK_STATUS       7

#define NBD_CMD_FLAG_FUA           (1 << 0)
#define NBD_CMD_FLAG_NO_HOLE       (1 << 1)
#define NBD_CMD_FLAG_DF            (1 << 2)
#define NBD_CMD_FLAG_REQ_ONE       (1 << 3)
#define NBD_CMD_FLAG_FAST_ZERO     (1 << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN   (1 << 5)

/* §2.2 replies. */
#define NBD_SIMPLE_REPLY_MAGIC     0x67446698
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33ef
#define NBD_EXTENDED_REPLY_MAGIC   0x6e8a278c

#define NBD_REPLY_FLAG_DONE        (1 << 0)

#define NBD_REPLY_TYPE_NONE        0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_OFFSET_HOLE 2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6
#define NBD_REPLY_TYPE_ERROR       0x8001
#define NBD_REPLY_TYPE_ERROR_OFFSET 0x8002

/* §2.4 base:allocation status bits. */
#define NBD_STATE_HOLE             (1 << 0)
#define NBD_STATE_ZERO             (1 << 1)

/* §2.5 wire error numbers. */
#define NBD_SUCCESS                0
#define NBD_EPERM                  1
#define NBD_EIO                    5
#define NBD_ENOMEM                 12
#define NBD_EINVAL                 22
#define NBD_ENOSPC                 28
#define NBD_EOVERFLOW              75
#define NBD_ENOTSUP                95
#define NBD_ESHUTDOWN              108

/* Limits.  MAX_REQUEST_SIZE is nbdkit's, so the same request succeeds
 * or fails on both servers (protocol-rules.md, conventions).
 */
#define NBD_MAX_REQUEST_SIZE       (64 * 1024 * 1024)
#define NBD_MAX_STRING             4096

/* Wire structs.  Packed so that sizeof matches the wire. */
struct nbd_new_option {
  uint64_t magic;               /* NBD_NEW_VERSION */
  uint32_t option;
  uint32_t length;
} __attribute__ ((__packed__));

struct nbd_fixed_new_option_reply {
  uint64_t magic;               /* NBD_OPT_REPLY_MAGIC */
  uint32_t option;
  uint32_t reply;
  uint32_t length;
} __attribute__ ((__packed__));

struct nbd_request {
  uint32_t magic;               /* NBD_REQUEST_MAGIC */
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t count;
} __attribute__ ((__packed__));

/* §6 X-7: after NBD_OPT_EXTENDED_HEADERS. */
struct nbd_request_ext {
  uint32_t magic;               /* NBD_EXTENDED_REQUEST_MAGIC */
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint64_t count;               /* payload length with PAYLOAD_LEN */
} __attribute__ ((__packed__));

struct nbd_simple_reply {
  uint32_t magic;               /* NBD_SIMPLE_REPLY_MAGIC */
  uint32_t error;
  uint64_t cookie;
} __attribute__ ((__packed__));

struct nbd_structured_reply {
  uint32_t magic;               /* NBD_STRUCTURED_REPLY_MAGIC */
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint32_t length;
} __attribute__ ((__packed__));

/* §6 X-13: every reply's header after NBD_OPT_EXTENDED_HEADERS. */
struct nbd_extended_reply {
  uint32_t magic;               /* NBD_EXTENDED_REPLY_MAGIC */
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;              /* the request's offset */
  uint64_t length;
} __attribute__ ((__packed__));

struct nbd_block_descriptor {
  uint32_t length;
  uint32_t status_flags;
} __attribute__ ((__packed__));

/* §6 X-14: BLOCK_STATUS_EXT descriptors. */
struct nbd_block_descriptor_ext {
  uint64_t length;
  uint64_t status_flags;
} __attribute__ ((__packed__));

#endif /* NBDSRV_NBD_PROTOCOL_H */
