/* filter: the payload is an array of 16-byte records {u64 key; u64 value}. Keep the records whose
 * key is in [param[0], param[1]], compacted in order to the front of the payload (the rest of the
 * payload is left as it was). r0 = the number of records kept. */
#include "hermes_example.h"

struct record {
    u64 key;
    u64 value;
};

u64 filter(u8 *slot, u64 slot_size)
{
    u64 n = hermes_payload_len(slot, slot_size, 0) / sizeof(struct record);
    u64 lo = ((struct hermes_hdr *)slot)->param[0];
    u64 hi = ((struct hermes_hdr *)slot)->param[1];
    struct record *r = (struct record *)(slot + HERMES_HDR_SIZE);
    u64 kept = 0;
    for (u64 i = 0; i < n; i++) {
        u64 key = r[i].key;
        if (key < lo || key > hi)
            continue;
        if (kept != i) {
            r[kept].key = key;
            r[kept].value = r[i].value;
        }
        kept++;
    }
    return kept;
}
