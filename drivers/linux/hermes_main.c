// SPDX-License-Identifier: GPL-2.0
/* Hermes PCI driver: probe (geometry, channels, MSI-X), /dev/hermesN class devices, module init. */

#include <linux/delay.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io-64-nonatomic-lo-hi.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/slab.h>

#include "hermes.h"

#define HERMES_MAX_DEVICES 64
/* Every event and error bit of a channel's status (bit 0 is busy). */
#define HERMES_CHAN_EVENTS 0x00FFFFFEu
/* Polling backoff bounds of hermes_wait, in microseconds. */
#define HERMES_POLL_MIN_US 20
#define HERMES_POLL_MAX_US 10000

unsigned int hermes_cmd_timeout_ms = 60000;
module_param_named(cmd_timeout_ms, hermes_cmd_timeout_ms, uint, 0644);
MODULE_PARM_DESC(cmd_timeout_ms, "bound of a command (a program run included) and of the wait for a free engine, ms");

unsigned int hermes_dma_timeout_ms = 10000;
module_param_named(dma_timeout_ms, hermes_dma_timeout_ms, uint, 0644);
MODULE_PARM_DESC(dma_timeout_ms, "bound of one DMA chain and of the wait for a free channel, ms");

static bool hermes_use_msix = true;
module_param_named(msix, hermes_use_msix, bool, 0444);
MODULE_PARM_DESC(msix, "use MSI-X vectors (N: every wait polls the registers)");

bool hermes_explain = true;
module_param_named(explain, hermes_explain, bool, 0644);
MODULE_PARM_DESC(explain, "log why a call failed (debug level, rate-limited)");
DEFINE_RATELIMIT_STATE(hermes_explain_rs, 5 * HZ, 500);

static dev_t hermes_devt;
static DEFINE_IDA(hermes_ida);

/* Read-only attributes of /sys/class/hermes/hermesN: the geometry, for udev rules and tools. */
#define HERMES_ATTR(name, fmt, expr)						\
static ssize_t name##_show(struct device *dev, struct device_attribute *attr, char *buf) \
{										\
	struct hermes_dev *hd = container_of(dev, struct hermes_dev, dev);	\
										\
	return sysfs_emit(buf, fmt "\n", expr);				\
}										\
static DEVICE_ATTR_RO(name)

HERMES_ATTR(version, "%u", hd->version);
HERMES_ATTR(build, "%s", hd->build);
HERMES_ATTR(engines, "%u", hd->engines);
HERMES_ATTR(program_slots, "%u", hd->prog_slots);
HERMES_ATTR(data_slots, "%u", hd->data_slots);
HERMES_ATTR(program_slot_size, "%u", hd->prog_size);
HERMES_ATTR(data_slot_size, "%u", hd->data_size);
HERMES_ATTR(h2c_channels, "%u", hd->h2c.count);
HERMES_ATTR(c2h_channels, "%u", hd->c2h.count);
HERMES_ATTR(vectors, "%d", hd->nvec);
HERMES_ATTR(abort, "%d", hd->can_abort);

static struct attribute *hermes_attrs[] = {
	&dev_attr_version.attr,
	&dev_attr_build.attr,
	&dev_attr_engines.attr,
	&dev_attr_program_slots.attr,
	&dev_attr_data_slots.attr,
	&dev_attr_program_slot_size.attr,
	&dev_attr_data_slot_size.attr,
	&dev_attr_h2c_channels.attr,
	&dev_attr_c2h_channels.attr,
	&dev_attr_vectors.attr,
	&dev_attr_abort.attr,
	NULL
};
ATTRIBUTE_GROUPS(hermes);

static const struct class hermes_class = {
	.name = HERMES_NAME,
	.dev_groups = hermes_groups,
};

/*
 * Wait until done(arg) holds, for at most timeout_ms. With a vector the interrupt wakes the
 * waiter and done() is checked on each wake-up, and also after slices that double from one
 * jiffy, so a lost or never-raised interrupt only makes the wait slower, never endless. Without
 * a vector, done() is polled with a backoff from HERMES_POLL_MIN_US.
 */
int hermes_wait(struct hermes_irq *irq, bool (*done)(void *arg), void *arg,
		unsigned int timeout_ms)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(timeout_ms);
	unsigned long slice = 1;
	unsigned int poll_us = HERMES_POLL_MIN_US;

	for (;;) {
		if (irq->vector >= 0) {
			wait_event_timeout(irq->wq, atomic_xchg(&irq->fired, 0), slice);
			slice = min(slice * 2, (unsigned long)HZ / 10 + 1);
		} else {
			usleep_range(poll_us, poll_us * 2);
			poll_us = min(poll_us * 2, HERMES_POLL_MAX_US);
		}
		if (done(arg))
			return 0;
		if (time_after(jiffies, deadline))
			return -ETIMEDOUT;
	}
}

static irqreturn_t hermes_isr(int irq, void *data)
{
	struct hermes_irq *hi = data;

	atomic_set(&hi->fired, 1);
	wake_up(&hi->wq);
	return IRQ_HANDLED;
}

static int hermes_read_geometry(struct hermes_dev *hd)
{
	struct device *dev = &hd->pdev->dev;
	void __iomem *b = hd->bar0;
	u64 prog_end, data_end;
	unsigned int i;

	hd->version = ioread32(b + HERMES_EHVER);
	if (hd->version != 1 && hd->version != 2) {
		dev_err(dev, "interface version %#x is not 1 or 2%s\n", hd->version,
			hd->version == 0 || hd->version == 0xffffffff ? " (no device answering?)" : "");
		return -ENODEV;
	}
	for (i = 0; i < HERMES_EHBLD_LEN; i++)
		hd->build[i] = ioread8(b + HERMES_EHBLD + i);
	hd->build[HERMES_EHBLD_LEN] = 0;
	hd->engines = ioread8(b + HERMES_EHENG);
	hd->prog_slots = ioread8(b + HERMES_EHPSLOT);
	hd->data_slots = ioread8(b + HERMES_EHDSLOT);
	hd->can_abort = ioread8(b + HERMES_EHCAP) & HERMES_EHCAP_ABORT;
	if (hd->version == 1) {
		hd->prog_off = ioread32(b + HERMES_EHPSOFF);
		hd->prog_size = ioread32(b + HERMES_EHPSSZE);
		hd->data_off = ioread32(b + HERMES_EHDSOFF);
		hd->data_size = ioread32(b + HERMES_EHDSSZE);
	} else {
		/* EHDSOFF_V2 is only 4-byte aligned: read every 64-bit field as two halves. */
		hd->prog_off = lo_hi_readq(b + HERMES_EHPSOFF_V2);
		hd->prog_size = ioread32(b + HERMES_EHPSSZE_V2);
		hd->data_off = lo_hi_readq(b + HERMES_EHDSOFF_V2);
		hd->data_size = ioread32(b + HERMES_EHDSSZE_V2);
	}
	prog_end = hd->prog_off + (u64)hd->prog_slots * hd->prog_size;
	data_end = hd->data_off + (u64)hd->data_slots * hd->data_size;
	if (!hd->engines || !hd->prog_slots || !hd->data_slots || !hd->prog_size ||
	    !hd->data_size || (hd->prog_off < data_end && hd->data_off < prog_end)) {
		dev_err(dev, "unusable geometry: %u engines, %u x %u B program slots at %#llx, %u x %u B data slots at %#llx\n",
			hd->engines, hd->prog_slots, hd->prog_size, hd->prog_off,
			hd->data_slots, hd->data_size, hd->data_off);
		return -ENODEV;
	}
	if (max(prog_end, data_end) > pci_resource_len(hd->pdev, HERMES_BAR_MEM)) {
		dev_err(dev, "slots end at %#llx, past BAR4 (%#llx bytes)\n",
			max(prog_end, data_end),
			(u64)pci_resource_len(hd->pdev, HERMES_BAR_MEM));
		return -ENODEV;
	}
	return 0;
}

/* Four 5-bit vector numbers a register, as in the XDMA IRQ block. */
static void hermes_write_vectors(struct hermes_dev *hd, unsigned int reg, const int *vec,
				 unsigned int n)
{
	unsigned int r, k;

	for (r = 0; r * 4 < n; r++) {
		u32 v = 0;

		for (k = 0; k < 4 && r * 4 + k < n; k++)
			if (vec[r * 4 + k] >= 0)
				v |= (u32)(vec[r * 4 + k] & 0x1f) << (8 * k);
		iowrite32(v, hd->bar2 + HERMES_XDMA_OFFSET(HERMES_XDMA_TARGET_IRQ, 0, reg + 4 * r));
	}
}

static void __iomem *hermes_irq_reg(struct hermes_dev *hd, unsigned int reg)
{
	return hd->bar2 + HERMES_XDMA_OFFSET(HERMES_XDMA_TARGET_IRQ, 0, reg);
}

static int hermes_request_vector(struct hermes_dev *hd, struct hermes_irq *hi, int vector)
{
	int ret;

	hi->vector = -1;
	if (vector >= hd->nvec)
		return 0;
	ret = request_irq(pci_irq_vector(hd->pdev, vector), hermes_isr, 0,
			  dev_name(&hd->dev), hi);
	if (ret)
		return ret;
	hi->vector = vector;
	return 0;
}

static void hermes_free_vector(struct hermes_dev *hd, struct hermes_irq *hi)
{
	if (hi->vector >= 0)
		free_irq(pci_irq_vector(hd->pdev, hi->vector), hi);
	hi->vector = -1;
}

static void hermes_irq_teardown(struct hermes_dev *hd)
{
	unsigned int i;

	if (hd->bar2) {
		iowrite32(~0u, hermes_irq_reg(hd, HERMES_XDMA_IRQ_USER_MASK_W1C));
		iowrite32(~0u, hermes_irq_reg(hd, HERMES_XDMA_IRQ_CHANNEL_MASK_W1C));
	}
	for (i = 0; i < hd->engines; i++)
		hermes_free_vector(hd, &hd->engine[i].irq);
	for (i = 0; i < hd->h2c.count; i++)
		hermes_free_vector(hd, &hd->h2c.chan[i].irq);
	for (i = 0; i < hd->c2h.count; i++)
		hermes_free_vector(hd, &hd->c2h.chan[i].irq);
	if (hd->nvec > 0)
		pci_free_irq_vectors(hd->pdev);
	hd->nvec = 0;
}

/*
 * Vectors: H2C channel c -> c, C2H channel c -> h2c + c, engine n -> h2c + c2h + n. Then the
 * masks: a device faithful to XDMA powers on with every mask at 0 and could never interrupt a
 * driver that leaves them so.
 */
static int hermes_irq_setup(struct hermes_dev *hd)
{
	unsigned int h2c = hd->h2c.count, c2h = hd->c2h.count, i;
	unsigned int user = min(hd->engines, (unsigned int)HERMES_MAX_USER_IRQS);
	int chan_vec[2 * HERMES_MAX_CHANNELS], user_vec[HERMES_MAX_USER_IRQS];
	u32 user_bits = 0;
	int ret;

	user = min(user, HERMES_MSIX_VECTORS - h2c - c2h);
	ret = hermes_use_msix ? pci_alloc_irq_vectors(hd->pdev, 1, h2c + c2h + user, PCI_IRQ_MSIX)
			      : -EPERM;
	if (!hermes_use_msix) {
		dev_info(&hd->pdev->dev, "MSI-X off (msix=0): every wait polls\n");
		hd->nvec = 0;
	} else if (ret < 0) {
		dev_warn(&hd->pdev->dev, "no MSI-X vectors (%d): every wait polls\n", ret);
		hd->nvec = 0;
	} else {
		hd->nvec = ret;
	}
	for (i = 0; i < h2c; i++) {
		ret = hermes_request_vector(hd, &hd->h2c.chan[i].irq, i);
		if (ret)
			goto fail;
		chan_vec[i] = hd->h2c.chan[i].irq.vector;
	}
	for (i = 0; i < c2h; i++) {
		ret = hermes_request_vector(hd, &hd->c2h.chan[i].irq, h2c + i);
		if (ret)
			goto fail;
		chan_vec[h2c + i] = hd->c2h.chan[i].irq.vector;
	}
	for (i = 0; i < hd->engines; i++) {
		hd->engine[i].irq.vector = -1;
		if (i >= user)
			continue;
		ret = hermes_request_vector(hd, &hd->engine[i].irq, h2c + c2h + i);
		if (ret)
			goto fail;
		user_vec[i] = hd->engine[i].irq.vector;
		if (user_vec[i] >= 0)
			user_bits |= 1u << i;
	}
	hermes_write_vectors(hd, HERMES_XDMA_IRQ_CHANNEL_VECTOR, chan_vec, h2c + c2h);
	hermes_write_vectors(hd, HERMES_XDMA_IRQ_USER_VECTOR, user_vec, user);
	for (i = 0; i < h2c; i++)
		iowrite32(HERMES_CHAN_EVENTS, hd->h2c.chan[i].regs + HERMES_XDMA_CH_IRQ_MASK);
	for (i = 0; i < c2h; i++)
		iowrite32(HERMES_CHAN_EVENTS, hd->c2h.chan[i].regs + HERMES_XDMA_CH_IRQ_MASK);
	iowrite32((1u << (h2c + c2h)) - 1, hermes_irq_reg(hd, HERMES_XDMA_IRQ_CHANNEL_MASK_W1S));
	iowrite32(user_bits, hermes_irq_reg(hd, HERMES_XDMA_IRQ_USER_MASK_W1S));
	return 0;
fail:
	dev_err(&hd->pdev->dev, "cannot request an interrupt: %d\n", ret);
	hermes_irq_teardown(hd);
	return ret;
}

static void hermes_dev_release(struct device *dev)
{
	struct hermes_dev *hd = container_of(dev, struct hermes_dev, dev);

	kfree(hd->engine);
	kfree(hd);
}

void hermes_dev_put(struct hermes_dev *hd)
{
	put_device(&hd->dev);
}

static void hermes_unmap(struct hermes_dev *hd)
{
	struct pci_dev *pdev = hd->pdev;

	if (hd->bar2)
		pci_iounmap(pdev, hd->bar2);
	if (hd->bar0)
		pci_iounmap(pdev, hd->bar0);
	hd->bar0 = hd->bar2 = NULL;
	pci_release_regions(pdev);
	pci_disable_device(pdev);
}

static int hermes_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct hermes_dev *hd;
	int ret;

	hd = kzalloc(sizeof(*hd), GFP_KERNEL);
	if (!hd)
		return -ENOMEM;
	hd->pdev = pdev;
	init_rwsem(&hd->gone_lock);
	spin_lock_init(&hd->eng_lock);
	init_waitqueue_head(&hd->eng_wq);
	mutex_init(&hd->deferred_lock);
	INIT_LIST_HEAD(&hd->deferred);
	device_initialize(&hd->dev);
	hd->dev.class = &hermes_class;
	hd->dev.parent = &pdev->dev;
	hd->dev.release = hermes_dev_release;
	hd->minor = -1;

	ret = pci_enable_device(pdev);
	if (ret)
		goto put;
	ret = pci_request_regions(pdev, HERMES_NAME);
	if (ret) {
		pci_disable_device(pdev);
		goto put;
	}
	hd->bar0 = pci_iomap(pdev, HERMES_BAR_REGS, 0);
	hd->bar2 = pci_iomap(pdev, HERMES_BAR_DMA, 0);
	if (!hd->bar0 || !hd->bar2 || !pci_resource_len(pdev, HERMES_BAR_MEM)) {
		dev_err(&pdev->dev, "BAR0, BAR2 or BAR4 missing\n");
		ret = -ENODEV;
		goto unmap;
	}
	pci_set_master(pdev);
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret)
		ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(32));
	if (ret) {
		dev_err(&pdev->dev, "no usable DMA mask\n");
		goto unmap;
	}
	ret = hermes_read_geometry(hd);
	if (ret)
		goto unmap;
	hd->h2c.count = hermes_chan_count(hd, false);
	hd->c2h.count = hermes_chan_count(hd, true);
	if (!hd->h2c.count || !hd->c2h.count) {
		dev_err(&pdev->dev, "%u H2C and %u C2H DMA channels: need one of each\n",
			hd->h2c.count, hd->c2h.count);
		ret = -ENODEV;
		goto unmap;
	}
	ret = hermes_engines_init(hd);
	if (ret)
		goto unmap;
	ret = hermes_dma_init(hd);
	if (ret)
		goto unmap;

	ret = ida_alloc_max(&hermes_ida, HERMES_MAX_DEVICES - 1, GFP_KERNEL);
	if (ret < 0)
		goto unmap;
	hd->minor = ret;
	hd->dev.devt = MKDEV(MAJOR(hermes_devt), hd->minor);
	ret = dev_set_name(&hd->dev, HERMES_NAME "%d", hd->minor);
	if (ret)
		goto unmap;
	ret = hermes_irq_setup(hd);
	if (ret)
		goto unmap;
	ret = hermes_reclaim_slots(hd);
	if (ret < 0) {
		dev_err(&pdev->dev, "slot commands fail at probe: %d\n", ret);
		goto irq;
	}
	if (ret)
		dev_info(&pdev->dev, "freed %d slots an earlier driver left allocated\n", ret);
	cdev_init(&hd->cdev, &hermes_fops);
	hd->cdev.owner = THIS_MODULE;
	ret = cdev_device_add(&hd->cdev, &hd->dev);
	if (ret)
		goto irq;
	pci_set_drvdata(pdev, hd);
	dev_info(&hd->dev, "\"%s\" v%u: %u engines, %u+%u slots of %u/%u KiB, %u+%u DMA channels, %d vectors%s\n",
		 hd->build, hd->version, hd->engines, hd->prog_slots, hd->data_slots,
		 hd->prog_size >> 10, hd->data_size >> 10, hd->h2c.count, hd->c2h.count,
		 hd->nvec, hd->can_abort ? ", abort" : "");
	return 0;

irq:
	hermes_irq_teardown(hd);
unmap:
	hermes_dma_fini(hd);
	hermes_unmap(hd);
put:
	if (hd->minor >= 0)
		ida_free(&hermes_ida, hd->minor);
	put_device(&hd->dev);
	return ret;
}

static void hermes_remove(struct pci_dev *pdev)
{
	struct hermes_dev *hd = pci_get_drvdata(pdev);

	cdev_device_del(&hd->cdev, &hd->dev);
	/* Waits for file operations in flight (each bounded); later ones see gone. */
	down_write(&hd->gone_lock);
	hermes_retry_deferred(hd);
	hermes_free_deferred(hd);
	hd->gone = true;
	hermes_irq_teardown(hd);
	hermes_dma_fini(hd);
	up_write(&hd->gone_lock);
	hermes_unmap(hd);
	ida_free(&hermes_ida, hd->minor);
	put_device(&hd->dev);
}

static const struct pci_device_id hermes_ids[] = {
	{ PCI_DEVICE(HERMES_PCI_VENDOR_ID, HERMES_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, hermes_ids);

static struct pci_driver hermes_pci_driver = {
	.name = HERMES_NAME,
	.id_table = hermes_ids,
	.probe = hermes_probe,
	.remove = hermes_remove,
};

static int __init hermes_init(void)
{
	int ret;

	ret = alloc_chrdev_region(&hermes_devt, 0, HERMES_MAX_DEVICES, HERMES_NAME);
	if (ret)
		return ret;
	ret = class_register(&hermes_class);
	if (ret)
		goto region;
	ret = pci_register_driver(&hermes_pci_driver);
	if (ret)
		goto class;
	return 0;
class:
	class_unregister(&hermes_class);
region:
	unregister_chrdev_region(hermes_devt, HERMES_MAX_DEVICES);
	return ret;
}

static void __exit hermes_exit(void)
{
	pci_unregister_driver(&hermes_pci_driver);
	class_unregister(&hermes_class);
	unregister_chrdev_region(hermes_devt, HERMES_MAX_DEVICES);
	ida_destroy(&hermes_ida);
}

module_init(hermes_init);
module_exit(hermes_exit);
MODULE_DESCRIPTION("Hermes eBPF accelerator (PCI 1de5:3000): /dev/hermesN");
MODULE_LICENSE("GPL");
