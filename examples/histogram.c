/* histogram: 256 u32 counters, one per byte value, written at HERMES_OUT(len).
 * r0 = the number of payload bytes counted. */
#include "hermes_example.h"

#define BINS 256

u64 histogram(u8 *slot, u64 slot_size)
{
    u64 n = hermes_payload_len(slot, slot_size, BINS * sizeof(u32));
    const u8 *p = slot + HERMES_HDR_SIZE;
    u32 *bins = (u32 *)(slot + HERMES_OUT(n));
    /* volatile keeps clang from turning the loop into a memset call (BPF has no libc) */
    for (volatile u32 b = 0; b < BINS; b++)
        bins[b] = 0;
    for (u64 i = 0; i < n; i++)
        bins[p[i]]++;
    return n;
}
