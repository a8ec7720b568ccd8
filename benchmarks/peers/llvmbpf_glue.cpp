/* Runs a benchmark kernel on llvmbpf (LLVM ORC JIT) and prints its figures, or its LLVM IR.
 *
 * Usage: llvmbpf_glue jit CODE.bin SLOT.bin OUT.bin N   (see glue.h for the output)
 *        llvmbpf_glue ir  CODE.bin SLOT.bin OUT.bin N   (prints the unoptimised IR it builds)
 * Built by benchmarks/speed.py against an llvmbpf build in the peers folder (README.md).
 */
#include <llvmbpf.hpp>

#include "glue.h"

static uint64_t run_jit(void *state, unsigned char *mem, size_t len, int *ok)
{
    (void)ok;
    return (*(bpftime::precompiled_ebpf_function *)state)(mem, len);
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s jit|ir CODE.bin SLOT.bin OUT.bin N\n", argv[0]);
        return 2;
    }
    size_t code_len, slot_len;
    unsigned char *code = glue_read(argv[2], &code_len);
    unsigned char *slot = glue_read(argv[3], &slot_len);
    bpftime::llvmbpf_vm vm;
    uint64_t t0 = glue_now_ns();
    if (vm.load_code(code, code_len) != 0) {
        fprintf(stderr, "load_code: %s\n", vm.get_error_message().c_str());
        return 1;
    }
    if (strcmp(argv[1], "ir") == 0) {
        // the ahead-of-time path writes the module it builds to standard output
        fflush(stdout);
        return vm.do_aot_compile(true) ? 0 : 1;
    }
    auto fn = vm.compile();
    if (!fn) {
        fprintf(stderr, "compile: %s\n", vm.get_error_message().c_str());
        return 1;
    }
    printf("compile_ns %llu\n", (unsigned long long)(glue_now_ns() - t0));
    bpftime::precompiled_ebpf_function f = *fn;
    return glue_time(run_jit, &f, slot, slot_len, argv[4], atoi(argv[5]));
}
