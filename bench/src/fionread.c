/* fionread: what ioctl(FIONREAD) reports on a TCP socket in a sockhash, on this kernel.
 *
 *   fionread            (root; run it in a network namespace of its own: it uses 127.0.0.1)
 *
 * Three loopback connections; on each the peer sends 100 bytes and the receiving socket is
 * asked FIONREAD after they arrived (and then reads them): (1) a plain socket; (2) in a
 * sockhash with an sk_msg program only (SK_PASS); (3) in a sockhash with an sk_msg program
 * and a pass-through sk_skb stream verdict. Evidence for bench/README.md (issue 17 item 3):
 * whether a socket with a psock but no verdict program reports the bytes of its TCP receive
 * queue. The programs are two instructions each (r0 = 1; exit), loaded with raw bpf(2).
 * Prints one line per case: "<case> fionread <n> recv <m>". */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static void die(const char *what)
{
	fprintf(stderr, "fionread: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int load(enum bpf_prog_type type)
{
	struct bpf_insn insns[2] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1 }, /* SK_PASS */
		{ .code = BPF_JMP | BPF_EXIT },
	};
	union bpf_attr a;
	int fd;

	memset(&a, 0, sizeof(a));
	a.prog_type = type;
	a.insns = (__u64)(unsigned long)insns;
	a.insn_cnt = 2;
	a.license = (__u64)(unsigned long)"GPL";
	fd = (int)sys_bpf(BPF_PROG_LOAD, &a);
	if (fd < 0)
		die("BPF_PROG_LOAD");
	return fd;
}

static int sockhash(void)
{
	union bpf_attr a;
	int fd;

	memset(&a, 0, sizeof(a));
	a.map_type = BPF_MAP_TYPE_SOCKHASH;
	a.key_size = 4;
	a.value_size = 4;
	a.max_entries = 4;
	fd = (int)sys_bpf(BPF_MAP_CREATE, &a);
	if (fd < 0)
		die("BPF_MAP_CREATE");
	return fd;
}

static void attach(int map, int prog, enum bpf_attach_type type)
{
	union bpf_attr a;

	memset(&a, 0, sizeof(a));
	a.target_fd = (__u32)map;
	a.attach_bpf_fd = (__u32)prog;
	a.attach_type = type;
	if (sys_bpf(BPF_PROG_ATTACH, &a))
		die("BPF_PROG_ATTACH");
}

static void insert(int map, __u32 key, int sock)
{
	union bpf_attr a;
	__u32 v = (__u32)sock;

	memset(&a, 0, sizeof(a));
	a.map_fd = (__u32)map;
	a.key = (__u64)(unsigned long)&key;
	a.value = (__u64)(unsigned long)&v;
	a.flags = BPF_ANY;
	if (sys_bpf(BPF_MAP_UPDATE_ELEM, &a))
		die("BPF_MAP_UPDATE_ELEM");
}

/* A connected pair on 127.0.0.1: *rx accepted, *tx connected. */
static void pair(int *rx, int *tx)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int l = socket(AF_INET, SOCK_STREAM, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&sa, &len))
		die("listen");
	*tx = socket(AF_INET, SOCK_STREAM, 0);
	if (*tx < 0 || connect(*tx, (struct sockaddr *)&sa, sizeof(sa)))
		die("connect");
	*rx = accept(l, NULL, NULL);
	if (*rx < 0)
		die("accept");
	close(l);
}

static void check(const char *name, int map, __u32 key)
{
	char buf[256] = { 0 };
	struct pollfd p;
	int rx, tx, n = -1;
	ssize_t got;

	pair(&rx, &tx);
	if (map >= 0)
		insert(map, key, rx);
	if (send(tx, buf, 100, 0) != 100)
		die("send");
	p.fd = rx;
	p.events = POLLIN;
	if (poll(&p, 1, 2000) != 1)
		die("poll: nothing arrived");
	usleep(100000); /* all 100 bytes in */
	if (ioctl(rx, FIONREAD, &n))
		die("FIONREAD");
	got = recv(rx, buf, sizeof(buf), MSG_DONTWAIT);
	printf("%s fionread %d recv %zd\n", name, n, got);
	close(rx);
	close(tx);
}

int main(void)
{
	int msg_only = sockhash(), both = sockhash();
	int msg = load(BPF_PROG_TYPE_SK_MSG), skb = load(BPF_PROG_TYPE_SK_SKB);

	attach(msg_only, msg, BPF_SK_MSG_VERDICT);
	attach(both, msg, BPF_SK_MSG_VERDICT);
	attach(both, skb, BPF_SK_SKB_STREAM_VERDICT);
	check("plain", -1, 0);
	check("sockhash+sk_msg", msg_only, 1);
	check("sockhash+sk_msg+sk_skb_verdict", both, 1);
	return 0;
}
