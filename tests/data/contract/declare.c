/* declare.c: data[i] = i + 1 for i < arg0; declares arg0 bytes of output unless arg1 is set (tests/test_contract.py) */
#include "hermes.h"
HERMES_ENTRY(declare) {
    for (u64 i = 0; i < arg0; i++)
        data[i] = (u8)(i + 1);
    if (!arg1)
        hermes_set_output(arg0);
    return 0;
}
