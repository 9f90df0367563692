/*
 * ethfeat: read or set one offload feature of a network interface, as
 * `ethtool -k/-K` does, for the test agent (busybox has no ethtool).
 *
 *   ethfeat IFACE FEATURE [on|off]
 *
 * FEATURE is a name from the kernel's feature strings (ethtool -k), for
 * example rx-gro-hw. With on or off the feature is requested first. It
 * prints "FEATURE=on" or "FEATURE=off", the feature's active state, and
 * exits 0; or a line on stderr and exits 1.
 *
 * Built static with the kernel's nolibc (tools/include/nolibc of the same
 * linux-source tarball), i386, integer code only: the guest may run in an
 * instruction emulator without x87/SSE (images/README.md). It uses the
 * SIOCETHTOOL ioctl (ETHTOOL_GSSET_INFO, GSTRINGS, GFEATURES, SFEATURES).
 */
#define SIOCETHTOOL 0x8946
#define ETHTOOL_GSTRINGS 0x1b
#define ETHTOOL_GSSET_INFO 0x37
#define ETHTOOL_GFEATURES 0x3a
#define ETHTOOL_SFEATURES 0x3b
#define ETH_SS_FEATURES 4
#define ETH_GSTRING_LEN 32
#define MAX_FEATURES 256
#define AF_INET 2
#define SOCK_DGRAM 2
#ifndef __NR_socket
#define __NR_socket 359
#endif

struct ifreq {
	char name[16];
	void *data;
	char pad[12];
};

static struct {
	unsigned int cmd, reserved;
	unsigned long long mask;
	unsigned int count;
} sset;
static struct {
	unsigned int cmd, set, len;
	char data[MAX_FEATURES * ETH_GSTRING_LEN];
} strs;
static struct {
	unsigned int cmd, size;
	struct {
		unsigned int available, requested, active, never_changed;
	} blk[MAX_FEATURES / 32];
} gfeat;
static struct {
	unsigned int cmd, size;
	struct {
		unsigned int valid, requested;
	} blk[MAX_FEATURES / 32];
} sfeat;

static int fd;
static struct ifreq ifr;

static void say(int out, const char *a, const char *b) {
	write(out, a, strlen(a));
	write(out, b, strlen(b));
	write(out, "\n", 1);
}

static int fail(const char *what) {
	say(2, "ethfeat: ", what);
	return 1;
}

static int ethtool(void *req) {
	ifr.data = req;
	return ioctl(fd, SIOCETHTOOL, &ifr);
}

int main(int argc, char **argv) {
	if (argc != 3 && argc != 4)
		return fail("usage: ethfeat IFACE FEATURE [on|off]");
	if (strlen(argv[1]) >= sizeof(ifr.name))
		return fail("interface name too long");
	strcpy(ifr.name, argv[1]);
	fd = my_syscall3(__NR_socket, AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		return fail("socket");
	sset.cmd = ETHTOOL_GSSET_INFO;
	sset.mask = 1ull << ETH_SS_FEATURES;
	if (ethtool(&sset) < 0 || sset.mask == 0 || sset.count > MAX_FEATURES)
		return fail("ETHTOOL_GSSET_INFO");
	strs.cmd = ETHTOOL_GSTRINGS;
	strs.set = ETH_SS_FEATURES;
	strs.len = sset.count;
	if (ethtool(&strs) < 0)
		return fail("ETHTOOL_GSTRINGS");
	unsigned int i;
	for (i = 0; i < strs.len; i++)
		if (strncmp(strs.data + i * ETH_GSTRING_LEN, argv[2], ETH_GSTRING_LEN) == 0)
			break;
	if (i == strs.len)
		return fail("no such feature");
	unsigned int word = i / 32, bit = 1u << (i % 32);
	if (argc == 4) {
		int on = strcmp(argv[3], "on") == 0;
		if (!on && strcmp(argv[3], "off") != 0)
			return fail("want on or off");
		sfeat.cmd = ETHTOOL_SFEATURES;
		sfeat.size = (sset.count + 31) / 32;
		sfeat.blk[word].valid = bit;
		sfeat.blk[word].requested = on ? bit : 0;
		if (ethtool(&sfeat) < 0)
			return fail("ETHTOOL_SFEATURES");
	}
	gfeat.cmd = ETHTOOL_GFEATURES;
	gfeat.size = (sset.count + 31) / 32;
	if (ethtool(&gfeat) < 0)
		return fail("ETHTOOL_GFEATURES");
	say(1, argv[2], gfeat.blk[word].active & bit ? "=on" : "=off");
	return 0;
}
