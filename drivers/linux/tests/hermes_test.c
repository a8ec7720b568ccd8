/* hermes_test: the Hermes kernel driver's own tests (and --bench figures), run against /dev/hermesN. */
/*
 * Usage: hermes_test [-d /dev/hermes0] [-e increment.bpf.o] [-k NAME] [--bench N]
 * Prints one "ok"/"not ok"/"skip" line per test and exits 1 if any failed. The geometry comes
 * from /sys/class/hermes/hermesN, so the cases scale with the device's slot sizes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hermes_uapi.h"

#ifndef RWF_HIPRI
#define RWF_HIPRI 0x01
#define RWF_DSYNC 0x02
#define RWF_SYNC 0x04
#define RWF_NOWAIT 0x08
#define RWF_APPEND 0x10
#endif

static const char *dev_path = "/dev/hermes0";
static const char *elf_path;
static long prog_slots, data_slots, prog_size, data_size, engines;
static char failure[512];

/* Record why the running test failed; returns -1 for "return fail(...)". */
static int fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(failure, sizeof(failure), fmt, ap);
	va_end(ap);
	return -1;
}

/* Checks that keep the first failure's line and values. */
#define EXPECT_EQ(got, want) do { long long g_ = (got), w_ = (want); \
	if (g_ != w_) return fail("line %d: %s = %lld, expected %lld (errno %d %s)", __LINE__, \
				  #got, g_, w_, errno, strerror(errno)); } while (0)
#define EXPECT_ERR(call, err) do { errno = 0; long long r_ = (call); \
	if (r_ != -1 || errno != (err)) return fail("line %d: %s = %lld errno %d (%s), expected " \
		"-1 errno %d (%s)", __LINE__, #call, r_, errno, strerror(errno), err, strerror(err)); \
	} while (0)

/* Raw eBPF instructions. */
#define INSN(op, regs, off, imm) ((uint64_t)(op) | (uint64_t)(regs) << 8 | \
	(uint64_t)(uint16_t)(off) << 16 | (uint64_t)(uint32_t)(imm) << 32)
static const uint64_t prog_ok[] = { INSN(0xb7, 0, 0, 0), INSN(0x95, 0, 0, 0) };	/* r0 = 0 */
static const uint64_t prog_r0_one[] = { INSN(0xb7, 0, 0, 1), INSN(0x95, 0, 0, 0) };
/* *(u64 *)r1 += 1; r0 = 0 */
static const uint64_t prog_inc64[] = {
	INSN(0x79, 0x13, 0, 0), INSN(0x07, 0x03, 0, 1), INSN(0x7b, 0x31, 0, 0),
	INSN(0xb7, 0, 0, 0), INSN(0x95, 0, 0, 0),
};
/*
 * Runs until the device's budget ends, slowly: a 64-bit division by a divisor that changes every
 * iteration (no compiler can make it a multiplication), its result stored to the data slot at
 * every iteration so that no compiler may drop the work (the registers are not observable when
 * the budget ends, memory is); native code spends about 0.6 s of a 10^9-instruction budget on
 * it here, the interpreter far longer.
 * r0 = 1; for (;;) { r3 = r0 | 1; r4 = ~0 / r3; r0 += r4; *(u64 *)r1 = r0; }
 */
static const uint64_t prog_loop[] = {
	INSN(0xb7, 0x00, 0, 1), INSN(0xbf, 0x03, 0, 0), INSN(0x47, 0x03, 0, 1),
	INSN(0xb7, 0x04, 0, -1), INSN(0x3f, 0x34, 0, 0), INSN(0x0f, 0x40, 0, 0),
	INSN(0x7b, 0x01, 0, 0), INSN(0x05, 0x00, -7, 0),
};
static const uint8_t prog_invalid[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static double now_us(void);

static long sysfs_long(const char *attr)
{
	char path[256], buf[64];
	const char *base = strrchr(dev_path, '/');
	FILE *f;

	snprintf(path, sizeof(path), "/sys/class/hermes/%s/%s", base ? base + 1 : dev_path, attr);
	f = fopen(path, "r");
	if (!f || !fgets(buf, sizeof(buf), f)) {
		fprintf(stderr, "hermes_test: cannot read %s: %s\n", path, strerror(errno));
		exit(2);
	}
	fclose(f);
	return strtol(buf, NULL, 0);
}

static int dev_open(void)
{
	int fd = open(dev_path, O_RDWR);

	if (fd < 0) {
		fprintf(stderr, "hermes_test: open %s: %s\n", dev_path, strerror(errno));
		exit(2);
	}
	return fd;
}

static int download(int fd, const void *prog, uint32_t len, uint32_t flags)
{
	struct hermes_download_prog_ioctl_argp a = {
		.len = len, .prog = (uintptr_t)prog, .flags = flags,
	};

	return ioctl(fd, HERMES_DOWNLOAD_PROG_IOCTL, &a);
}

/* A valid program of n bytes: (n / 8 - 1) times r0 = 0, then exit. */
static uint64_t *valid_program(size_t n)
{
	uint64_t *p = malloc(n);
	size_t i;

	for (i = 0; i + 1 < n / 8; i++)
		p[i] = prog_ok[0];
	p[n / 8 - 1] = prog_ok[1];
	return p;
}

static uint8_t *pattern(size_t n, unsigned int seed)
{
	uint8_t *p = malloc(n ? n : 1);
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)(i * 131 + seed * 17 + (i >> 9));
	return p;
}

/* Open, download the 2-instruction program, pwrite wsize bytes at woff, pread rsize at roff. */
static int write_read(size_t wsize, off_t woff, size_t rsize, off_t roff, ssize_t want_w,
		      ssize_t want_r)
{
	int fd = dev_open();
	uint8_t *w = pattern(wsize, 1), *r = calloc(1, rsize ? rsize : 1);
	ssize_t n;
	int ret = 0;

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	n = pwrite(fd, w, wsize, woff);
	EXPECT_EQ(n, want_w);
	n = pread(fd, r, rsize, roff);
	EXPECT_EQ(n, want_r);
	/* Where the read covers written bytes, they must come back. */
	if (roff == woff && want_r && memcmp(w, r, (size_t)(want_r < want_w ? want_r : want_w)))
		ret = fail("data read back differs from data written");
	free(w);
	free(r);
	close(fd);
	return ret;
}

static int t_send_program(void)
{
	int fd = dev_open();
	uint64_t *p = valid_program(4096);

	EXPECT_EQ(download(fd, p, 4096, 0), 0);
	/* A second download reuses the slot. */
	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	free(p);
	close(fd);
	return 0;
}

static int t_large_program(void)
{
	int fd = dev_open();
	uint8_t *p = calloc(1, 2 * prog_size);

	EXPECT_ERR(download(fd, p, 2 * prog_size, 0), EINVAL);
	EXPECT_ERR(download(fd, p, prog_size + 8, 0), EINVAL);
	EXPECT_ERR(download(fd, p, 0, 0), EINVAL);
	free(p);
	close(fd);
	return 0;
}

static int t_too_many_programs(void)
{
	int *fds = calloc(prog_slots + 1, sizeof(int));
	long i;

	for (i = 0; i <= prog_slots; i++)
		fds[i] = dev_open();
	for (i = 0; i < prog_slots; i++)
		EXPECT_EQ(download(fds[i], prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_ERR(download(fds[prog_slots], prog_ok, sizeof(prog_ok), 0), ENOSPC);
	/* Closing one file frees its slot for the next. */
	close(fds[0]);
	EXPECT_EQ(download(fds[prog_slots], prog_ok, sizeof(prog_ok), 0), 0);
	for (i = 1; i <= prog_slots; i++)
		close(fds[i]);
	free(fds);
	return 0;
}

static int t_slots_freed_on_close(void)
{
	long i;

	for (i = 0; i < 2 * (prog_slots + data_slots); i++) {
		int fd = dev_open();

		EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
		EXPECT_EQ(pwrite(fd, "x", 1, 0), 1);
		close(fd);
	}
	return 0;
}

static int t_invalid_flags(void)
{
	int fd = dev_open();

	EXPECT_ERR(download(fd, prog_ok, sizeof(prog_ok), 1), EINVAL);
	EXPECT_ERR(download(fd, prog_ok, sizeof(prog_ok), 0x80000000u), EINVAL);
	close(fd);
	return 0;
}

static int t_invalid_ioctl_num(void)
{
	int fd = dev_open();
	struct hermes_download_prog_ioctl_argp a = { 0 };

	EXPECT_ERR(ioctl(fd, 0, &a), EINVAL);
	EXPECT_ERR(ioctl(fd, _IOW('H', 0x51, struct hermes_download_prog_ioctl_argp), &a), EINVAL);
	EXPECT_ERR(ioctl(fd, _IOW('H', 0x50, uint64_t), &a), EINVAL);
	close(fd);
	return 0;
}

/* The ioctl argument and the program are user pointers: bad ones fail, never oops (SMAP). */
static int t_ioctl_bad_pointers(void)
{
	int fd = dev_open();
	void *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct hermes_download_prog_ioctl_argp a = {
		.len = sizeof(prog_ok), .prog = (uintptr_t)page,
	};

	EXPECT_ERR(ioctl(fd, HERMES_DOWNLOAD_PROG_IOCTL, page), EFAULT);
	EXPECT_ERR(ioctl(fd, HERMES_DOWNLOAD_PROG_IOCTL, (void *)8), EFAULT);
	EXPECT_ERR(ioctl(fd, HERMES_DOWNLOAD_PROG_IOCTL, &a), EFAULT);
	a.prog = (uintptr_t)0xffff888000000000ull;	/* a kernel address */
	EXPECT_ERR(ioctl(fd, HERMES_DOWNLOAD_PROG_IOCTL, &a), EFAULT);
	/* The file still works. */
	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	munmap(page, 4096);
	close(fd);
	return 0;
}

static int t_write_read_zero(void) { return write_read(0, 0, 0, 0, 0, 0); }
static int t_write_read_small(void) { return write_read(256, 0, 256, 0, 256, 256); }
static int t_write_read_medium(void) { return write_read(4096, 0, 4096, 0, 4096, 4096); }
static int t_write_read_large(void)
{
	return write_read(data_size, 0, data_size, 0, data_size, data_size);
}
static int t_write_offset(void) { return write_read(256, 1024, 256, 1024, 256, 256); }
static int t_read_offset(void) { return write_read(256, 0, 256, 1024, 256, 256); }
static int t_write_too_large(void)
{
	return write_read(2 * data_size, 0, 2 * data_size, 0, data_size, data_size);
}
static int t_read_too_large(void) { return write_read(256, 0, 2 * data_size, 0, 256, data_size); }
static int t_write_large_offset(void) { return write_read(256, data_size, 256, 0, 0, 256); }
static int t_read_large_offset(void) { return write_read(256, 0, 256, data_size, 256, 0); }

static int t_write_before_prog(void)
{
	int fd = dev_open();

	EXPECT_ERR(pwrite(fd, "abcd", 4, 0), EBADFD);
	EXPECT_ERR(write(fd, "abcd", 4), EBADFD);
	close(fd);
	return 0;
}

static int t_read_before_prog(void)
{
	int fd = dev_open();
	char buf[4];

	EXPECT_ERR(pread(fd, buf, 4, 0), EBADFD);
	close(fd);
	return 0;
}

static int t_read_before_write(void)
{
	int fd = dev_open();
	char buf[4];

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_ERR(pread(fd, buf, 4, 0), ENODATA);
	close(fd);
	return 0;
}

static int t_negative_offset(void)
{
	int fd = dev_open();
	char buf[4] = "abc";

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_ERR(pwrite(fd, buf, 4, -5), EINVAL);
	EXPECT_ERR(lseek(fd, -1, SEEK_SET), EINVAL);
	close(fd);
	return 0;
}

/* Plain write/read use and advance the file position; SEEK_END is the data slot's end. */
static int t_file_position(void)
{
	int fd = dev_open();
	char buf[8] = { 0 }, tail[8] = "wxyz";

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_EQ(write(fd, "abcd", 4), 4);
	EXPECT_EQ(write(fd, "efgh", 4), 4);
	EXPECT_EQ(lseek(fd, 0, SEEK_CUR), 8);
	EXPECT_EQ(lseek(fd, 2, SEEK_SET), 2);
	EXPECT_EQ(read(fd, buf, 4), 4);
	if (memcmp(buf, "cdef", 4))
		return fail("read at position 2 gave \"%.4s\"", buf);
	EXPECT_EQ(lseek(fd, 0, SEEK_END), data_size);
	EXPECT_EQ(write(fd, "z", 1), 0);
	EXPECT_EQ(lseek(fd, -4, SEEK_END), data_size - 4);
	EXPECT_EQ(write(fd, tail, 8), 4);
	close(fd);
	return 0;
}

/* Buffers that start mid-page and cross many pages: the scatter-gather path. */
static int t_unaligned_buffers(void)
{
	size_t n = data_size - 4096 - 77;
	uint8_t *wbase = malloc(n + 4096), *rbase = malloc(n + 4096);
	uint8_t *w = wbase + 123, *r = rbase + 4001;
	int fd = dev_open();
	size_t i;

	for (i = 0; i < n; i++)
		w[i] = (uint8_t)(i * 7 + (i >> 12));
	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_EQ(pwrite(fd, w, n, 4096 + 13), n);
	memset(r, 0, n);
	EXPECT_EQ(pread(fd, r, n, 4096 + 13), n);
	if (memcmp(w, r, n))
		return fail("unaligned %zu-byte transfer read back differs", n);
	free(wbase);
	free(rbase);
	close(fd);
	return 0;
}

static int t_writev_readv(void)
{
	int fd = dev_open();
	uint8_t *a = pattern(256, 2), *b = pattern(4096, 3), ra[256], rb[4096];
	struct iovec wv[2] = { { a, 256 }, { b, 4096 } }, rv[2] = { { ra, 256 }, { rb, 4096 } };

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_EQ(pwritev(fd, wv, 2, 0), 256 + 4096);
	EXPECT_EQ(preadv(fd, rv, 2, 0), 256 + 4096);
	if (memcmp(a, ra, 256) || memcmp(b, rb, 4096))
		return fail("vectored read back differs");
	free(a);
	free(b);
	close(fd);
	return 0;
}

static int t_writev_one_write_buffer(void)
{
	int fd = dev_open();
	uint8_t *w = pattern(4096, 4), r[4][1024];
	struct iovec rv[4] = { { r[0], 1024 }, { r[1], 1024 }, { r[2], 1024 }, { r[3], 1024 } };

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_EQ(pwrite(fd, w, 4096, 0), 4096);
	EXPECT_EQ(preadv(fd, rv, 4, 0), 4096);
	if (memcmp(w, r, 4096))
		return fail("one buffer read into four differs");
	free(w);
	close(fd);
	return 0;
}

static int t_writev_one_read_buffer(void)
{
	int fd = dev_open();
	uint8_t *a = pattern(1000, 5), *b = pattern(3000, 6), r[4000];
	struct iovec wv[2] = { { a, 1000 }, { b, 3000 } };

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_EQ(pwritev(fd, wv, 2, 0), 4000);
	EXPECT_EQ(pread(fd, r, 4000, 0), 4000);
	if (memcmp(a, r, 1000) || memcmp(b, r + 1000, 3000))
		return fail("two buffers read into one differ");
	free(a);
	free(b);
	close(fd);
	return 0;
}

static int t_rwf_not_supported(void)
{
	int fd = dev_open();
	char buf[256] = { 0 };
	struct iovec v = { buf, sizeof(buf) };

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_EQ(pwrite(fd, buf, sizeof(buf), 0), sizeof(buf));
	EXPECT_ERR(pwritev2(fd, &v, 1, 0, RWF_DSYNC), EOPNOTSUPP);
	EXPECT_ERR(pwritev2(fd, &v, 1, 0, RWF_HIPRI), EOPNOTSUPP);
	EXPECT_ERR(pwritev2(fd, &v, 1, 0, RWF_APPEND), EOPNOTSUPP);
	EXPECT_ERR(pwritev2(fd, &v, 1, 0, RWF_NOWAIT), EOPNOTSUPP);
	EXPECT_ERR(preadv2(fd, &v, 1, 0, RWF_NOWAIT), EOPNOTSUPP);
	EXPECT_ERR(preadv2(fd, &v, 1, 0, RWF_DSYNC), EOPNOTSUPP);
	EXPECT_ERR(preadv2(fd, &v, 1, 0, RWF_SYNC), EOPNOTSUPP);
	EXPECT_ERR(preadv2(fd, &v, 1, 0, RWF_HIPRI), EOPNOTSUPP);
	EXPECT_ERR(preadv2(fd, &v, 1, 0, 0x40000000), EOPNOTSUPP);
	close(fd);
	return 0;
}

/* A file opened with O_SYNC / O_DSYNC / O_APPEND: open flags do not change writes. */
static int t_open_flags_ignored(void)
{
	int fd = open(dev_path, O_RDWR | O_DSYNC | O_APPEND);
	char buf[16] = "0123456789abcdef", r[16];

	if (fd < 0)
		return fail("open with O_DSYNC|O_APPEND: %s", strerror(errno));
	EXPECT_EQ(download(fd, prog_invalid, sizeof(prog_invalid), 0), 0);
	EXPECT_EQ(pwrite(fd, buf, 16, 8), 16);
	EXPECT_EQ(pread(fd, r, 16, 8), 16);
	close(fd);
	return 0;
}

static int t_writev_rwf_sync(void)
{
	int fd = dev_open();
	uint8_t *w = pattern(256, 7), r[256];
	struct iovec wv = { w, 256 }, rv = { r, 256 };

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_EQ(pwritev2(fd, &wv, 1, 0, RWF_SYNC), 256);
	EXPECT_EQ(preadv(fd, &rv, 1, 0), 256);
	if (memcmp(w, r, 256))
		return fail("data after an RWF_SYNC run differs");
	free(w);
	close(fd);
	return 0;
}

static int t_rwf_sync_before_prog(void)
{
	int fd = dev_open();
	char buf[8] = { 0 };
	struct iovec v = { buf, 8 };

	EXPECT_ERR(pwritev2(fd, &v, 1, 0, RWF_SYNC), EBADFD);
	close(fd);
	return 0;
}

static int t_fsync(void)
{
	int fd = dev_open();
	char buf[256] = { 0 };

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_EQ(pwrite(fd, buf, 256, 0), 256);
	EXPECT_EQ(pread(fd, buf, 256, 0), 256);
	EXPECT_EQ(fsync(fd), 0);
	EXPECT_EQ(fdatasync(fd), 0);
	close(fd);
	return 0;
}

static int t_fsync_fresh_file(void)
{
	int fd = dev_open();

	EXPECT_ERR(fsync(fd), EBADFD);
	close(fd);
	return 0;
}

static int t_fsync_only_program(void)
{
	int fd = dev_open();

	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_ERR(fsync(fd), EBADFD);
	close(fd);
	return 0;
}

static int t_invalid_program(void)
{
	int fd = dev_open();
	char buf[256] = { 0 };
	struct iovec v = { buf, 256 };

	EXPECT_EQ(download(fd, prog_invalid, sizeof(prog_invalid), 0), 0);
	EXPECT_EQ(pwrite(fd, buf, 256, 0), 256);
	EXPECT_ERR(fsync(fd), ENOEXEC);
	EXPECT_ERR(pwritev2(fd, &v, 1, 0, RWF_SYNC), ENOEXEC);
	close(fd);
	return 0;
}

static int t_nonzero_r0(void)
{
	int fd = dev_open();

	EXPECT_EQ(download(fd, prog_r0_one, sizeof(prog_r0_one), 0), 0);
	EXPECT_EQ(pwrite(fd, "12345678", 8, 0), 8);
	EXPECT_ERR(fsync(fd), ENOEXEC);
	/* The file recovers with the next program. */
	EXPECT_EQ(download(fd, prog_ok, sizeof(prog_ok), 0), 0);
	EXPECT_EQ(fsync(fd), 0);
	close(fd);
	return 0;
}

/* The clang-compiled increment program: three u32 0, 1, 2 become 1, 2, 3. */
static int t_increment_elf(void)
{
	uint32_t in[3] = { 0, 1, 2 }, out[3] = { 0 };
	uint8_t *elf;
	struct stat st;
	int fd, efd;

	if (!elf_path)
		return 1;
	efd = open(elf_path, O_RDONLY);
	if (efd < 0 || fstat(efd, &st))
		return fail("%s: %s", elf_path, strerror(errno));
	elf = malloc(st.st_size);
	EXPECT_EQ(read(efd, elf, st.st_size), st.st_size);
	close(efd);
	fd = dev_open();
	EXPECT_EQ(download(fd, elf, st.st_size, 0), 0);
	EXPECT_EQ(pwrite(fd, in, sizeof(in), 0), sizeof(in));
	EXPECT_EQ(fsync(fd), 0);
	EXPECT_EQ(pread(fd, out, sizeof(out), 0), sizeof(out));
	if (out[0] != 1 || out[1] != 2 || out[2] != 3)
		return fail("increment gave %u %u %u", out[0], out[1], out[2]);
	free(elf);
	close(fd);
	return 0;
}

/* Several files at once: each has its own slots, data never crosses. */
static int t_several_opens(void)
{
	int fds[4], i;
	uint64_t v;

	for (i = 0; i < 4; i++) {
		fds[i] = dev_open();
		EXPECT_EQ(download(fds[i], prog_inc64, sizeof(prog_inc64), 0), 0);
		v = 1000 * i;
		EXPECT_EQ(pwrite(fds[i], &v, 8, 0), 8);
	}
	for (i = 3; i >= 0; i--)
		EXPECT_EQ(fsync(fds[i]), 0);
	for (i = 0; i < 4; i++) {
		EXPECT_EQ(pread(fds[i], &v, 8, 0), 8);
		EXPECT_EQ(v, 1000 * i + 1);
		close(fds[i]);
	}
	return 0;
}

/* Processes hammering the device at once: every run sees only its own file's data. */
static int t_concurrent_processes(void)
{
	int nproc = 4, iters = 40, i, status, bad = 0;

	for (i = 0; i < nproc; i++) {
		pid_t pid = fork();

		if (pid == 0) {
			int fd = dev_open(), k;
			uint64_t v;

			if (download(fd, prog_inc64, sizeof(prog_inc64), 0))
				_exit(10);
			for (k = 0; k < iters; k++) {
				v = ((uint64_t)i << 32) | (uint64_t)k * 2;
				if (pwrite(fd, &v, 8, 0) != 8 || fsync(fd) ||
				    pread(fd, &v, 8, 0) != 8)
					_exit(11);
				if (v != (((uint64_t)i << 32) | ((uint64_t)k * 2 + 1)))
					_exit(12);
			}
			_exit(0);
		}
	}
	for (i = 0; i < nproc; i++) {
		if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
			bad = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	}
	if (bad)
		return fail("a child failed with status %d", bad);
	return 0;
}

static FILE *open_param(const char *name, const char *mode)
{
	char path[128];

	snprintf(path, sizeof(path), "/sys/module/hermes/parameters/%s", name);
	return fopen(path, mode);
}

static int read_param(const char *name, char *buf, int size)
{
	FILE *f = open_param(name, "r");
	int ok = f && fgets(buf, size, f);

	if (f)
		fclose(f);
	return ok ? 0 : -1;
}

static int write_param(const char *name, const char *value)
{
	FILE *f = open_param(name, "w");
	int ok;

	if (!f)
		return -1;
	ok = fputs(value, f) >= 0;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/*
 * A runaway program: the run fails with ETIMEDOUT after cmd_timeout_ms, not when its budget
 * ends; where the device can abort, the engine is free at once and the file keeps working.
 */
static int t_run_timeout(void)
{
	int fd = dev_open(), can_abort = sysfs_long("abort");
	char old[32];
	double t0, took;
	int i;

	if (read_param("cmd_timeout_ms", old, sizeof(old)))
		return fail("cannot read cmd_timeout_ms: %s", strerror(errno));

	EXPECT_EQ(download(fd, prog_loop, sizeof(prog_loop), 0), 0);
	EXPECT_EQ(pwrite(fd, "x", 1, 0), 1);
	if (write_param("cmd_timeout_ms", "20"))
		return fail("cannot set cmd_timeout_ms: %s", strerror(errno));
	t0 = now_us();
	errno = 0;
	i = fsync(fd);
	took = (now_us() - t0) / 1e3;
	write_param("cmd_timeout_ms", old);
	if (i != -1 || errno != ETIMEDOUT)
		return fail("runaway fsync = %d errno %d (%s), expected ETIMEDOUT", i, errno,
			    strerror(errno));
	if (took > 5000)
		return fail("runaway fsync took %.0f ms with a 20 ms timeout", took);
	if (can_abort) {
		/* Every engine is usable again, the one that ran the loop included. */
		for (i = 0; i < 2 * engines; i++) {
			EXPECT_EQ(download(fd, prog_inc64, sizeof(prog_inc64), 0), 0);
			EXPECT_EQ(fsync(fd), 0);
		}
	}
	close(fd);
	return 0;
}

/* In a child: a file with a program and one byte of data; one byte on ready_fd says so. */
static int child_file(const void *prog, uint32_t len, int ready_fd)
{
	int fd = dev_open();
	char c = 1;

	if (download(fd, prog, len, 0) || pwrite(fd, "x", 1, 0) != 1 || write(ready_fd, &c, 1) != 1)
		_exit(1);
	return fd;
}

static void on_signal(int sig)
{
	(void)sig;
}

/*
 * A close interrupted by a signal while every engine is busy (the release waits for an engine
 * and the signal ends that wait): the file's slots must still come back, released later.
 */
static int t_signalled_close_releases_slots(void)
{
	int ready[2], go[2], i, status, *fds;
	pid_t owner, loopers[128];
	char old[32], c = 1;

	if (engines > 64)
		return 1;
	if (read_param("cmd_timeout_ms", old, sizeof(old)))
		return fail("cannot read cmd_timeout_ms: %s", strerror(errno));
	if (pipe(ready) || pipe(go))
		return fail("pipe: %s", strerror(errno));
	owner = fork();
	if (owner == 0) {
		struct sigaction sa = { .sa_handler = on_signal };
		int fd;

		sigaction(SIGUSR1, &sa, NULL);
		fd = child_file(prog_ok, sizeof(prog_ok), ready[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(1);
		close(fd);
		_exit(0);
	}
	EXPECT_EQ(read(ready[0], &c, 1), 1);
	if (write_param("cmd_timeout_ms", "3000"))
		return fail("cannot set cmd_timeout_ms: %s", strerror(errno));
	/*
	 * Two processes per engine run runaway programs back to back for 2 s: every engine stays
	 * busy and the second ones queue for an engine, so the owner's release finds none free.
	 */
	for (i = 0; i < 2 * engines; i++) {
		loopers[i] = fork();
		if (loopers[i] == 0) {
			int fd = child_file(prog_loop, sizeof(prog_loop), ready[1]);
			double end = now_us() + 2e6;

			while (now_us() < end)
				fsync(fd);
			_exit(0);
		}
	}
	for (i = 0; i < 2 * engines; i++)
		EXPECT_EQ(read(ready[0], &c, 1), 1);
	usleep(300 * 1000);	/* every engine runs by now */
	EXPECT_EQ(write(go[1], &c, 1), 1);
	usleep(30 * 1000);	/* the owner's release waits for an engine */
	kill(owner, SIGUSR1);
	waitpid(owner, &status, 0);
	for (i = 0; i < 2 * engines; i++)
		waitpid(loopers[i], &status, 0);
	write_param("cmd_timeout_ms", old);
	close(ready[0]);
	close(ready[1]);
	close(go[0]);
	close(go[1]);
	/* Every program slot can be had again. */
	fds = calloc(prog_slots, sizeof(int));
	for (i = 0; i < prog_slots; i++) {
		fds[i] = dev_open();
		EXPECT_EQ(download(fds[i], prog_ok, sizeof(prog_ok), 0), 0);
	}
	for (i = 0; i < prog_slots; i++)
		close(fds[i]);
	free(fds);
	return 0;
}

struct test {
	const char *name;
	int (*fn)(void);
};

static const struct test tests[] = {
	{ "SendProgram", t_send_program },
	{ "LargeProgram", t_large_program },
	{ "TooManyPrograms", t_too_many_programs },
	{ "SlotsFreedOnClose", t_slots_freed_on_close },
	{ "InvalidFlags", t_invalid_flags },
	{ "InvalidIoctlNum", t_invalid_ioctl_num },
	{ "IoctlBadPointers", t_ioctl_bad_pointers },
	{ "WriteReadZero", t_write_read_zero },
	{ "WriteReadSmall", t_write_read_small },
	{ "WriteReadMedium", t_write_read_medium },
	{ "WriteReadLarge", t_write_read_large },
	{ "WriteOffset", t_write_offset },
	{ "ReadOffset", t_read_offset },
	{ "WriteTooLarge", t_write_too_large },
	{ "ReadTooLarge", t_read_too_large },
	{ "WriteBeforeProg", t_write_before_prog },
	{ "ReadBeforeProg", t_read_before_prog },
	{ "ReadBeforeWrite", t_read_before_write },
	{ "WriteLargeOffset", t_write_large_offset },
	{ "ReadLargeOffset", t_read_large_offset },
	{ "NegativeOffset", t_negative_offset },
	{ "FilePosition", t_file_position },
	{ "UnalignedBuffers", t_unaligned_buffers },
	{ "WriteReadv", t_writev_readv },
	{ "WriteReadvOneWriteBuffer", t_writev_one_write_buffer },
	{ "WriteReadvOneReadBuffer", t_writev_one_read_buffer },
	{ "RwfFlagsNotSupported", t_rwf_not_supported },
	{ "OpenFlagsIgnored", t_open_flags_ignored },
	{ "WritevRWF_SYNC", t_writev_rwf_sync },
	{ "RwfSyncBeforeProg", t_rwf_sync_before_prog },
	{ "Fsync", t_fsync },
	{ "FsyncFreshFile", t_fsync_fresh_file },
	{ "FsyncOnlyProgram", t_fsync_only_program },
	{ "InvalidProgram", t_invalid_program },
	{ "NonZeroR0", t_nonzero_r0 },
	{ "IncrementElf", t_increment_elf },
	{ "SeveralOpens", t_several_opens },
	{ "ConcurrentProcesses", t_concurrent_processes },
	{ "RunTimeout", t_run_timeout },
	{ "SignalledCloseReleasesSlots", t_signalled_close_releases_slots },
};

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Medians of n rounds: 1 MiB (or a data slot) write+read, and fsync of a 2-instruction program. */
static int bench(int n)
{
	size_t size = data_size < (1 << 20) ? data_size : (1 << 20);
	uint8_t *buf = pattern(size, 9);
	double *t = calloc(n, sizeof(double));
	int fd = dev_open(), i;

	if (download(fd, prog_ok, sizeof(prog_ok), 0) || pwrite(fd, buf, size, 0) != (ssize_t)size)
		return fprintf(stderr, "bench setup: %s\n", strerror(errno)), 1;
	for (i = 0; i < n; i++) {
		double t0 = now_us();

		if (pwrite(fd, buf, size, 0) != (ssize_t)size || pread(fd, buf, size, 0) != (ssize_t)size)
			return fprintf(stderr, "bench write+read: %s\n", strerror(errno)), 1;
		t[i] = now_us() - t0;
	}
	qsort(t, n, sizeof(double), cmp_double);
	printf("bench: %zu KiB write+read through %s: median %.0f us (min %.0f, max %.0f, n=%d)\n",
	       size >> 10, dev_path, t[n / 2], t[0], t[n - 1], n);
	for (i = 0; i < n; i++) {
		double t0 = now_us();

		if (fsync(fd))
			return fprintf(stderr, "bench fsync: %s\n", strerror(errno)), 1;
		t[i] = now_us() - t0;
	}
	qsort(t, n, sizeof(double), cmp_double);
	printf("bench: fsync of a 2-instruction program: median %.0f us (min %.0f, max %.0f, n=%d)\n",
	       t[n / 2], t[0], t[n - 1], n);
	close(fd);
	free(t);
	free(buf);
	return 0;
}

/*
 * Run one test in a child process, so that a failing test's open files (and their slots) go away
 * with it instead of starving the tests after it. Returns the test's result; failure[] gets its
 * message.
 */
static int run_isolated(int (*fn)(void))
{
	int msg[2], status, r;
	ssize_t n;
	pid_t pid;

	failure[0] = 0;
	if (pipe(msg))
		return fail("pipe: %s", strerror(errno));
	pid = fork();
	if (pid == 0) {
		close(msg[0]);
		r = fn();
		if (r < 0 && write(msg[1], failure, strlen(failure)) < 0)
			_exit(3);
		_exit(r < 0 ? 1 : r > 0 ? 2 : 0);
	}
	close(msg[1]);
	n = read(msg[0], failure, sizeof(failure) - 1);
	failure[n > 0 ? n : 0] = 0;
	close(msg[0]);
	if (waitpid(pid, &status, 0) < 0)
		return fail("waitpid: %s", strerror(errno));
	if (!WIFEXITED(status))
		return fail("test process died (status %#x)", status);
	r = WEXITSTATUS(status);
	if (r == 1 && !failure[0])
		return fail("test failed without a message");
	return r == 0 ? 0 : r == 2 ? 1 : -1;
}

int main(int argc, char **argv)
{
	const char *only = NULL;
	int i, failed = 0, bench_n = 0;
	size_t k;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-d") && i + 1 < argc)
			dev_path = argv[++i];
		else if (!strcmp(argv[i], "-e") && i + 1 < argc)
			elf_path = argv[++i];
		else if (!strcmp(argv[i], "-k") && i + 1 < argc)
			only = argv[++i];
		else if (!strcmp(argv[i], "--bench") && i + 1 < argc)
			bench_n = atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: %s [-d DEV] [-e ELF] [-k TEST] [--bench N]\n", argv[0]);
			return 2;
		}
	}
	prog_slots = sysfs_long("program_slots");
	data_slots = sysfs_long("data_slots");
	prog_size = sysfs_long("program_slot_size");
	data_size = sysfs_long("data_slot_size");
	engines = sysfs_long("engines");
	printf("# %s: %ld engines, %ld x %ld B program slots, %ld x %ld B data slots\n", dev_path,
	       engines, prog_slots, prog_size, data_slots, data_size);
	if (bench_n > 0)
		return bench(bench_n);
	for (k = 0; k < sizeof(tests) / sizeof(tests[0]); k++) {
		double t0;
		int r;

		if (only && strcmp(only, tests[k].name))
			continue;
		t0 = now_us();
		r = run_isolated(tests[k].fn);
		if (r > 0) {
			printf("skip %s\n", tests[k].name);
		} else if (r == 0) {
			printf("ok %s (%.0f ms)\n", tests[k].name, (now_us() - t0) / 1e3);
		} else {
			printf("not ok %s: %s\n", tests[k].name, failure);
			failed++;
		}
		fflush(stdout);
	}
	printf("# %d failed\n", failed);
	return failed ? 1 : 0;
}
