/*
 * blkbench: the test agent's 4 KiB block I/O load for `make bench`.
 *
 *   blkbench DEV PATTERN OPS SPAN
 *
 * PATTERN is seq-read, seq-write, rand-read or rand-write; OPS requests of
 * 4 KiB each go to DEV with O_DIRECT at queue depth 1, sequentially from
 * offset 0 or at pseudo-random 4 KiB-aligned offsets in the first SPAN
 * MiB. It prints one line, "GOVMD-RESULT blkbench.PATTERN.ops=N
 * blkbench.PATTERN.us=T" (T from CLOCK_MONOTONIC), or ".error=ERRNO".
 *
 * Integer code only, no stdio: the guest may run in an instruction
 * emulator without x87/SSE (see images/README.md). Built by
 * images/build.sh static with the kernel's nolibc (tools/include/nolibc of
 * the same linux-source tarball), gcc -m32 -mgeneral-regs-only.
 */
#ifndef O_DIRECT
#define O_DIRECT 040000 /* i386 */
#endif

/* struct __kernel_timespec: clock_gettime64, since kernels without
 * COMPAT_32BIT_TIME (the test kernel) refuse the 32-bit-time
 * clock_gettime */
struct mono {
	long long sec, nsec;
};

static char line[256];
static int len;

static void put(const char *s) { while (*s && len < (int)sizeof(line) - 1) line[len++] = *s++; }

static void putu(unsigned long long v) {
	char b[24];
	int i = sizeof(b);
	b[--i] = 0;
	do { b[--i] = '0' + v % 10; v /= 10; } while (v);
	put(b + i);
}

static unsigned long long now_us(void) {
	struct mono ts = {0, 0};
	my_syscall2(__NR_clock_gettime64, 1 /* CLOCK_MONOTONIC */, &ts);
	return (unsigned long long)ts.sec * 1000000ull + ts.nsec / 1000;
}

static int has(const char *s, const char *w) {
	for (; *s; s++)
		if (strncmp(s, w, strlen(w)) == 0)
			return 1;
	return 0;
}

/* the request buffer: O_DIRECT wants it aligned */
static char buf[4096] __attribute__((aligned(4096)));

static void report(const char *pat, const char *k1, unsigned long long v1, const char *k2, unsigned long long v2) {
	len = 0;
	put("GOVMD-RESULT blkbench."); put(pat); put("."); put(k1); put("="); putu(v1);
	if (k2) { put(" blkbench."); put(pat); put("."); put(k2); put("="); putu(v2); }
	put("\n");
	write(1, line, len);
}

int main(int argc, char **argv) {
	if (argc != 5) {
		write(2, "usage: blkbench DEV PATTERN OPS SPAN_MIB\n", 41);
		return 2;
	}
	const char *dev = argv[1], *pat = argv[2];
	unsigned long ops = atol(argv[3]);
	unsigned long long span = (unsigned long long)atol(argv[4]) << 20;
	int write_ = has(pat, "write"), rnd = strncmp(pat, "rand", 4) == 0;
	unsigned long blocks = span / 4096;
	if (blocks == 0 || ops == 0)
		return 2;
	int fd = open(dev, (write_ ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0) {
		report(pat, "error", errno, 0, 0);
		return 1;
	}
	memset(buf, 0x5a, sizeof(buf));
	unsigned int x = 2463534242u;
	unsigned long long t0 = now_us();
	for (unsigned long i = 0; i < ops; i++) {
		unsigned long blk = i % blocks;
		if (rnd) {
			x ^= x << 13; x ^= x >> 17; x ^= x << 5;
			blk = x % blocks;
		}
		off_t off = (off_t)blk * 4096;
		ssize_t n = lseek(fd, off, SEEK_SET);
		if (n == off)
			n = write_ ? write(fd, buf, 4096) : read(fd, buf, 4096);
		if (n != 4096) {
			report(pat, "error", n < 0 ? errno : EIO, "at", i);
			return 1;
		}
	}
	unsigned long long t1 = now_us();
	report(pat, "ops", ops, "us", t1 - t0);
	return 0;
}
