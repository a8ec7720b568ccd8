/* faults.c: prints, then fails: arg1 0 a load of data[arg0] two calls deep, else a loop of arg0 steps (tests/test_contract.py) */
#include "hermes.h"
__attribute__((noinline)) static u64 load(u8 *data, u64 at) {
    hermes_printk("load at %llu\n", at);
    return data[at];
}
__attribute__((noinline)) static u64 middle(u8 *data, u64 at) { return load(data, at) + 1; }
HERMES_ENTRY(faults) {
    hermes_printk("start\n");
    if (arg1) {
        for (volatile u64 i = 0; i < arg0; i++) {
        }
        return 0;
    }
    return middle(data, arg0);
}
