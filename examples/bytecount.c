/* bytecount: how many input bytes equal arg0 (its low 8 bits). r0 = the count. */
#include "hermes.h"

HERMES_ENTRY(bytecount)
{
    u8 value = (u8)arg0;
    u64 count = 0;
    for (u64 i = 0; i < len; i++)
        count += data[i] == value;
    return count;
}
