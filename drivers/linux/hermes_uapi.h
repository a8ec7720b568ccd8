/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* User-space interface of the Hermes kernel driver (/dev/hermesN): the program-download ioctl. */
#ifndef HERMES_UAPI_H
#define HERMES_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

/*
 * Argument of HERMES_DOWNLOAD_PROG_IOCTL. The layout (u32, u64, u32: 24 bytes with the natural
 * padding of 64-bit ABIs) is the published driver's, so its programs and tests run unchanged.
 * prog is a user pointer to len bytes of raw eBPF instructions or a whole ELF object.
 */
struct hermes_download_prog_ioctl_argp {
	__u32 len;
	__u64 prog;
	__u32 flags;	/* must be 0 */
};

#define HERMES_DOWNLOAD_PROG_IOCTL \
	_IOW('H', 0x50, struct hermes_download_prog_ioctl_argp)

#endif /* HERMES_UAPI_H */
