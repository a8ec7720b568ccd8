// SPDX-License-Identifier: GPL-2.0
/* Hermes DMA: user pages pinned and mapped as scatter-gather lists, XDMA descriptor chains. */

#include <linux/dma-mapping.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/uio.h>

#include "hermes.h"

/* Status bits a chain that ended well may leave (besides busy, bit 0). */
#define HERMES_STAT_OK (HERMES_XDMA_STAT_DESC_STOPPED | HERMES_XDMA_STAT_DESC_COMPLETED)
/* Every event and error bit of a channel's status, also its interrupt enables. */
#define HERMES_STAT_EVENTS 0x00FFFFFEu

static unsigned int hermes_target(bool c2h, bool sgdma)
{
	if (sgdma)
		return c2h ? HERMES_XDMA_TARGET_C2H_SGDMA : HERMES_XDMA_TARGET_H2C_SGDMA;
	return c2h ? HERMES_XDMA_TARGET_C2H : HERMES_XDMA_TARGET_H2C;
}

/* Channels of one direction: channel n exists while its identifier carries the XDMA magic. */
int hermes_chan_count(struct hermes_dev *hd, bool c2h)
{
	unsigned int target = hermes_target(c2h, false);
	int n;

	for (n = 0; n < HERMES_MAX_CHANNELS; n++) {
		u32 id = ioread32(hd->bar2 + HERMES_XDMA_OFFSET(target, n, HERMES_XDMA_CH_IDENTIFIER));

		if (id >> 20 != HERMES_XDMA_ID_MAGIC || ((id >> 16) & 0xf) != target)
			break;
	}
	return n;
}

static int hermes_pool_init(struct hermes_dev *hd, struct hermes_chan_pool *pool, bool c2h)
{
	struct device *dev = &hd->pdev->dev;
	unsigned int i;

	spin_lock_init(&pool->lock);
	init_waitqueue_head(&pool->wq);
	for (i = 0; i < pool->count; i++) {
		struct hermes_chan *ch = &pool->chan[i];

		ch->hd = hd;
		ch->idx = i;
		ch->c2h = c2h;
		ch->irq.vector = -1;
		init_waitqueue_head(&ch->irq.wq);
		ch->regs = hd->bar2 + HERMES_XDMA_OFFSET(hermes_target(c2h, false), i, 0);
		ch->sgregs = hd->bar2 + HERMES_XDMA_OFFSET(hermes_target(c2h, true), i, 0);
		ch->ring = dma_alloc_coherent(dev, HERMES_RING_DESCS * sizeof(*ch->ring),
					      &ch->ring_dma, GFP_KERNEL);
		ch->pages = kcalloc(HERMES_CHAIN_PAGES, sizeof(*ch->pages), GFP_KERNEL);
		if (!ch->ring || !ch->pages)
			return -ENOMEM;
		/* Leave the channel stopped with a clean status, as a chain expects it. */
		iowrite32(HERMES_XDMA_CTRL_RUN, ch->regs + HERMES_XDMA_CH_CONTROL_W1C);
		ioread32(ch->regs + HERMES_XDMA_CH_STATUS_RC);
	}
	return 0;
}

int hermes_dma_init(struct hermes_dev *hd)
{
	int ret = hermes_pool_init(hd, &hd->h2c, false);

	return ret ? ret : hermes_pool_init(hd, &hd->c2h, true);
}

static void hermes_pool_fini(struct hermes_dev *hd, struct hermes_chan_pool *pool)
{
	unsigned int i;

	for (i = 0; i < pool->count; i++) {
		struct hermes_chan *ch = &pool->chan[i];

		if (ch->regs && hd->bar2)
			iowrite32(HERMES_XDMA_CTRL_RUN, ch->regs + HERMES_XDMA_CH_CONTROL_W1C);
		if (ch->ring)
			dma_free_coherent(&hd->pdev->dev, HERMES_RING_DESCS * sizeof(*ch->ring),
					  ch->ring, ch->ring_dma);
		kfree(ch->pages);
		ch->ring = NULL;
		ch->pages = NULL;
	}
}

void hermes_dma_fini(struct hermes_dev *hd)
{
	hermes_pool_fini(hd, &hd->h2c);
	hermes_pool_fini(hd, &hd->c2h);
}

static struct hermes_chan *hermes_chan_claim(struct hermes_chan_pool *pool, bool *all_broken)
{
	struct hermes_chan *found = NULL;
	unsigned int i, broken = 0;

	spin_lock(&pool->lock);
	for (i = 0; i < pool->count && !found; i++) {
		struct hermes_chan *ch = &pool->chan[i];

		if (ch->broken)
			broken++;
		else if (!ch->busy)
			found = ch;
	}
	if (found)
		found->busy = true;
	spin_unlock(&pool->lock);
	*all_broken = !found && broken == pool->count;
	return found;
}

static struct hermes_chan *hermes_chan_get(struct hermes_chan_pool *pool)
{
	struct hermes_chan *ch = NULL;
	bool all_broken = false;
	long ret;

	ret = wait_event_interruptible_timeout(pool->wq,
					       (ch = hermes_chan_claim(pool, &all_broken)) ||
					       all_broken,
					       msecs_to_jiffies(hermes_dma_timeout_ms));
	if (ch)
		return ch;
	if (all_broken)
		return ERR_PTR(-EIO);
	return ERR_PTR(ret < 0 ? -ERESTARTSYS : -ETIMEDOUT);
}

static void hermes_chan_put(struct hermes_chan_pool *pool, struct hermes_chan *ch)
{
	spin_lock(&pool->lock);
	ch->busy = false;
	spin_unlock(&pool->lock);
	wake_up(&pool->wq);
}

struct hermes_chan_wait {
	struct hermes_chan *ch;
	u32 status;		/* accumulated: the clear-on-read register forgets what it shows */
};

static bool hermes_chan_idle(void *p)
{
	struct hermes_chan_wait *w = p;
	u32 s = ioread32(w->ch->regs + HERMES_XDMA_CH_STATUS_RC);

	w->status |= s & HERMES_STAT_EVENTS;
	return !(s & HERMES_XDMA_STAT_BUSY);
}

/* Run the ndesc descriptors at the start of the ring and check how the chain ended. */
static int hermes_chain_run(struct hermes_chan *ch, unsigned int ndesc)
{
	struct hermes_dev *hd = ch->hd;
	struct hermes_chan_wait w = { .ch = ch };
	u32 done;
	int ret;

	if (!ch->sg_set) {
		iowrite32(lower_32_bits(ch->ring_dma), ch->sgregs + HERMES_XDMA_SG_DESC_LO);
		iowrite32(upper_32_bits(ch->ring_dma), ch->sgregs + HERMES_XDMA_SG_DESC_HI);
		/* Adjacent count 0: the chain is walked by next pointers, whatever the prefetch. */
		iowrite32(0, ch->sgregs + HERMES_XDMA_SG_DESC_ADJ);
		ch->sg_set = true;
	}
	atomic_set(&ch->irq.fired, 0);
	/* writel orders the descriptor stores in coherent memory before the start. */
	iowrite32(HERMES_XDMA_CTRL_RUN | HERMES_STAT_EVENTS, ch->regs + HERMES_XDMA_CH_CONTROL);
	ret = hermes_wait(&ch->irq, hermes_chan_idle, &w, hermes_dma_timeout_ms);
	iowrite32(HERMES_XDMA_CTRL_RUN, ch->regs + HERMES_XDMA_CH_CONTROL_W1C);
	if (ret) {
		if (!hermes_chan_idle(&w)) {
			ch->broken = true;
			dev_err(&hd->dev, "%s channel %u still busy after a stop: retired\n",
				ch->c2h ? "C2H" : "H2C", ch->idx);
		}
		dev_err_ratelimited(&hd->dev, "%s channel %u: chain of %u descriptors timed out\n",
				    ch->c2h ? "C2H" : "H2C", ch->idx, ndesc);
		return -ETIMEDOUT;
	}
	if (w.status & ~HERMES_STAT_OK) {
		dev_err_ratelimited(&hd->dev, "%s channel %u: error status %#x%s%s%s%s%s\n",
				    ch->c2h ? "C2H" : "H2C", ch->idx, w.status,
				    w.status & HERMES_XDMA_STAT_MAGIC_STOPPED ? " bad-magic" : "",
				    w.status & HERMES_XDMA_STAT_INVALID_LEN ? " invalid-length" : "",
				    w.status & HERMES_XDMA_STAT_READ_ERROR ? " read-error" : "",
				    w.status & HERMES_XDMA_STAT_WRITE_ERROR ? " write-error" : "",
				    w.status & HERMES_XDMA_STAT_DESC_ERROR ? " descriptor-error" : "");
		return -EIO;
	}
	done = ioread32(ch->regs + HERMES_XDMA_CH_COMPLETED);
	if (done != ndesc) {
		dev_err_ratelimited(&hd->dev, "%s channel %u: %u of %u descriptors completed\n",
				    ch->c2h ? "C2H" : "H2C", ch->idx, done, ndesc);
		return -EIO;
	}
	return 0;
}

/* One descriptor per DMA segment, linked by next pointers; the last one stops the chain. */
static unsigned int hermes_chain_build(struct hermes_chan *ch, struct sg_table *sgt,
				       u64 bar4_off)
{
	struct scatterlist *sg;
	unsigned int i, n = 0;

	for_each_sgtable_dma_sg(sgt, sg, i) {
		struct hermes_desc *d = &ch->ring[n];
		u64 host = sg_dma_address(sg);
		u32 len = sg_dma_len(sg);

		d->control = cpu_to_le32(HERMES_DESC_CONTROL(0, 0));
		d->length = cpu_to_le32(len);
		d->src = cpu_to_le64(ch->c2h ? bar4_off : host);
		d->dst = cpu_to_le64(ch->c2h ? host : bar4_off);
		d->next = cpu_to_le64(ch->ring_dma + (n + 1) * sizeof(*d));
		bar4_off += len;
		n++;
	}
	ch->ring[n - 1].control = cpu_to_le32(HERMES_DESC_CONTROL(0, HERMES_DESC_STOP |
								  HERMES_DESC_EOP |
								  HERMES_DESC_COMPLETED));
	ch->ring[n - 1].next = 0;
	return n;
}

/*
 * Move len bytes between the pages of iter and BAR4 at bar4_off, in chains of at most
 * HERMES_CHAIN_PAGES pages. User memory is pinned for the transfer (the device writes it for
 * C2H), mapped for DMA, and unpinned afterwards. Returns len, or a negative errno: -EFAULT for
 * memory that cannot be pinned, -EIO / -ETIMEDOUT for a failed chain.
 */
ssize_t hermes_dma_iter(struct hermes_dev *hd, bool to_dev, u64 bar4_off,
			struct iov_iter *iter, size_t len)
{
	struct hermes_chan_pool *pool = to_dev ? &hd->h2c : &hd->c2h;
	enum dma_data_direction dir = to_dev ? DMA_TO_DEVICE : DMA_FROM_DEVICE;
	struct device *dev = &hd->pdev->dev;
	bool pinned = iov_iter_extract_will_pin(iter);
	struct hermes_chan *ch;
	size_t moved = 0;
	int ret = 0;

	if (!len)
		return 0;
	ch = hermes_chan_get(pool);
	if (IS_ERR(ch))
		return PTR_ERR(ch);
	while (moved < len) {
		struct page **pages = ch->pages;
		struct sg_table sgt;
		unsigned int npages, ndesc;
		size_t first;
		ssize_t got;

		got = iov_iter_extract_pages(iter, &pages, len - moved, HERMES_CHAIN_PAGES, 0,
					     &first);
		if (got <= 0) {
			ret = hermes_why(hd, got ? (int)got : -EFAULT,
					 "cannot pin the caller's buffer for DMA (%zd)", got);
			break;
		}
		npages = DIV_ROUND_UP(first + got, PAGE_SIZE);
		ret = sg_alloc_table_from_pages(&sgt, pages, npages, first, got, GFP_KERNEL);
		if (!ret) {
			ret = dma_map_sgtable(dev, &sgt, dir, 0);
			if (!ret) {
				ndesc = hermes_chain_build(ch, &sgt, bar4_off + moved);
				ret = hermes_chain_run(ch, ndesc);
				dma_unmap_sgtable(dev, &sgt, dir, 0);
			}
			sg_free_table(&sgt);
		}
		if (pinned) {
			if (to_dev)
				unpin_user_pages(pages, npages);
			else
				unpin_user_pages_dirty_lock(pages, npages, true);
		}
		if (ret)
			break;
		moved += got;
	}
	hermes_chan_put(pool, ch);
	return ret ? ret : (ssize_t)moved;
}
