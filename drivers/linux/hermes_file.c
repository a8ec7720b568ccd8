// SPDX-License-Identifier: GPL-2.0
/* /dev/hermesN file operations: each open file owns at most one program slot and one data slot. */

#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/uio.h>

#include "hermes.h"
#include "hermes_uapi.h"

struct hermes_file {
	struct hermes_dev *hd;
	struct mutex lock;	/* serializes the calls on this file */
	int prog_slot;
	int data_slot;
	u32 prog_len;		/* length of the last download (0 after a failed one) */
	u16 next_id;		/* this file numbers its own commands */
	int stale_engine;	/* engine of a timed-out run that may still use the slots, or -1 */
};

/* Per-call flags of a read or write, without the ones the open flags (O_SYNC...) gave. */
static int hermes_call_flags(struct kiocb *iocb)
{
	return iocb->ki_flags & ~iocb->ki_filp->f_iocb_flags;
}

static u16 hermes_next_id(struct hermes_file *hf)
{
	u16 id = hf->next_id++;

	if (!hf->next_id)
		hf->next_id = 1;
	return id;
}

static int hermes_open(struct inode *inode, struct file *file)
{
	struct hermes_dev *hd = container_of(inode->i_cdev, struct hermes_dev, cdev);
	struct hermes_file *hf;

	hf = kzalloc(sizeof(*hf), GFP_KERNEL);
	if (!hf)
		return -ENOMEM;
	down_read(&hd->gone_lock);
	if (hd->gone) {
		up_read(&hd->gone_lock);
		kfree(hf);
		return -ENODEV;
	}
	get_device(&hd->dev);
	up_read(&hd->gone_lock);
	hf->hd = hd;
	mutex_init(&hf->lock);
	hf->prog_slot = HERMES_NO_SLOT;
	hf->data_slot = HERMES_NO_SLOT;
	hf->next_id = 1;
	hf->stale_engine = -1;
	file->private_data = hf;
	return 0;
}

static void hermes_release_one(struct hermes_file *hf, u8 type, int slot)
{
	int ret;

	if (slot == HERMES_NO_SLOT)
		return;
	if (hf->stale_engine >= 0) {
		hermes_defer_release(hf->hd, type, slot, hf->stale_engine);
		return;
	}
	ret = hermes_release_slot(hf->hd, type, slot, hermes_next_id(hf));
	/*
	 * No engine in time, or a signal ended the wait for one (a close runs the release in the
	 * closing task, whose pending signals interrupt the wait): release it later.
	 */
	if (ret == -ETIMEDOUT || ret == -ERESTARTSYS)
		hermes_defer_release(hf->hd, type, slot, -1);
	else if (ret)
		dev_warn_ratelimited(&hf->hd->dev, "Release Slot (type %u, slot %d): %d\n",
				     type, slot, ret);
}

static int hermes_release(struct inode *inode, struct file *file)
{
	struct hermes_file *hf = file->private_data;
	struct hermes_dev *hd = hf->hd;

	down_read(&hd->gone_lock);
	if (!hd->gone) {
		hermes_release_one(hf, HERMES_SLOT_PROGRAM, hf->prog_slot);
		hermes_release_one(hf, HERMES_SLOT_DATA, hf->data_slot);
	}
	up_read(&hd->gone_lock);
	mutex_destroy(&hf->lock);
	kfree(hf);
	hermes_dev_put(hd);
	return 0;
}

/* Lock the file and check the device is still there; on success the caller must unlock. */
static int hermes_enter(struct hermes_file *hf)
{
	mutex_lock(&hf->lock);
	down_read(&hf->hd->gone_lock);
	if (hf->hd->gone) {
		up_read(&hf->hd->gone_lock);
		mutex_unlock(&hf->lock);
		return -ENODEV;
	}
	return 0;
}

static void hermes_leave(struct hermes_file *hf)
{
	up_read(&hf->hd->gone_lock);
	mutex_unlock(&hf->lock);
}

static int hermes_ensure_slot(struct hermes_file *hf, u8 type, int *slot)
{
	if (*slot != HERMES_NO_SLOT)
		return 0;
	return hermes_request_slot(hf->hd, type, hermes_next_id(hf), slot);
}

/* Bytes of a transfer of len at pos that fit in the data slot (0 past its end). */
static size_t hermes_clamp(struct hermes_file *hf, loff_t pos, size_t len)
{
	u32 size = hf->hd->data_size;

	return pos >= size ? 0 : min_t(u64, len, size - pos);
}

static u64 hermes_data_off(struct hermes_file *hf, loff_t pos)
{
	return hf->hd->data_off + (u64)hf->data_slot * hf->hd->data_size + pos;
}

static const char *const hermes_ebpf_error_text[] = HERMES_EBPF_ERROR_TEXTS;

/* Run Program on the file's slots; a run must return r0 = 0. */
static int hermes_run(struct hermes_file *hf, const char *what)
{
	struct hermes_dev *hd = hf->hd;
	struct hermes_resp r;
	int engine, ret;
	u64 args;

	if (hf->prog_slot == HERMES_NO_SLOT)
		return hermes_why(hd, -EBADFD, "%s before a program was downloaded", what);
	if (hf->data_slot == HERMES_NO_SLOT)
		return hermes_why(hd, -EBADFD, "%s before any data was written", what);
	args = hf->prog_slot | (u64)hf->data_slot << 8 | (u64)hf->prog_len << 32;
	ret = hermes_command(hd, HERMES_CMD_RUN_PROGRAM, hermes_next_id(hf), args, &r, &engine);
	if (engine >= 0)
		hf->stale_engine = engine;
	if (ret)
		return ret;
	if (r.status == HERMES_STATUS_EBPF_ERROR) {
		u8 kind = r.value & 0xff;
		const char *text = kind < ARRAY_SIZE(hermes_ebpf_error_text) ?
				   hermes_ebpf_error_text[kind] : NULL;

		return hermes_why(hd, -ENOEXEC,
				  "Run Program (program slot %d, data slot %d): %s at %s %llu (device error code %#llx)",
				  hf->prog_slot, hf->data_slot, text ? text : "eBPF error of unknown kind",
				  kind == HERMES_EBPF_ERR_LOAD ? "instruction" : "pc", r.value >> 8,
				  r.value);
	}
	ret = hermes_status_errno(r.status);
	if (ret)
		return hermes_why(hd, ret, "Run Program (program slot %d, data slot %d): device status %#x (%s)",
				  hf->prog_slot, hf->data_slot, r.status,
				  hermes_status_name(r.status));
	if (r.value)
		return hermes_why(hd, -ENOEXEC, "program returned r0 = %#llx; a run must return 0",
				  r.value);
	return 0;
}

static ssize_t hermes_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	struct hermes_file *hf = iocb->ki_filp->private_data;
	int flags = hermes_call_flags(iocb);
	ssize_t ret;
	size_t n;

	if (flags & (IOCB_HIPRI | IOCB_DSYNC | IOCB_SYNC | IOCB_APPEND | IOCB_NOWAIT))
		return hermes_why(hf->hd, -EOPNOTSUPP, "read flags %#x are not supported", flags);
	if (iocb->ki_pos < 0)
		return hermes_why(hf->hd, -EINVAL, "negative read offset %lld", iocb->ki_pos);
	ret = hermes_enter(hf);
	if (ret)
		return ret;
	if (hf->prog_slot == HERMES_NO_SLOT) {
		ret = hermes_why(hf->hd, -EBADFD, "read before a program was downloaded");
	} else if (hf->data_slot == HERMES_NO_SLOT) {
		ret = hermes_why(hf->hd, -ENODATA, "read before any data was written");
	} else {
		n = hermes_clamp(hf, iocb->ki_pos, iov_iter_count(to));
		ret = hermes_dma_iter(hf->hd, false, hermes_data_off(hf, iocb->ki_pos), to, n);
		if (ret > 0)
			iocb->ki_pos += ret;
	}
	hermes_leave(hf);
	return ret;
}

static ssize_t hermes_write_iter(struct kiocb *iocb, struct iov_iter *from)
{
	struct hermes_file *hf = iocb->ki_filp->private_data;
	int flags = hermes_call_flags(iocb);
	ssize_t ret;
	size_t n;
	int err;

	/* RWF_SYNC sets IOCB_DSYNC too: DSYNC alone is RWF_DSYNC. */
	if ((flags & (IOCB_HIPRI | IOCB_APPEND | IOCB_NOWAIT)) ||
	    ((flags & IOCB_DSYNC) && !(flags & IOCB_SYNC)))
		return hermes_why(hf->hd, -EOPNOTSUPP, "write flags %#x are not supported", flags);
	if (iocb->ki_pos < 0)
		return hermes_why(hf->hd, -EINVAL, "negative write offset %lld", iocb->ki_pos);
	ret = hermes_enter(hf);
	if (ret)
		return ret;
	if (hf->prog_slot == HERMES_NO_SLOT) {
		ret = hermes_why(hf->hd, -EBADFD, "write before a program was downloaded");
		goto out;
	}
	ret = hermes_ensure_slot(hf, HERMES_SLOT_DATA, &hf->data_slot);
	if (ret)
		goto out;
	n = hermes_clamp(hf, iocb->ki_pos, iov_iter_count(from));
	ret = hermes_dma_iter(hf->hd, true, hermes_data_off(hf, iocb->ki_pos), from, n);
	if (ret < 0)
		goto out;
	iocb->ki_pos += ret;
	if (flags & IOCB_SYNC) {
		err = hermes_run(hf, "RWF_SYNC run");
		if (err)
			ret = err;
	}
out:
	hermes_leave(hf);
	return ret;
}

static int hermes_fsync(struct file *file, loff_t start, loff_t end, int datasync)
{
	struct hermes_file *hf = file->private_data;
	int ret = hermes_enter(hf);

	if (ret)
		return ret;
	ret = hermes_run(hf, "fsync");
	hermes_leave(hf);
	return ret;
}

static long hermes_download(struct hermes_file *hf, void __user *uarg)
{
	struct hermes_dev *hd = hf->hd;
	struct hermes_download_prog_ioctl_argp a;
	struct iov_iter iter;
	ssize_t moved;
	long ret;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return hermes_why(hd, -EFAULT, "ioctl argument at %#lx is not readable",
				  (unsigned long)uarg);
	if (a.flags)
		return hermes_why(hd, -EINVAL, "download flags must be 0, got %#x", a.flags);
	if (!a.len)
		return hermes_why(hd, -EINVAL, "program is empty (0 bytes)");
	if (a.len > hd->prog_size)
		return hermes_why(hd, -EINVAL, "program is %u bytes, larger than a program slot (%u bytes)",
				  a.len, hd->prog_size);
	ret = import_ubuf(ITER_SOURCE, u64_to_user_ptr(a.prog), a.len, &iter);
	if (ret)
		return hermes_why(hd, ret, "program buffer %#llx (%u bytes) is not user memory",
				  a.prog, a.len);
	ret = hermes_enter(hf);
	if (ret)
		return ret;
	ret = hermes_ensure_slot(hf, HERMES_SLOT_PROGRAM, &hf->prog_slot);
	if (ret)
		goto out;
	/* A failed copy leaves no runnable program behind. */
	hf->prog_len = 0;
	moved = hermes_dma_iter(hf->hd, true,
				hf->hd->prog_off + (u64)hf->prog_slot * hf->hd->prog_size,
				&iter, a.len);
	if (moved < 0) {
		ret = moved;
		goto out;
	}
	hf->prog_len = a.len;
	ret = 0;
out:
	hermes_leave(hf);
	return ret;
}

static long hermes_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct hermes_file *hf = file->private_data;

	/* Unknown requests are EINVAL, not ENOTTY: the published driver's tests expect it. */
	if (cmd != HERMES_DOWNLOAD_PROG_IOCTL)
		return hermes_why(hf->hd, -EINVAL,
				  "unknown ioctl request %#x (the device knows only HERMES_DOWNLOAD_PROG_IOCTL %#lx)",
				  cmd, (unsigned long)HERMES_DOWNLOAD_PROG_IOCTL);
	return hermes_download(hf, (void __user *)arg);
}

static loff_t hermes_llseek(struct file *file, loff_t offset, int whence)
{
	struct hermes_file *hf = file->private_data;

	/* SEEK_END is the data slot's end; positions past it are allowed and move 0 bytes. */
	return generic_file_llseek_size(file, offset, whence, MAX_LFS_FILESIZE,
					hf->hd->data_size);
}

const struct file_operations hermes_fops = {
	.owner = THIS_MODULE,
	.open = hermes_open,
	.release = hermes_release,
	.read_iter = hermes_read_iter,
	.write_iter = hermes_write_iter,
	.fsync = hermes_fsync,
	.unlocked_ioctl = hermes_ioctl,
	.llseek = hermes_llseek,
};
