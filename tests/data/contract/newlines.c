/* newlines.c: counts the '\n' bytes of the input [0, len) (tests/test_contract.py) */
#include "hermes.h"
HERMES_ENTRY(newlines) {
    u64 n = 0;
    for (u64 i = 0; i < len; i++)
        n += data[i] == '\n';
    return n;
}
