// SPDX-License-Identifier: GPL-2.0
/* Hermes commands through BAR0: the engine pool, the EHCMDREQ/EXEC/DONE/RES handshake, slots. */

#include <linux/io-64-nonatomic-lo-hi.h>
#include <linux/jiffies.h>
#include <linux/slab.h>

#include "hermes.h"

/* How often a waiter re-reads the engines whose command timed out. */
#define HERMES_STALE_POLL_MS 5
/* Bound of the wait for an aborted command to complete. */
#define HERMES_ABORT_TIMEOUT_MS 1000

static void __iomem *hermes_ctrl(struct hermes_dev *hd, unsigned int engine)
{
	return hd->bar0 + HERMES_CMDCTRL(engine);
}

int hermes_engines_init(struct hermes_dev *hd)
{
	unsigned int i;

	hd->engine = kcalloc(hd->engines, sizeof(*hd->engine), GFP_KERNEL);
	if (!hd->engine)
		return -ENOMEM;
	for (i = 0; i < hd->engines; i++) {
		struct hermes_engine *e = &hd->engine[i];
		void __iomem *req = hd->bar0 + HERMES_CMDREQ(i);

		e->idx = i;
		e->irq.vector = -1;
		init_waitqueue_head(&e->irq.wq);
		/* Commands write bytes 0..15 only; the reserved rest must read 0. */
		writeq(0, req + 16);
		writeq(0, req + 24);
		/* An engine still running a command of a previous driver is reused once idle. */
		e->stale = ioread8(hermes_ctrl(hd, i) + HERMES_EHCMDEXEC) & 1;
	}
	return 0;
}

/* Hand out engine idx if it is idle and in the state asked for. */
static bool hermes_engine_claim_idx(struct hermes_dev *hd, unsigned int idx, bool stale)
{
	struct hermes_engine *e = &hd->engine[idx];
	bool ok;

	spin_lock(&hd->eng_lock);
	ok = !e->busy && e->stale == stale;
	if (ok)
		e->busy = true;
	spin_unlock(&hd->eng_lock);
	return ok;
}

static struct hermes_engine *hermes_engine_claim(struct hermes_dev *hd)
{
	unsigned int i;

	for (i = 0; i < hd->engines; i++)
		if (hermes_engine_claim_idx(hd, i, false))
			return &hd->engine[i];
	return NULL;
}

static void hermes_engine_put(struct hermes_dev *hd, struct hermes_engine *e)
{
	spin_lock(&hd->eng_lock);
	e->busy = false;
	spin_unlock(&hd->eng_lock);
	wake_up(&hd->eng_wq);
}

/* A stale engine whose EHCMDEXEC reads 0 again, claimed; NULL when none is. */
static struct hermes_engine *hermes_engine_recover(struct hermes_dev *hd, bool *any_stale)
{
	unsigned int i;

	*any_stale = false;
	for (i = 0; i < hd->engines; i++) {
		struct hermes_engine *e = &hd->engine[i];

		if (!hermes_engine_claim_idx(hd, i, true))
			continue;
		if (!(ioread8(hermes_ctrl(hd, i) + HERMES_EHCMDEXEC) & 1)) {
			e->stale = false;
			return e;
		}
		*any_stale = true;
		hermes_engine_put(hd, e);
	}
	return NULL;
}

/*
 * An engine for one command, waiting (bounded by cmd_timeout_ms) while all are busy: a run
 * waits for a free engine instead of failing.
 */
static struct hermes_engine *hermes_engine_get(struct hermes_dev *hd)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(hermes_cmd_timeout_ms);
	struct hermes_engine *e;
	bool any_stale;
	long left, ret;

	for (;;) {
		e = hermes_engine_claim(hd);
		if (e)
			return e;
		e = hermes_engine_recover(hd, &any_stale);
		if (e)
			return e;
		left = (long)(deadline - jiffies);
		if (left <= 0)
			return ERR_PTR(-ETIMEDOUT);
		if (any_stale)
			left = min(left, (long)msecs_to_jiffies(HERMES_STALE_POLL_MS));
		ret = wait_event_interruptible_timeout(hd->eng_wq,
						       (e = hermes_engine_claim(hd)) != NULL, left);
		if (e)
			return e;
		if (ret < 0)
			return ERR_PTR(-ERESTARTSYS);
	}
}

struct hermes_done_arg {
	void __iomem *ctrl;
	u16 ctrl_val;
};

/* EHCMDDONE set and EHCMDEXEC clear: the command's response is in EHCMDRES. */
static bool hermes_ctrl_done(u16 c)
{
	return ((c >> (8 * HERMES_EHCMDDONE)) & 0xff) && !((c >> (8 * HERMES_EHCMDEXEC)) & 1);
}

static bool hermes_engine_done(void *p)
{
	struct hermes_done_arg *a = p;

	a->ctrl_val = ioread16(a->ctrl);
	return hermes_ctrl_done(a->ctrl_val);
}

/*
 * Stop the command running on an engine whose wait timed out (devices with EHCAP_ABORT), and
 * wait for its completion. The engine is idle again when this succeeds.
 */
static bool hermes_engine_abort(struct hermes_dev *hd, struct hermes_engine *e)
{
	struct hermes_done_arg a = { .ctrl = hermes_ctrl(hd, e->idx) };

	if (!hd->can_abort)
		return false;
	iowrite8(1, a.ctrl + HERMES_EHCMDABORT);
	if (hermes_wait(&e->irq, hermes_engine_done, &a, HERMES_ABORT_TIMEOUT_MS))
		return false;
	dev_warn_ratelimited(&hd->dev, "engine %u: timed-out command aborted\n", e->idx);
	return true;
}

/*
 * One command on a free engine. resp gets the response; the return value is the failure of the
 * handshake itself (the caller interprets resp->status): -ETIMEDOUT (the engine is set aside as
 * stale, or aborted where the device can; *timed_out_engine tells which), -EIO for a broken
 * handshake, -EBADE for a response to another command.
 */
int hermes_command(struct hermes_dev *hd, u8 opcode, u16 cmd_id, u64 args,
		   struct hermes_resp *resp, int *timed_out_engine)
{
	struct hermes_engine *e;
	struct hermes_done_arg a;
	void __iomem *req, *res;
	u64 w0, w1;
	int ret = 0;

	if (timed_out_engine)
		*timed_out_engine = -1;
	e = hermes_engine_get(hd);
	if (IS_ERR(e))
		return PTR_ERR(e);
	req = hd->bar0 + HERMES_CMDREQ(e->idx);
	res = hd->bar0 + HERMES_CMDRES(e->idx);
	a.ctrl = hermes_ctrl(hd, e->idx);

	writeq(opcode | (u64)cmd_id << 16, req);
	writeq(args, req + 8);
	/* From here on, an interrupt of this engine can only be this command's. */
	atomic_set(&e->irq.fired, 0);
	iowrite8(1, a.ctrl + HERMES_EHCMDEXEC);
	a.ctrl_val = ioread16(a.ctrl);
	if (((a.ctrl_val >> (8 * HERMES_EHCMDEXEC)) & 1) &&
	    ((a.ctrl_val >> (8 * HERMES_EHCMDDONE)) & 0xff)) {
		/* DONE left over from the previous command: a waiter could take its response. */
		dev_err_ratelimited(&hd->dev, "engine %u: EHCMDDONE still set after EHCMDEXEC\n",
				    e->idx);
		e->stale = true;
		ret = -EIO;
		goto put;
	}
	if (!hermes_ctrl_done(a.ctrl_val))
		ret = hermes_wait(&e->irq, hermes_engine_done, &a, hermes_cmd_timeout_ms);
	if (ret) {
		dev_warn_ratelimited(&hd->dev, "engine %u: command %#04x (id %u) did not complete within %u ms\n",
				     e->idx, opcode, cmd_id, hermes_cmd_timeout_ms);
		if (!hermes_engine_abort(hd, e)) {
			e->stale = true;
			if (timed_out_engine)
				*timed_out_engine = e->idx;
		}
		goto put;
	}
	w0 = readq(res);
	w1 = readq(res + 8);
	resp->cmd_id = w0 & 0xffff;
	resp->status = (w0 >> 16) & 0xff;
	resp->value = w1;
	if (resp->cmd_id != cmd_id) {
		dev_err_ratelimited(&hd->dev, "engine %u: response id %u for command id %u\n",
				    e->idx, resp->cmd_id, cmd_id);
		ret = -EBADE;
	}
put:
	hermes_engine_put(hd, e);
	return ret;
}

/* The errno of a device status, as the driver interface's table gives it. */
int hermes_status_errno(u8 status)
{
	switch (status) {
	case HERMES_STATUS_SUCCESS:
		return 0;
	case HERMES_STATUS_NO_SPACE:
		return -ENOSPC;
	case HERMES_STATUS_INVALID_PROG_SLOT:
	case HERMES_STATUS_INVALID_DATA_SLOT:
		return -EBADFD;
	case HERMES_STATUS_EBPF_ERROR:
		return -ENOEXEC;
	case HERMES_STATUS_INVALID_OPCODE:
		return -EINVAL;
	case HERMES_STATUS_ABORTED:
		return -ECANCELED;
	default:
		return -EIO;
	}
}

static u16 hermes_driver_cmd_id(struct hermes_dev *hd)
{
	return (u16)atomic_inc_return(&hd->cmd_id);
}

static const char *const hermes_status_text[] = HERMES_STATUS_TEXTS;

/* The name of a device status, for messages. */
const char *hermes_status_name(u8 status)
{
	if (status < ARRAY_SIZE(hermes_status_text) && hermes_status_text[status])
		return hermes_status_text[status];
	return "unknown status";
}

int hermes_request_slot(struct hermes_dev *hd, u8 type, u16 cmd_id, int *slot)
{
	unsigned int count = type == HERMES_SLOT_PROGRAM ? hd->prog_slots : hd->data_slots;
	const char *what = type == HERMES_SLOT_PROGRAM ? "program" : "data";
	struct hermes_resp r;
	int ret;

	hermes_retry_deferred(hd);
	ret = hermes_command(hd, HERMES_CMD_REQUEST_SLOT, cmd_id, type, &r, NULL);
	if (ret)
		return ret;
	if (r.status == HERMES_STATUS_NO_SPACE)
		return hermes_why(hd, -ENOSPC, "no free %s slot (all %u in use)", what, count);
	ret = hermes_status_errno(r.status);
	if (ret)
		return hermes_why(hd, ret, "Request Slot (%s): device status %#x (%s)", what,
				  r.status, hermes_status_name(r.status));
	if (r.value >= count) {
		dev_err_ratelimited(&hd->dev, "Request Slot gave slot %llu of %u\n", r.value, count);
		return -EIO;
	}
	*slot = r.value;
	return 0;
}

int hermes_release_slot(struct hermes_dev *hd, u8 type, int slot, u16 cmd_id)
{
	struct hermes_resp r;
	int ret;

	ret = hermes_command(hd, HERMES_CMD_RELEASE_SLOT, cmd_id, type | (u64)slot << 8, &r, NULL);
	return ret ? ret : hermes_status_errno(r.status);
}

/*
 * Free every slot of the device at probe. While the driver is bound, every allocated slot is
 * one of its files'; any allocated now was left by an earlier driver (one that was unloaded with
 * slots deferred, crashed, or allocated on the host side) and would stay lost until a reset.
 * Returns how many were allocated.
 */
int hermes_reclaim_slots(struct hermes_dev *hd)
{
	unsigned int type, slot, count, reclaimed = 0;
	struct hermes_resp r;

	for (type = HERMES_SLOT_PROGRAM; type <= HERMES_SLOT_DATA; type++) {
		count = type == HERMES_SLOT_PROGRAM ? hd->prog_slots : hd->data_slots;
		for (slot = 0; slot < count; slot++) {
			int ret = hermes_command(hd, HERMES_CMD_RELEASE_SLOT, hermes_driver_cmd_id(hd),
						 type | (u64)slot << 8, &r, NULL);

			if (ret)
				return ret;
			reclaimed += r.status == HERMES_STATUS_SUCCESS;
		}
	}
	return reclaimed;
}

/*
 * A slot that cannot be released now (its Release Slot timed out, or a timed-out run may still
 * use it) is kept on a list and released before the next Request Slot and at remove, so a
 * wedged engine does not leak slots for good.
 */
void hermes_defer_release(struct hermes_dev *hd, u8 type, int slot, int engine)
{
	struct hermes_deferred *d = kmalloc(sizeof(*d), GFP_KERNEL);

	if (!d) {
		dev_err(&hd->dev, "slot %d (type %u) leaked: no memory to defer its release\n",
			slot, type);
		return;
	}
	d->type = type;
	d->slot = slot;
	d->engine = engine;
	mutex_lock(&hd->deferred_lock);
	list_add_tail(&d->node, &hd->deferred);
	mutex_unlock(&hd->deferred_lock);
}

void hermes_retry_deferred(struct hermes_dev *hd)
{
	struct hermes_deferred *d, *tmp;

	mutex_lock(&hd->deferred_lock);
	list_for_each_entry_safe(d, tmp, &hd->deferred, node) {
		if (d->engine >= 0 &&
		    (ioread8(hermes_ctrl(hd, d->engine) + HERMES_EHCMDEXEC) & 1))
			continue;
		if (hermes_release_slot(hd, d->type, d->slot, hermes_driver_cmd_id(hd)) ==
		    -ETIMEDOUT)
			continue;
		list_del(&d->node);
		kfree(d);
	}
	mutex_unlock(&hd->deferred_lock);
}

void hermes_free_deferred(struct hermes_dev *hd)
{
	struct hermes_deferred *d, *tmp;

	mutex_lock(&hd->deferred_lock);
	list_for_each_entry_safe(d, tmp, &hd->deferred, node) {
		dev_warn(&hd->dev, "slot %u (type %u) still held by a wedged engine at removal\n",
			 d->slot, d->type);
		list_del(&d->node);
		kfree(d);
	}
	mutex_unlock(&hd->deferred_lock);
}
