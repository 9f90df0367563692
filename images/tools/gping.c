/*
 * gping: ICMP echo for the test agent, integer code only.
 *
 *   gping ADDR COUNT
 *
 * Sends COUNT (1-255) echo requests to the IPv4 address ADDR, one a second, over
 * a raw ICMP socket, and waits up to 5 s after the last for replies. It
 * prints "transmitted=N received=M" and exits 0 if a reply came back.
 * busybox ping computes its round-trip statistics with x87 floating point,
 * which KVM's instruction emulator (a PVM host) lacks; this one has none.
 * Built like blkbench (static, the kernel's nolibc, i386).
 */
#define AF_INET 2
#define SOCK_RAW 3
#define IPPROTO_ICMP 1

struct sockaddr_in {
	unsigned short family;
	unsigned short port;
	unsigned int addr;
	char zero[8];
};

static unsigned short csum(const unsigned char *p, int n) {
	unsigned int s = 0;
	for (int i = 0; i + 1 < n; i += 2)
		s += p[i] << 8 | p[i + 1];
	if (n & 1)
		s += p[n - 1] << 8;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return ~s & 0xffff;
}

/* parse dotted-quad a into network byte order in *out */
static int parse(const char *a, unsigned int *out) {
	unsigned char b[4];
	for (int i = 0; i < 4; i++) {
		unsigned int v = 0, digits = 0;
		for (; *a >= '0' && *a <= '9' && digits < 3; a++, digits++)
			v = v * 10 + (*a - '0');
		if (digits == 0 || v > 255 || *a != (i < 3 ? '.' : 0))
			return -1;
		b[i] = v;
		a++;
	}
	*out = b[0] | b[1] << 8 | b[2] << 16 | (unsigned int)b[3] << 24;
	return 0;
}

static void putnum(char **p, unsigned int v) {
	char t[12];
	int i = 0;
	do
		t[i++] = '0' + v % 10;
	while (v /= 10);
	while (i)
		*(*p)++ = t[--i];
}

int main(int argc, char **argv) {
	struct sockaddr_in to = {AF_INET, 0, 0, {0}};
	if (argc != 3 || parse(argv[1], &to.addr) < 0) {
		write(2, "usage: gping A.B.C.D COUNT\n", 27);
		return 2;
	}
	int count = atoi(argv[2]);
	if (count < 1 || count > 255)
		count = count < 1 ? 1 : 255;
	int fd = my_syscall3(__NR_socket, AF_INET, SOCK_RAW, IPPROTO_ICMP);
	if (fd < 0) {
		write(2, "gping: socket failed\n", 21);
		return 2;
	}
	unsigned short id = getpid() & 0xffff;
	int sent = 0, got = 0;
	unsigned char seen[256] = {0};
	for (int i = 0; i < count + 5; i++) {
		if (i < count) {
			unsigned char pkt[64] = {8, 0, 0, 0, id >> 8, id & 0xff, 0, (unsigned char)i};
			for (int j = 8; j < (int)sizeof(pkt); j++)
				pkt[j] = j;
			unsigned short c = csum(pkt, sizeof(pkt));
			pkt[2] = c >> 8;
			pkt[3] = c & 0xff;
			if (my_syscall6(__NR_sendto, fd, pkt, sizeof(pkt), 0, &to, sizeof(to)) == (long)sizeof(pkt))
				sent++;
		} else if (got >= sent) {
			break;
		}
		/* collect replies for a second */
		for (int waited = 0; waited < 10; waited++) {
			struct pollfd pfd = {fd, POLLIN, 0};
			/* poll(2) itself: nolibc's poll() uses the 32-bit-time
			 * ppoll, which kernels without COMPAT_32BIT_TIME (the
			 * test kernel) refuse with ENOSYS. */
			if (my_syscall3(__NR_poll, &pfd, 1, 100) <= 0)
				continue;
			unsigned char r[1500];
			long n = read(fd, r, sizeof(r));
			int hl = (r[0] & 15) * 4; /* raw ICMP sockets deliver the IP header */
			if (n < hl + 8 || r[hl] != 0 || (r[hl + 4] << 8 | r[hl + 5]) != id)
				continue;
			unsigned char seq = r[hl + 7];
			if (seq < count && !seen[seq]) {
				seen[seq] = 1;
				got++;
			}
		}
	}
	char line[64], *p = line;
	memcpy(p, "transmitted=", 12);
	p += 12;
	putnum(&p, sent);
	memcpy(p, " received=", 10);
	p += 10;
	putnum(&p, got);
	*p++ = '\n';
	write(1, line, p - line);
	return got > 0 ? 0 : 1;
}
