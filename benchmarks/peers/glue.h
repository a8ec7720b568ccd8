/* Shared part of the peer glue programs: read files, time N runs of a kernel, print figures.
 *
 * Every glue program is called as  GLUE MODE CODE.bin SLOT.bin OUT.bin N  and prints
 * "key value" lines: compile_ns, r0 (hex), min_ns, median_ns. CODE.bin is the kernel's raw
 * eBPF instructions (8 bytes each), SLOT.bin the input data slot; each run gets a fresh copy
 * of the slot (copied outside the timed region), and the slot after the first run is
 * written to OUT.bin so the caller can check what the kernel wrote.
 */
#ifndef HERMES_PEER_GLUE_H
#define HERMES_PEER_GLUE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Returns the contents of PATH (malloc'ed) and its size in *len; exits on failure. */
static unsigned char *glue_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = (unsigned char *)malloc(n > 0 ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "%s: short read\n", path);
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void glue_write(const char *path, const unsigned char *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, len, f) != len) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

static uint64_t glue_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int glue_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* One run of the kernel on MEM (LEN bytes): returns r0; *ok is cleared on an engine error. */
typedef uint64_t (*glue_run_fn)(void *state, unsigned char *mem, size_t len, int *ok);

/* Times RUNS runs of RUN on fresh copies of SLOT, writes the first run's slot to OUT_PATH and
 * prints r0, min_ns and median_ns; returns the process exit status. */
static int glue_time(glue_run_fn run, void *state, const unsigned char *slot, size_t len,
                     const char *out_path, int runs)
{
    unsigned char *work = (unsigned char *)malloc(len);
    uint64_t *ns = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(runs > 0 ? runs : 1));
    uint64_t r0 = 0;
    for (int i = 0; i < runs; i++) {
        memcpy(work, slot, len);
        int ok = 1;
        uint64_t t0 = glue_now_ns();
        uint64_t r = run(state, work, len, &ok);
        ns[i] = glue_now_ns() - t0;
        if (!ok) {
            fprintf(stderr, "run %d failed\n", i);
            return 1;
        }
        if (i == 0) {
            r0 = r;
            glue_write(out_path, work, len);
        } else if (r != r0) {
            fprintf(stderr, "run %d: r0 %#llx differs from the first run's\n", i,
                    (unsigned long long)r);
            return 1;
        }
    }
    qsort(ns, (size_t)runs, sizeof(uint64_t), glue_cmp);
    printf("r0 0x%llx\nmin_ns %llu\nmedian_ns %llu\n", (unsigned long long)r0,
           (unsigned long long)ns[0], (unsigned long long)ns[runs / 2]);
    free(work);
    free(ns);
    return 0;
}

#endif
