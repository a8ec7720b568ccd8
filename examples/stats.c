/* stats: count, sum, min and max of the payload read as little-endian u32 words, accumulated by a
 * separate (noinline: a real bpf-to-bpf call) function into a struct on the caller's stack. The
 * result {count, sum, min, max, calls} (5 x u64) is written at HERMES_OUT(len); `calls` counts the
 * update() calls in a global (.bss), which starts at 0 on every run. r0 = count. */
#include "hermes_example.h"

struct stats {
    u64 count;
    u64 sum;
    u64 min;
    u64 max;
};

u64 calls; /* .bss: fresh (zero) for every run */

static __attribute__((noinline)) void update(struct stats *s, u32 w)
{
    s->count++;
    s->sum += w;
    if (w < s->min)
        s->min = w;
    if (w > s->max)
        s->max = w;
    calls++;
}

u64 stats(u8 *slot, u64 slot_size)
{
    u64 len = hermes_payload_len(slot, slot_size, 5 * sizeof(u64));
    u64 n = len / 4;
    const u32 *w = (const u32 *)(slot + HERMES_HDR_SIZE);
    struct stats s = {0, 0, 0xffffffffULL, 0};
    for (u64 i = 0; i < n; i++)
        update(&s, w[i]);
    u64 *out = (u64 *)(slot + HERMES_OUT(len));
    out[0] = s.count;
    out[1] = s.sum;
    out[2] = s.min;
    out[3] = s.max;
    out[4] = calls;
    return s.count;
}
