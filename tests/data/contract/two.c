/* two.c: two global functions: the entry is chosen with Program.from_elf(..., function=NAME) (tests/test_contract.py) */
#include "hermes.h"
HERMES_ENTRY(first) { return 1; }
HERMES_ENTRY(second) { return 2 + len; }
