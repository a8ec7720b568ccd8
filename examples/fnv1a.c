/* fnv1a: the 64-bit FNV-1a hash of the input. r0 = the hash. */
#include "hermes.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

HERMES_ENTRY(fnv1a)
{
    u64 h = FNV_OFFSET;
    for (u64 i = 0; i < len; i++) {
        h ^= data[i];
        h *= FNV_PRIME;
    }
    return h;
}
