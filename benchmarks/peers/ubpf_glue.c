/* Runs a benchmark kernel on uBPF (x86-64 JIT or interpreter) and prints its figures.
 *
 * Usage: ubpf_glue jit|interp CODE.bin SLOT.bin OUT.bin N   (see glue.h for the output).
 * Built by benchmarks/speed.py against a uBPF build in the peers folder (README.md).
 */
#include <ubpf.h>

#include "glue.h"

static uint64_t run_jit(void *state, unsigned char *mem, size_t len, int *ok)
{
    (void)ok;
    return ((ubpf_jit_fn)state)(mem, len);
}

static uint64_t run_interp(void *state, unsigned char *mem, size_t len, int *ok)
{
    uint64_t r0 = 0;
    if (ubpf_exec((struct ubpf_vm *)state, mem, len, &r0) != 0)
        *ok = 0;
    return r0;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s jit|interp CODE.bin SLOT.bin OUT.bin N\n", argv[0]);
        return 2;
    }
    int jit = strcmp(argv[1], "jit") == 0;
    size_t code_len, slot_len;
    unsigned char *code = glue_read(argv[2], &code_len);
    unsigned char *slot = glue_read(argv[3], &slot_len);
    struct ubpf_vm *vm = ubpf_create();
    char *err = NULL;
    uint64_t t0 = glue_now_ns();
    if (ubpf_load(vm, code, (uint32_t)code_len, &err) != 0) {
        fprintf(stderr, "ubpf_load: %s\n", err ? err : "?");
        return 1;
    }
    ubpf_jit_fn fn = NULL;
    if (jit) {
        fn = ubpf_compile(vm, &err);
        if (!fn) {
            fprintf(stderr, "ubpf_compile: %s\n", err ? err : "?");
            return 1;
        }
    }
    printf("compile_ns %llu\n", (unsigned long long)(glue_now_ns() - t0));
    int rc = jit ? glue_time(run_jit, (void *)fn, slot, slot_len, argv[4], atoi(argv[5]))
                 : glue_time(run_interp, vm, slot, slot_len, argv[4], atoi(argv[5]));
    ubpf_destroy(vm);
    return rc;
}
