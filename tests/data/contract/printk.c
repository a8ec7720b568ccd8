/* printk.c: prints its input length and first argument with bpf_trace_printk (tests/test_contract.py) */
#include "hermes.h"
HERMES_ENTRY(printk) {
    hermes_printk("len=%llu arg=%llx\n", len, arg0);
    return 0;
}
