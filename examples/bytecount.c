/* bytecount: how many payload bytes equal param[0] (low 8 bits). r0 = the count. */
#include "hermes_example.h"

u64 bytecount(u8 *slot, u64 slot_size)
{
    u64 n = hermes_payload_len(slot, slot_size, 0);
    u8 value = (u8)((struct hermes_hdr *)slot)->param[0];
    const u8 *p = slot + HERMES_HDR_SIZE;
    u64 count = 0;
    for (u64 i = 0; i < n; i++)
        count += p[i] == value;
    return count;
}
