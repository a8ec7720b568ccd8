/* histogram: 256 u32 counters, one per byte value of the input. The output is the counters
 * (1024 bytes, hermes_set_output), so run it with a window of at least align8(len) + 1024 bytes
 * (`--size`, `size=`): the counters are built in the zeroed bytes past the input, then moved to
 * the front. r0 = the number of input bytes counted. */
#include "hermes.h"

#define BINS 256

HERMES_ENTRY(histogram)
{
    /* past the input the window reads as zero: the counters need no clearing */
    u32 *bins = (u32 *)(data + ((len + 7) & ~7ULL));
    for (u64 i = 0; i < len; i++)
        bins[data[i]]++;
    hermes_memcpy(data, bins, BINS * sizeof(u32));
    hermes_set_output(BINS * sizeof(u32));
    return len;
}
