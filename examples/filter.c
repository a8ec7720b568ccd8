/* filter: the input is an array of 16-byte records {u64 key; u64 value}. Keeps the records whose
 * key is in [arg0, arg1], compacted in order to the front, and makes them the output
 * (hermes_set_output). r0 = the number of records kept. */
#include "hermes.h"

struct record {
    u64 key;
    u64 value;
};

HERMES_ENTRY(filter)
{
    u64 n = len / sizeof(struct record);
    struct record *r = (struct record *)data;
    u64 kept = 0;
    for (u64 i = 0; i < n; i++) {
        u64 key = r[i].key;
        if (key < arg0 || key > arg1)
            continue;
        if (kept != i) {
            r[kept].key = key;
            r[kept].value = r[i].value;
        }
        kept++;
    }
    hermes_set_output(kept * sizeof(struct record));
    return kept;
}
