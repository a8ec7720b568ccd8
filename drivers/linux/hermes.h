/* SPDX-License-Identifier: GPL-2.0 */
/* Internal state of the Hermes kernel driver, shared by its source files. */
#ifndef HERMES_H
#define HERMES_H

#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/ratelimit.h>
#include <linux/rwsem.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>

#include "hermes_regs.h"

#define HERMES_NAME "hermes"

/* At most this many DMA channels per direction (the XDMA block has four). */
#define HERMES_MAX_CHANNELS 4
/* Engines past this are polled: the XDMA IRQ block has 16 user-interrupt vector fields. */
#define HERMES_MAX_USER_IRQS 16
/*
 * Pages pinned and descriptors built per chain. 256 pages keep a 1 MiB transfer in one chain
 * (the slot size of the default device) while the descriptor ring stays within two pages.
 */
#define HERMES_CHAIN_PAGES 256
#define HERMES_RING_DESCS (HERMES_CHAIN_PAGES + 1)
/* Slot ids travel in one request byte. */
#define HERMES_NO_SLOT (-1)

/* Bounds of every wait, in milliseconds (module parameters). */
extern unsigned int hermes_cmd_timeout_ms;
extern unsigned int hermes_dma_timeout_ms;

/*
 * Why a call failed, in the kernel log at debug level (rate-limited; module parameter explain):
 * an errno alone seldom says which rule a call broke. Evaluates to err.
 */
extern bool hermes_explain;
extern struct ratelimit_state hermes_explain_rs;
#define hermes_why(hd, err, fmt, ...) ({						\
	if (hermes_explain && __ratelimit(&hermes_explain_rs))			\
		dev_printk(KERN_DEBUG, &(hd)->dev, fmt "\n", ##__VA_ARGS__);	\
	(err);									\
})

/* One interrupt source: the handler sets fired and wakes the waiter. */
struct hermes_irq {
	atomic_t fired;
	wait_queue_head_t wq;
	int vector;		/* MSI-X vector index, or -1: polled */
};

struct hermes_engine {
	unsigned int idx;
	struct hermes_irq irq;
	bool busy;		/* handed out (hdev->eng_lock) */
	bool stale;		/* a command timed out; reused once EHCMDEXEC reads 0 */
};

/* One hardware XDMA descriptor, little-endian in coherent memory. */
struct hermes_desc {
	__le32 control;
	__le32 length;
	__le64 src;
	__le64 dst;
	__le64 next;
};

struct hermes_chan {
	struct hermes_dev *hd;
	unsigned int idx;
	bool c2h;
	bool busy;		/* handed out (pool lock) */
	bool broken;		/* stayed busy after a stop: never used again */
	bool sg_set;		/* the SGDMA registers hold this ring's address */
	void __iomem *regs;	/* channel register block */
	void __iomem *sgregs;	/* SGDMA register block */
	struct hermes_irq irq;
	struct hermes_desc *ring;
	dma_addr_t ring_dma;
	struct page **pages;	/* HERMES_CHAIN_PAGES entries */
};

struct hermes_chan_pool {
	spinlock_t lock;
	wait_queue_head_t wq;
	unsigned int count;
	struct hermes_chan chan[HERMES_MAX_CHANNELS];
};

/* A slot whose Release Slot timed out; released later, once its engine is idle. */
struct hermes_deferred {
	struct list_head node;
	u8 type;
	u8 slot;
	int engine;		/* engine still running on the slot, or -1 */
};

struct hermes_dev {
	struct pci_dev *pdev;
	int minor;
	struct device dev;	/* /dev/hermesN; its last reference frees this structure */
	struct cdev cdev;

	/* Taken for reading by every file operation; remove takes it for writing. */
	struct rw_semaphore gone_lock;
	bool gone;

	void __iomem *bar0;
	void __iomem *bar2;

	u32 version;
	char build[HERMES_EHBLD_LEN + 1];
	unsigned int engines;
	unsigned int prog_slots;
	unsigned int data_slots;
	bool can_abort;		/* EHCAP_ABORT: a running command can be stopped */
	u64 prog_off;
	u32 prog_size;
	u64 data_off;
	u32 data_size;
	int nvec;		/* MSI-X vectors allocated (0: every wait polls) */

	spinlock_t eng_lock;
	wait_queue_head_t eng_wq;
	struct hermes_engine *engine;	/* engines entries */

	struct hermes_chan_pool h2c;
	struct hermes_chan_pool c2h;

	struct mutex deferred_lock;
	struct list_head deferred;

	atomic_t cmd_id;	/* ids of the driver's own commands */
};

/* A command response (the 16 bytes of EHCMDRESn, decoded). */
struct hermes_resp {
	u16 cmd_id;
	u8 status;
	u64 value;
};

/* hermes_cmd.c */
int hermes_engines_init(struct hermes_dev *hd);
int hermes_command(struct hermes_dev *hd, u8 opcode, u16 cmd_id, u64 args,
		   struct hermes_resp *resp, int *timed_out_engine);
int hermes_status_errno(u8 status);
const char *hermes_status_name(u8 status);
int hermes_request_slot(struct hermes_dev *hd, u8 type, u16 cmd_id, int *slot);
int hermes_release_slot(struct hermes_dev *hd, u8 type, int slot, u16 cmd_id);
int hermes_reclaim_slots(struct hermes_dev *hd);
void hermes_defer_release(struct hermes_dev *hd, u8 type, int slot, int engine);
void hermes_retry_deferred(struct hermes_dev *hd);
void hermes_free_deferred(struct hermes_dev *hd);

/* hermes_dma.c */
int hermes_chan_count(struct hermes_dev *hd, bool c2h);
int hermes_dma_init(struct hermes_dev *hd);
void hermes_dma_fini(struct hermes_dev *hd);
ssize_t hermes_dma_iter(struct hermes_dev *hd, bool to_dev, u64 bar4_off,
			struct iov_iter *iter, size_t len);

/* hermes_main.c */
int hermes_wait(struct hermes_irq *irq, bool (*done)(void *arg), void *arg,
		unsigned int timeout_ms);
void hermes_dev_put(struct hermes_dev *hd);

/* hermes_file.c */
extern const struct file_operations hermes_fops;

#endif /* HERMES_H */
