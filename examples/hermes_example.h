/* Data-slot convention shared by the Hermes examples (see README.md).
 *
 * A program is called with r1 = address of the data slot and r2 = its size (1 MiB on the device).
 * The slot starts with a 64-byte header: a u64 payload length, then seven u64 parameters. The
 * payload follows the header. Programs that produce more than r0 write it at
 * HERMES_OUT(len) = 64 + len rounded up to 8, right after the payload.
 */
#ifndef HERMES_EXAMPLE_H
#define HERMES_EXAMPLE_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define HERMES_HDR_SIZE 64
#define HERMES_OUT(len) (HERMES_HDR_SIZE + (((len) + 7) & ~7ULL))

struct hermes_hdr {
    u64 len;      /* payload bytes */
    u64 param[7]; /* per-example parameters */
};

/* The payload length, clamped so that the payload plus `reserve` output bytes fit in the slot
 * (a program must never trust the header to stay inside its memory). */
static inline u64 hermes_payload_len(const u8 *slot, u64 slot_size, u64 reserve)
{
    if (slot_size < HERMES_HDR_SIZE + reserve + 8)
        return 0;
    u64 len = ((const struct hermes_hdr *)slot)->len;
    u64 max = slot_size - HERMES_HDR_SIZE - reserve - 8;
    return len < max ? len : max;
}

#endif
