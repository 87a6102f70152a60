/*
 * xdpt: an external fio ioengine for NVMe/TCP, built from xdp-target's host engine.
 *
 *   fio --ioengine=external:/path/libfio-xdpt.so \
 *       --filename='nvme-tcp\://10.99.0.1\:4420/nqn.2026-11.dev.xdp-target\:default' ...
 *
 * The filename is the target URL as `xdp-target perf` takes it, with fio's ':' escaped
 * (fio splits filenames at ':'): nvme-tcp://ADDR[:PORT][/NQN]; without an NQN, the first
 * NVM subsystem of the discovery log at ADDR:PORT. Each file of each job is a controller of
 * its own (an admin queue and one I/O queue of --iodepth commands, over a kernel TCP
 * socket), created in the job's process; fio's offsets are byte offsets into namespace
 * --xdpt_nsid (1).
 *
 * This file only translates fio's ioengine_ops to the C ABI of the Rust library
 * (fio-engine/src/lib.rs), compiled against the headers of the fio it is loaded into
 * (ops->version must equal that fio's FIO_IOOPS_VERSION). `cargo xtask fio-engine` builds it.
 */
#include "fio.h"
#include "optgroup.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The Rust side (fio-engine/src/lib.rs). */
struct xdpt;
struct xdpt_info {
	uint64_t size;
	uint32_t block;
};
enum { XDPT_READ = 0, XDPT_WRITE = 1, XDPT_FLUSH = 2, XDPT_TRIM = 3 };
struct xdpt *xdpt_open(const char *url, const char *host_nqn, uint32_t nsid, uint32_t qd,
		       int digests, struct xdpt_info *info, char *err, size_t err_len);
int xdpt_submit(struct xdpt *h, int kind, uint64_t offset, uint64_t len, void *buf,
		uint64_t tag);
int xdpt_commit(struct xdpt *h);
int xdpt_reap(struct xdpt *h, uint32_t max, int wait, uint64_t *tags, int *errors);
void xdpt_close(struct xdpt *h);

struct xdpt_options {
	void *pad; /* fio's: the first member of an engine's option struct */
	char *hostnqn;
	unsigned int nsid;
	unsigned int digests;
};

static struct fio_option options[] = {
	{
		.name = "xdpt_hostnqn",
		.lname = "NVMe host NQN",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct xdpt_options, hostnqn),
		.help = "Host NQN to connect as (default: xdp-target perf's)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "xdpt_nsid",
		.lname = "NVMe namespace ID",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct xdpt_options, nsid),
		.def = "1",
		.minval = 1,
		.help = "Namespace to do I/O on",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "xdpt_digests",
		.lname = "NVMe/TCP digests",
		.type = FIO_OPT_BOOL,
		.off1 = offsetof(struct xdpt_options, digests),
		.def = "0",
		.help = "Ask for header and data digests (CRC32C)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = NULL,
	},
};

/* Per job (thread_data): the completions the last getevents found. */
struct xdpt_data {
	uint64_t *tags;
	int *errors;
	unsigned int nr_events;
	unsigned int nr_open;
};

static struct xdpt_data *xdpt_data(struct thread_data *td)
{
	struct xdpt_data *d = td->io_ops_data;

	if (d)
		return d;
	d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->tags = calloc(td->o.iodepth, sizeof(*d->tags));
	d->errors = calloc(td->o.iodepth, sizeof(*d->errors));
	if (!d->tags || !d->errors) {
		free(d->tags);
		free(d->errors);
		free(d);
		return NULL;
	}
	td->io_ops_data = d;
	return d;
}

/*
 * Connects every file not connected yet and sets its size; keeps the connections when
 * `keep`, else closes them again.
 */
static int xdpt_connect(struct thread_data *td, bool keep)
{
	struct xdpt_options *o = td->eo;
	struct xdpt_data *d = xdpt_data(td);
	struct fio_file *f;
	unsigned int i;
	char err[512];

	if (!d) {
		td_verror(td, ENOMEM, "xdpt_data");
		return 1;
	}
	for_each_file(td, f, i) {
		struct xdpt_info info;
		struct xdpt *h;

		if (f->engine_data)
			continue;
		h = xdpt_open(f->file_name, o->hostnqn, o->nsid, td->o.iodepth, o->digests,
			      &info, err, sizeof(err));
		if (!h) {
			log_err("xdpt: %s: %s\n", f->file_name, err);
			td_verror(td, ECONNREFUSED, "xdpt_open");
			return 1;
		}
		f->real_file_size = info.size;
		dprint(FD_FILE, "xdpt: %s: %llu bytes, %u-byte blocks\n", f->file_name,
		       (unsigned long long)info.size, info.block);
		if (keep) {
			f->engine_data = h;
			d->nr_open++;
		} else {
			xdpt_close(h);
		}
	}
	return 0;
}

/*
 * fio wants the namespace's size here, usually in its main process before it starts the
 * job's (with create_serialize, the default), and perhaps long before: a job behind a
 * stonewall waits for the ones before it. So this only asks and disconnects; init(),
 * which runs in the job's own process or thread, connects for the I/O. When init() ran
 * first (create_serialize=0), the files are connected and sized already.
 */
static int fio_xdpt_setup(struct thread_data *td)
{
	return xdpt_connect(td, false);
}

static int fio_xdpt_init(struct thread_data *td)
{
	return xdpt_connect(td, true);
}

static int fio_xdpt_open_file(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

static int fio_xdpt_close_file(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

/* The size was set when setup() or init() connected. */
static int fio_xdpt_get_file_size(struct thread_data *td, struct fio_file *f)
{
	fio_file_set_size_known(f);
	return 0;
}

static enum fio_q_status fio_xdpt_queue(struct thread_data *td, struct io_u *io_u)
{
	struct xdpt *h = io_u->file->engine_data;
	int kind, ret;

	fio_ro_check(td, io_u);
	if (io_u->ddir == DDIR_READ)
		kind = XDPT_READ;
	else if (io_u->ddir == DDIR_WRITE)
		kind = XDPT_WRITE;
	else if (io_u->ddir == DDIR_TRIM)
		kind = XDPT_TRIM;
	else if (ddir_sync(io_u->ddir))
		kind = XDPT_FLUSH;
	else {
		io_u->error = EOPNOTSUPP;
		return FIO_Q_COMPLETED;
	}
	ret = xdpt_submit(h, kind, io_u->offset, io_u->xfer_buflen, io_u->xfer_buf,
			  (uint64_t)(uintptr_t)io_u);
	if (ret < 0) {
		io_u->error = -ret;
		return FIO_Q_COMPLETED;
	}
	return FIO_Q_QUEUED;
}

static int fio_xdpt_commit(struct thread_data *td)
{
	struct fio_file *f;
	unsigned int i;

	for_each_file(td, f, i) {
		if (f->engine_data && xdpt_commit(f->engine_data) < 0)
			return -EIO;
	}
	return 0;
}

static int fio_xdpt_getevents(struct thread_data *td, unsigned int min, unsigned int max,
			      const struct timespec *t)
{
	struct xdpt_data *d = td->io_ops_data;
	unsigned int n = 0;
	struct fio_file *f;
	unsigned int i;

	do {
		for_each_file(td, f, i) {
			int r;

			if (!f->engine_data || n >= max)
				continue;
			/* One connection: sleep in it; several: poll each in turn. */
			r = xdpt_reap(f->engine_data, max - n, d->nr_open == 1 && n < min,
				      d->tags + n, d->errors + n);
			if (r < 0)
				return r;
			n += r;
		}
	} while (n < min);
	d->nr_events = n;
	return n;
}

static struct io_u *fio_xdpt_event(struct thread_data *td, int event)
{
	struct xdpt_data *d = td->io_ops_data;
	struct io_u *io_u = (struct io_u *)(uintptr_t)d->tags[event];

	io_u->error = d->errors[event];
	if (io_u->error)
		io_u->resid = io_u->xfer_buflen;
	return io_u;
}

static void fio_xdpt_cleanup(struct thread_data *td)
{
	struct xdpt_data *d = td->io_ops_data;
	struct fio_file *f;
	unsigned int i;

	for_each_file(td, f, i) {
		xdpt_close(f->engine_data);
		f->engine_data = NULL;
	}
	if (d) {
		free(d->tags);
		free(d->errors);
		free(d);
		td->io_ops_data = NULL;
	}
}

struct ioengine_ops ioengine = {
	.name = "xdpt",
	.version = FIO_IOOPS_VERSION,
	.flags = FIO_DISKLESSIO | FIO_NODISKUTIL | FIO_NOEXTEND,
	.setup = fio_xdpt_setup,
	.init = fio_xdpt_init,
	.queue = fio_xdpt_queue,
	.commit = fio_xdpt_commit,
	.getevents = fio_xdpt_getevents,
	.event = fio_xdpt_event,
	.cleanup = fio_xdpt_cleanup,
	.open_file = fio_xdpt_open_file,
	.close_file = fio_xdpt_close_file,
	.get_file_size = fio_xdpt_get_file_size,
	.option_struct_size = sizeof(struct xdpt_options),
	.options = options,
};
