/* xor.c: XORs the input with arg0's low byte in place (twice: the input again) (tests/test_contract.py) */
#include "hermes.h"
HERMES_ENTRY(xor) {
    for (u64 i = 0; i < len; i++)
        data[i] ^= (u8)arg0;
    return len;
}
