/* grep: how many '\n'-separated input lines contain a fixed pattern of 1..16 bytes.
 * arg0 = the pattern length; arg1, arg2 = the pattern bytes, little-endian (byte 0 is the low
 * byte of arg1, byte 8 the low byte of arg2). r0 = the number of matching lines (0 for a pattern
 * length outside 1..16). */
#include "hermes.h"

#define MAX_PATTERN 16

HERMES_ENTRY(grep)
{
    u64 m = arg0;
    u64 words[2] = {arg1, arg2};
    const u8 *pat = (const u8 *)words;
    if (m == 0 || m > MAX_PATTERN)
        return 0;
    u64 lines = 0;
    int found = 0;
    for (u64 i = 0; i < len; i++) {
        if (data[i] == '\n') {
            lines += found;
            found = 0;
            continue;
        }
        if (found || i + m > len || data[i] != pat[0])
            continue;
        u64 j = 1;
        while (j < m && data[i + j] == pat[j])
            j++;
        found = j == m;
    }
    return lines + found;
}
