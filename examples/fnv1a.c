/* fnv1a: the 64-bit FNV-1a hash of the payload. r0 = the hash. */
#include "hermes_example.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

u64 fnv1a(u8 *slot, u64 slot_size)
{
    u64 n = hermes_payload_len(slot, slot_size, 0);
    const u8 *p = slot + HERMES_HDR_SIZE;
    u64 h = FNV_OFFSET;
    for (u64 i = 0; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}
