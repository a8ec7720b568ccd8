/* tail.c: sum of the window's bytes [arg1, arg0): 0 past the input, where the window reads zero (tests/test_contract.py) */
#include "hermes.h"
HERMES_ENTRY(tail) {
    u64 s = 0;
    for (u64 i = arg1; i < arg0; i++)
        s += data[i];
    return s;
}
