/* hermes.h: what a C program for a Hermes device sees (specs/run-contract.md, section 1).
 *
 * Compile with the include directory `hermes cflags` prints:
 *     clang -target bpf -O2 -mcpu=v3 $(hermes cflags) -c prog.c -o prog.o
 *
 * A program is one function called like
 *     u64 entry(u8 *data, u64 len, u64 arg0, u64 arg1, u64 arg2);
 * data: the data window (the input at 0..len, zeros after it up to the run's `size`);
 * len:  the input length in bytes;
 * arg0..arg2: the run's arguments (`hermes run --arg N`, `dev.run(..., args=(...))`), 0 when not
 *       given.
 * The return value is the run's r0. The output is, in this order: the caller's `read` size, the
 * length given to hermes_set_output(), else the input (`len` bytes, changed in place).
 * An access outside the window stops the run with an out-of-bounds fault.
 */
#ifndef HERMES_H
#define HERMES_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef short s16;
typedef int s32;
typedef long long s64;

/* The entry point: HERMES_ENTRY(count) { ... return n; } defines `u64 count(u8 *data, u64 len,
 * u64 arg0, u64 arg1, u64 arg2)`. Give an object's other functions `static` (or `noinline
 * static`) so that the entry is its only global function, or choose it with
 * `hermes run --function NAME` / `Program.from_elf(path, function=NAME)`. Parameters a program
 * does not use draw no warning. */
#define HERMES_ENTRY(name)                                                        \
    u64 name(u8 *data __attribute__((unused)), u64 len __attribute__((unused)),   \
             u64 arg0 __attribute__((unused)), u64 arg1 __attribute__((unused)),  \
             u64 arg2 __attribute__((unused)))

/* Helpers, called by id (as Linux's bpf_helper_defs.h does), so that no relocation is needed. */

/* hermes_memset(dst, c, n): fills n bytes at dst with c; returns dst. */
static void *(*const hermes_memset)(void *dst, int c, u64 n) = (void *)0x1000;

/* hermes_memcpy(dst, src, n): copies n bytes (the regions may overlap, as memmove); returns dst. */
static void *(*const hermes_memcpy)(void *dst, const void *src, u64 n) = (void *)0x1001;

/* hermes_set_output(n): the run's output is data[0..n) (n at most the window's size, else the
 * run fails with a helper fault); returns 0. */
static long (*const hermes_set_output)(u64 n) = (void *)0x1002;

/* bpf_trace_printk(fmt, sizeof(fmt), a, b, c): Linux's helper 6. Appends the formatted text to
 * the run's printed text (Result.trace; `hermes run` shows it on stderr), at most 4096 bytes per
 * run. Conversions: %d %i %u %x %X %ld %lu %lx %lld %llu %llx %p %s %c %%; at most three
 * arguments. Returns the number of bytes written. */
static long (*const bpf_trace_printk)(const char *fmt, u32 fmt_size, ...) = (void *)6;

/* hermes_printk("x = %llu\n", x): bpf_trace_printk with the format kept in .rodata. */
#define hermes_printk(fmt, ...)                                                   \
    ({                                                                            \
        static const char hermes_fmt_[] = fmt;                                    \
        bpf_trace_printk(hermes_fmt_, sizeof(hermes_fmt_), ##__VA_ARGS__);        \
    })

#endif /* HERMES_H */
