/* newlines: how many '\n' bytes the input holds. r0 = the count. Counts of pieces add up, so
 * `hermes scan newlines.o big.log --reduce sum` counts the lines of a file of any size. */
#include "hermes.h"

HERMES_ENTRY(newlines)
{
    u64 count = 0;
    for (u64 i = 0; i < len; i++)
        count += data[i] == '\n';
    return count;
}
