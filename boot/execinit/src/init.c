/*
 * govmd-init: the guest init (PID 1) of `govmd exec`.
 *
 * govmd appends a small cpio archive to the user's initramfs (see
 * boot/execinit/execinit.go) and boots the kernel with rdinit=/govmd/init. The archive
 * holds this program and its instructions:
 *
 *   /govmd/argv    the command: its argv strings, each NUL-terminated
 *                  (1 to MAX_ARGS strings, at most MAX_STRS bytes)
 *   /govmd/env     its environment: "K=V" strings, each NUL-terminated
 *                  (then the variables the kernel gave init from its command
 *                  line that it does not name, such as GLIBC_TUNABLES=...)
 *                  (optional; missing: PATH, HOME=/root, TERM=dumb)
 *   /govmd/cwd     its working directory, one line (optional; default /)
 *   /govmd/root    optional (empty: none), one line: the tag of a virtiofs share that
 *                  becomes the root (read-only, under an overlay with a
 *                  tmpfs for writes; /dev, /proc, /sys, /tmp move into it)
 *   /govmd/mounts  virtiofs shares to mount first, lines "TAG DIR ro|rw"
 *                  (optional)
 *   /govmd/stdin   optional (empty: none), "1": the command's stdin is the
 *                  port govmd.stdin (below) instead of /dev/null
 *   /govmd/modules/000.ko, 001.ko, ...
 *                  kernel modules to load first, in this order (optional):
 *                  for a kernel whose virtio, virtio_console, fuse,
 *                  virtiofs or overlay drivers are modules
 *
 * It mounts devtmpfs on /dev, proc on /proc, sysfs on /sys and tmpfs on
 * /tmp, loads the modules (finit_module; one already loaded or built in is
 * fine, one that fails is logged to the kernel console and skipped), then
 * finds three (or four) virtio-console ports by name (their nodes are
 * /dev/vportNpM; they show up after the driver probes the device, so it
 * retries for up to 30 s):
 *
 *   govmd.status   this program's reports to the host, one line each:
 *                    "init"         the kernel reached init (the host
 *                                   timestamps it)
 *                    "start"        the command was forked
 *                    "exit N"       the command exited with status N
 *                    "signal N"     the command was killed by signal N
 *                    "fail TEXT"    this program failed (a mount, reading
 *                                   its instructions, chdir, fork)
 *                  Lines are at most LINE_MAX bytes with the newline.
 *   govmd.stdout   the command's stdout (fd 1)
 *   govmd.stderr   the command's stderr (fd 2)
 *   govmd.stdin    the command's stdin (fd 0), only with /govmd/stdin;
 *                  otherwise stdin is /dev/null. The host closes the port
 *                  when its input ends: a read then returns 0 (EOF).
 *
 * The command runs in its own session. It is looked up in PATH (of its
 * environment) if argv[0] has no '/'; if it cannot be executed, the child
 * writes "govmd-init: ARGV0: ERROR" to its stderr and exits with 127 (not
 * found) or 126 (any other error), like a shell. As PID 1 this program
 * reaps every orphan until the command exits, then syncs, reports the exit
 * and powers the VM off (the host may stop the VM as soon as it has read
 * the status line). It never returns: the kernel panics if init exits.
 * Without a status port there is nobody to tell, so it logs to /dev/kmsg
 * (the kernel console) and powers off.
 *
 * Integer code only, no floating point or SSE, no 64-bit division, no
 * syscalls with 32-bit time_t (kernels without COMPAT_32BIT_TIME refuse
 * them): a static i386 program built with the kernel's nolibc, so that it
 * runs on every guest CPU profile including PVM. Rebuild with build.sh.
 */

#ifndef O_CLOEXEC
#define O_CLOEXEC 02000000
#endif
#ifndef MS_RDONLY
#define MS_RDONLY 1
#endif
#ifndef WTERMSIG
#define WTERMSIG(status) ((status) & 0x7f)
#endif

#define MAX_ARGS 4096          /* strings in /govmd/argv, and in /govmd/env */
#define MAX_STRS (128 * 1024)  /* bytes of /govmd/argv, and of /govmd/env */
#define MAX_MOUNTS (64 * 1024) /* bytes of /govmd/mounts */
#define MAX_PATH 4096          /* bytes of /govmd/cwd, of a path we build */
#define LINE_MAX 512           /* a status line, with its newline */
#define PORT_WAIT 30           /* seconds to wait for the ports */

static const char *const port_names[4] = {"govmd.status", "govmd.stdout", "govmd.stderr", "govmd.stdin"};
static int ports[4] = {-1, -1, -1, -1}; /* status, stdout, stderr, stdin */
static int nports = 3;                   /* 4 with /govmd/stdin */
static int logfd = 2;                /* /dev/kmsg once it is open */
static const char *logprefix = "govmd-init: ";
static int devnull = -1;

/* ---------------------------------------------------------------- lines */

/* One message being built: put* append and stop at the bound. */
static char line[LINE_MAX];
static int len;

static void put(const char *s) {
	while (*s && len < LINE_MAX - 1) /* room for the newline */
		line[len++] = *s++;
}

static void putu(unsigned int v) {
	char b[12];
	int i = sizeof(b);
	b[--i] = 0;
	do
		b[--i] = '0' + v % 10;
	while (v /= 10);
	put(b + i);
}

static const struct {
	int n;
	const char *name, *text;
} errs[] = {
	{EPERM, "EPERM", "operation not permitted"},
	{ENOENT, "ENOENT", "no such file or directory"},
	{EIO, "EIO", "input/output error"},
	{ENXIO, "ENXIO", "no such device or address"},
	{E2BIG, "E2BIG", "argument list too long"},
	{ENOEXEC, "ENOEXEC", "exec format error"},
	{ECHILD, "ECHILD", "no child processes"},
	{EAGAIN, "EAGAIN", "resource temporarily unavailable"},
	{ENOMEM, "ENOMEM", "out of memory"},
	{EACCES, "EACCES", "permission denied"},
	{EBUSY, "EBUSY", "device or resource busy"},
	{EEXIST, "EEXIST", "file exists"},
	{ENODEV, "ENODEV", "no such device"},
	{ENOTDIR, "ENOTDIR", "not a directory"},
	{EISDIR, "EISDIR", "is a directory"},
	{EINVAL, "EINVAL", "invalid argument"},
	{ETXTBSY, "ETXTBSY", "text file busy"},
	{EFBIG, "EFBIG", "file too large"},
	{ENOSPC, "ENOSPC", "no space left on device"},
	{EROFS, "EROFS", "read-only file system"},
	{ENAMETOOLONG, "ENAMETOOLONG", "file name too long"},
	{ENOSYS, "ENOSYS", "function not implemented"},
	{ELOOP, "ELOOP", "too many levels of symbolic links"},
};

/* puterr appends "TEXT (errno N, NAME)", or "errno N" for rare errnos. */
static void puterr(int e) {
	for (unsigned int i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		if (errs[i].n == e) {
			put(errs[i].text);
			put(" (errno ");
			putu(e);
			put(", ");
			put(errs[i].name);
			put(")");
			return;
		}
	}
	put("errno ");
	putu(e);
}

static void write_all(int fd, const char *p, int n) {
	while (n > 0) {
		int r = write(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		p += r;
		n -= r;
	}
}

/* emit writes prefix, the line and a newline to fd in one write. A line
 * cut at the bound loses its last, partial UTF-8 sequence, so that the
 * host sees valid UTF-8. */
static void emit(int fd, const char *prefix) {
	static char out[LINE_MAX + 16];
	int n = 0;
	if (len == LINE_MAX - 1) {
		int i = len;
		while (i > 0 && (line[i - 1] & 0xc0) == 0x80)
			i--;
		if (i > 0 && (line[i - 1] & 0x80))
			len = i - 1;
	}
	while (*prefix)
		out[n++] = *prefix++;
	memcpy(out + n, line, len);
	n += len;
	out[n++] = '\n';
	write_all(fd, out, n);
}

static void begin(const char *s) {
	len = 0;
	put(s);
}

/* say logs the line to the kernel console. */
static void say(void) { emit(logfd, logprefix); }

static __attribute__((noreturn)) void poweroff(void) {
	my_syscall0(__NR_sync);
	reboot(LINUX_REBOOT_CMD_POWER_OFF);
	begin("power off failed: ");
	puterr(errno);
	say();
	for (;;)
		my_syscall0(__NR_pause);
}

/* fail sends the line (which starts with "fail ") to the host and the
 * console, then powers off. */
static __attribute__((noreturn)) void fail(void) {
	if (ports[0] >= 0)
		emit(ports[0], "");
	say();
	poweroff();
}

/* ---------------------------------------------------------------- files */

/* join writes a, b and c into dst (cap bytes); -1 if it does not fit. */
static int join(char *dst, int cap, const char *a, const char *b, const char *c) {
	const char *parts[3] = {a, b, c};
	int n = 0;
	for (int i = 0; i < 3; i++)
		for (const char *s = parts[i]; *s; s++) {
			if (n >= cap - 1)
				return -1;
			dst[n++] = *s;
		}
	dst[n] = 0;
	return 0;
}

/* slurp reads the file path into buf (cap bytes): its length, or -errno
 * (-EFBIG if it is longer than cap). */
static int slurp(const char *path, char *buf, int cap) {
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int n = 0;
	for (;;) {
		char extra;
		int r = n < cap ? read(fd, buf + n, cap - n) : read(fd, &extra, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0 || n >= cap) {
			int e = r < 0 ? -errno : r > 0 ? -EFBIG : n;
			close(fd);
			return e;
		}
		n += r;
	}
}

/* strings splits n bytes of NUL-terminated strings in buf into v (at most
 * MAX_ARGS, then a NULL): the count, or -1 if malformed. */
static int strings(char *buf, int n, char **v) {
	int c = 0;
	if (n > 0 && buf[n - 1] != 0)
		return -1;
	for (int i = 0; i < n; i += strlen(buf + i) + 1) {
		if (c == MAX_ARGS)
			return -1;
		v[c++] = buf + i;
	}
	v[c] = 0;
	return c;
}

/* read_strings reads /govmd/argv or /govmd/env into v: the count, or -1
 * if the file is optional and missing. Any other failure is fatal. */
static int read_strings(const char *path, char *buf, char **v, int optional) {
	int n = slurp(path, buf, MAX_STRS);
	if (n == -ENOENT && optional)
		return -1;
	int c = n < 0 ? -1 : strings(buf, n, v);
	if (n < 0 || c < 0) {
		begin("fail ");
		put(path);
		put(": ");
		if (n < 0)
			puterr(-n);
		else
			put("malformed");
		fail();
	}
	return c;
}

/* ---------------------------------------------------------------- ports */

/* sleep10ms: poll(2), since nanosleep takes a 32-bit timespec. */
static void sleep10ms(void) { my_syscall3(__NR_poll, 0, 0, 10); }

/* seconds returns CLOCK_MONOTONIC's seconds, or -1 (before Linux 5.1,
 * which added clock_gettime64). */
static long long seconds(void) {
	struct {
		long long sec, nsec;
	} ts = {0, 0};
	if (my_syscall2(__NR_clock_gettime64, 1 /* CLOCK_MONOTONIC */, &ts) < 0)
		return -1;
	return ts.sec;
}

/* scan_ports opens the ports that have appeared in sysfs since the last
 * scan. */
static void scan_ports(void) {
	static char dents[4096] __attribute__((aligned(8)));
	static const char dir[] = "/sys/class/virtio-ports/";
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return;
	int n;
	while ((n = getdents64(dfd, (struct linux_dirent64 *)dents, sizeof(dents))) > 0) {
		for (int off = 0; off < n;) {
			struct linux_dirent64 *d = (struct linux_dirent64 *)(dents + off);
			char path[320], name[64];
			off += d->d_reclen;
			if (d->d_name[0] == '.' || join(path, sizeof(path), dir, d->d_name, "/name") < 0)
				continue;
			int k = slurp(path, name, sizeof(name) - 1);
			if (k <= 0)
				continue;
			if (name[k - 1] == '\n')
				k--;
			name[k] = 0;
			for (int i = 0; i < nports; i++) {
				if (ports[i] >= 0 || strcmp(name, port_names[i]) != 0 ||
				    join(path, sizeof(path), "/dev/", d->d_name, "") < 0)
					continue;
				ports[i] = open(path, (i == 3 ? O_RDONLY : O_WRONLY) | O_CLOEXEC);
				if (i == 0 && ports[0] >= 0)
					write_all(ports[0], "init\n", 5);
			}
		}
	}
	close(dfd);
}

/* find_ports scans every 10 ms for PORT_WAIT seconds (by the clock: a
 * scan takes long in an emulated guest; without clock_gettime64, by the
 * number of scans). */
static void find_ports(void) {
	long long start = seconds();
	for (int try = 0;; try++) {
		scan_ports();
		if (ports[0] >= 0 && ports[1] >= 0 && ports[2] >= 0 && (nports < 4 || ports[3] >= 0))
			return;
		long long now = start < 0 ? -1 : seconds();
		if (now < 0 ? try >= PORT_WAIT * 100 : now - start >= PORT_WAIT)
			break;
		sleep10ms();
	}
	begin(ports[0] < 0 ? "" : "fail ");
	put("no virtio-console port named ");
	for (int i = 0, first = 1; i < nports; i++) {
		if (ports[i] >= 0)
			continue;
		put(first ? "" : ", ");
		put(port_names[i]);
		first = 0;
	}
	put(" after 30 s");
	put(ports[0] < 0 ? " (CONFIG_VIRTIO_CONSOLE?)" : "");
	fail();
}

/* ---------------------------------------------------------------- modules */

/* loadmodules loads /govmd/modules/000.ko, 001.ko, ... in order, until
 * one is missing. A module that fails is logged and skipped: what needs
 * it fails later with a message of its own (without virtio_console the
 * host reports that the command never started). */
static void loadmodules(void) {
	static char path[] = "/govmd/modules/000.ko";
	for (int i = 0; i < 1000; i++) {
		path[15] = '0' + i / 100;
		path[16] = '0' + i / 10 % 10;
		path[17] = '0' + i % 10;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			if (errno != ENOENT) {
				begin("module ");
				put(path);
				put(": ");
				puterr(errno);
				say();
			}
			return;
		}
		long r = my_syscall3(__NR_finit_module, fd, "", 0);
		close(fd);
		if (r < 0 && r != -EEXIST) {
			begin("module ");
			put(path);
			put(": ");
			puterr((int)-r);
			say();
		}
	}
}

/* ---------------------------------------------------------------- mounts */

static void early_mount(const char *src, const char *dir, const char *type) {
	mkdir(dir, 0755);
	if (mount(src, dir, type, 0, 0) < 0 && errno != EBUSY) {
		begin("mount ");
		put(type);
		put(" on ");
		put(dir);
		put(": ");
		puterr(errno);
		say();
	}
}

/* mkdir_p creates dir and its parents; errors show up in the mount. */
static void mkdir_p(char *dir) {
	for (char *p = dir + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			mkdir(dir, 0755);
			*p = '/';
		}
	}
	mkdir(dir, 0755);
}

/* mountsbuf holds /govmd/mounts, read before a root share hides it. */
static char mountsbuf[MAX_MOUNTS + 1];

/* readmounts reads /govmd/mounts into mountsbuf (empty if missing). */
static void readmounts(void) {
	int n = slurp("/govmd/mounts", mountsbuf, MAX_MOUNTS);
	if (n == -ENOENT)
		n = 0;
	if (n < 0) {
		begin("fail /govmd/mounts: ");
		puterr(-n);
		fail();
	}
	mountsbuf[n] = 0;
}

/* failerr reports what failed with errno e and powers off. */
static __attribute__((noreturn)) void failerr(const char *what, const char *arg, int e) {
	begin("fail ");
	put(what);
	put(arg);
	put(": ");
	puterr(e);
	fail();
}

/* rootshare makes the virtiofs share tagged in /govmd/root (if any) the
 * root: read-only, under an overlay whose writable layer is a tmpfs; /dev,
 * /proc, /sys and /tmp move into it, and the init chroots there. */
static void rootshare(void) {
	static char tag[64];
	static const char *const keep[] = {"/dev", "/proc", "/sys", "/tmp"};
	static char dir[16];
	int n = slurp("/govmd/root", tag, sizeof tag - 1);
	if (n == -ENOENT || n == 0)
		return; /* no root share */
	if (n > 0 && tag[n - 1] == '\n')
		n--;
	if (n <= 0) {
		begin("fail /govmd/root: no tag");
		fail();
	}
	tag[n] = 0;
	mkdir("/.lower", 0755);
	mkdir("/.rw", 0755);
	mkdir("/.root", 0755);
	if (mount(tag, "/.lower", "virtiofs", MS_RDONLY, 0) < 0)
		failerr("mount root share ", tag, errno);
	if (mount("tmpfs", "/.rw", "tmpfs", 0, "mode=0755") < 0)
		failerr("mount tmpfs on ", "/.rw", errno);
	mkdir("/.rw/upper", 0755);
	mkdir("/.rw/work", 0755);
	if (mount("overlay", "/.root", "overlay", 0, "lowerdir=/.lower,upperdir=/.rw/upper,workdir=/.rw/work") < 0)
		failerr("mount overlay on ", "/.root (CONFIG_OVERLAY_FS?)", errno);
	for (unsigned i = 0; i < sizeof keep / sizeof keep[0]; i++) {
		strcpy(dir, "/.root");
		strcpy(dir + 6, keep[i]);
		mkdir(dir, 0755);
		if (mount(keep[i], dir, 0, MS_MOVE, 0) < 0)
			failerr("move mount to ", dir, errno);
	}
	if (chdir("/.root") < 0)
		failerr("chdir ", "/.root", errno);
	if (mount(".", "/", 0, MS_MOVE, 0) < 0)
		failerr("move mount ", "/.root to /", errno);
	if (chroot(".") < 0)
		failerr("chroot ", "/.root", errno);
	chdir("/");
}

/* share mounts the virtiofs shares listed in /govmd/mounts (mountsbuf). */
static void share(void) {
	char *buf = mountsbuf;
	for (char *l = buf, *next; *l; l = next) {
		char *f[3];
		int nf = 0;
		next = strchr(l, '\n');
		if (next)
			*next++ = 0;
		else
			next = l + strlen(l);
		if (!*l)
			continue;
		for (char *p = l;;) { /* the third field keeps any further spaces */
			f[nf++] = p;
			if (nf == 3 || !(p = strchr(p, ' ')))
				break;
			*p++ = 0;
		}
		int ro = nf == 3 && strcmp(f[2], "ro") == 0;
		if (nf != 3 || (!ro && strcmp(f[2], "rw") != 0) || !*f[0] || f[1][0] != '/') {
			begin("fail /govmd/mounts: malformed line");
			fail();
		}
		mkdir_p(f[1]);
		if (mount(f[0], f[1], "virtiofs", ro ? MS_RDONLY : 0, 0) < 0) {
			int e = errno;
			begin("fail mount ");
			put(f[0]);
			put(" on ");
			put(f[1]);
			put(": ");
			puterr(e);
			fail();
		}
	}
}

/* ---------------------------------------------------------------- the command */

static char argvbuf[MAX_STRS], envbuf[MAX_STRS];
static char *argv_[MAX_ARGS + 1], *envp[MAX_ARGS + 1];
static char *default_env[] = {
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"TERM=dumb",
	0,
};

/* skip: execve errors after which execvp tries the next PATH entry */
static int skip(int e) {
	return e == ENOENT || e == ENOTDIR || e == ENAMETOOLONG || e == ESTALE || e == ENODEV ||
	       e == ETIMEDOUT;
}

/* search execs cmd in the PATH of env like execvp (an empty entry is the
 * current directory; EACCES if it was found but not executable), except
 * that a file without #! is not run with /bin/sh. It returns the error. */
static int search(const char *cmd, char **env) {
	static char path[MAX_PATH];
	const char *p = default_env[0] + 5;
	int e = ENOENT, eacces = 0;
	for (char **v = env; *v; v++)
		if (strncmp(*v, "PATH=", 5) == 0)
			p = *v + 5;
	for (;;) {
		int n = 0;
		while (p[n] && p[n] != ':')
			n++;
		if (n >= MAX_PATH || join(path + n, MAX_PATH - n, n ? "/" : "", cmd, "") < 0) {
			e = ENAMETOOLONG;
		} else {
			memcpy(path, p, n);
			execve(path, argv_, env);
			e = errno;
		}
		if (e == EACCES)
			eacces = 1;
		else if (!skip(e))
			return e;
		if (!p[n])
			return eacces ? EACCES : e;
		p += n + 1;
	}
}

/* run is the child: the command, or an error on its stderr. */
static __attribute__((noreturn)) void run(char **env) {
	const char *cmd = argv_[0];
	int e;

	setsid();
	dup2(ports[3] >= 0 ? ports[3] : devnull, 0);
	dup2(ports[1], 1);
	dup2(ports[2], 2);
	if (strchr(cmd, '/')) {
		execve(cmd, argv_, env);
		e = errno;
	} else {
		e = search(cmd, env);
	}
	begin(cmd);
	put(": ");
	puterr(e);
	emit(2, "govmd-init: ");
	exit(e == ENOENT ? 127 : 126);
}

/* addkernelenv appends to v (c strings, room for MAX_ARGS) the variables
 * of kenv whose names v does not have: the kernel passes the command
 * line's unknown NAME=VALUE words to init (GLIBC_TUNABLES=... on a PVM
 * host), and the command gets them too, after govmd's own. */
static void addkernelenv(char **v, int c, char **kenv) {
	for (; kenv && *kenv && c < MAX_ARGS; kenv++) {
		const char *eq = strchr(*kenv, '=');
		int have = 0;
		if (!eq)
			continue;
		for (int i = 0; i < c && !have; i++)
			have = strncmp(v[i], *kenv, eq - *kenv + 1) == 0;
		if (!have)
			v[c++] = *kenv;
	}
	v[c] = 0;
}

int main(int argc, char **argv, char **kenv) {
	static char cwd[MAX_PATH + 1];
	char **env = envp;
	int fd, c;

	(void)argc;
	(void)argv;

	early_mount("devtmpfs", "/dev", "devtmpfs");
	/* fds 0-2 must be taken, so that the ports get other numbers and
	 * dup2 onto 0-2 in the child always makes a copy without O_CLOEXEC */
	while ((fd = open("/dev/null", O_RDWR)) >= 0 && fd < 3)
		;
	if (fd > 2)
		close(fd);
	fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		logfd = fd;
		logprefix = "<3>govmd-init: "; /* KERN_ERR: shown even with "quiet" */
	}
	devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (devnull < 3) {
		begin("cannot open /dev/null (CONFIG_DEVTMPFS?)");
		say();
		poweroff();
	}
	early_mount("proc", "/proc", "proc");
	early_mount("sysfs", "/sys", "sysfs");
	early_mount("tmpfs", "/tmp", "tmpfs");
	loadmodules();

	char want[2];
	if (slurp("/govmd/stdin", want, 2) >= 1 && want[0] == '1')
		nports = 4;
	find_ports(); /* writes "init" */

	/* instructions first: a share may be mounted over /govmd */
	read_strings("/govmd/argv", argvbuf, argv_, 0);
	if (!argv_[0] || !*argv_[0]) {
		begin("fail /govmd/argv: no command");
		fail();
	}
	if ((c = read_strings("/govmd/env", envbuf, envp, 1)) < 0)
		env = default_env;
	else
		addkernelenv(envp, c, kenv);
	int n = slurp("/govmd/cwd", cwd, MAX_PATH);
	if (n < 0 && n != -ENOENT) {
		begin("fail /govmd/cwd: ");
		puterr(-n);
		fail();
	}
	if (n > 0 && cwd[n - 1] == '\n')
		n--;
	cwd[n > 0 ? n : 0] = 0;
	if (!cwd[0])
		cwd[0] = '/', cwd[1] = 0;

	readmounts();
	rootshare();
	share();
	if (chdir(cwd) < 0) {
		int e = errno;
		begin("fail chdir ");
		put(cwd);
		put(": ");
		puterr(e);
		fail();
	}

	pid_t pid = fork();
	if (pid == 0)
		run(env);
	if (pid < 0) {
		begin("fail fork: ");
		puterr(errno);
		fail();
	}
	write_all(ports[0], "start\n", 6);

	for (;;) {
		int st = 0;
		pid_t r = waitpid(-1, &st, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			begin("fail wait: ");
			puterr(errno);
			fail();
		}
		if (r != pid)
			continue; /* an orphan */
		my_syscall0(__NR_sync);
		begin(WIFEXITED(st) ? "exit " : "signal ");
		putu(WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		emit(ports[0], "");
		poweroff();
	}
}
