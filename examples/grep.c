/* grep: how many '\n'-separated payload lines contain a fixed pattern.
 * param[0] = pattern length (1..48); the pattern bytes are param[1..6] (header bytes 16..63).
 * r0 = the number of matching lines (0 for an invalid pattern length). */
#include "hermes_example.h"

#define MAX_PATTERN 48

u64 grep(u8 *slot, u64 slot_size)
{
    u64 n = hermes_payload_len(slot, slot_size, 0);
    u64 m = ((struct hermes_hdr *)slot)->param[0];
    const u8 *pat = slot + 16;
    const u8 *p = slot + HERMES_HDR_SIZE;
    if (m == 0 || m > MAX_PATTERN)
        return 0;
    u64 lines = 0;
    int found = 0;
    for (u64 i = 0; i < n; i++) {
        if (p[i] == '\n') {
            lines += found;
            found = 0;
            continue;
        }
        if (found || i + m > n || p[i] != pat[0])
            continue;
        u64 j = 1;
        while (j < m && p[i + j] == pat[j])
            j++;
        found = j == m;
    }
    return lines + found;
}
