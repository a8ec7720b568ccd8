/* stats: count, sum, min and max of the input read as little-endian u32 words, accumulated by a
 * separate (noinline: a real bpf-to-bpf call) function into a struct on the caller's stack. The
 * output is {count, sum, min, max, calls} (5 x u64, hermes_set_output) at the front of the
 * window, so run it with a window of at least 40 bytes (`--size 40` for shorter inputs); `calls`
 * counts the update() calls in a global (.bss), which starts at 0 on every run. With arg0 != 0
 * it also prints the figures (hermes_printk). r0 = count. */
#include "hermes.h"

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

HERMES_ENTRY(stats)
{
    u64 n = len / 4;
    const u32 *w = (const u32 *)data;
    struct stats s = {0, 0, 0xffffffffULL, 0};
    for (u64 i = 0; i < n; i++)
        update(&s, w[i]);
    if (arg0) {
        hermes_printk("stats: %llu words, sum %llu\n", s.count, s.sum);
        hermes_printk("stats: min %llu, max %llu\n", s.min, s.max);
    }
    u64 *out = (u64 *)data;
    out[0] = s.count;
    out[1] = s.sum;
    out[2] = s.min;
    out[3] = s.max;
    out[4] = calls;
    hermes_set_output(5 * sizeof(u64));
    return s.count;
}
