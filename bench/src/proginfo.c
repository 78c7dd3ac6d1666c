/* proginfo: for each BPF program id given, prints "<id> <name> <verified_insns>" (the
 * instructions the verifier processed when it was loaded; bpftool 7.1 does not show it).
 * For the envsteer benchmark (bench.py --prog-stats). Root only. */
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

int main(int argc, char **argv)
{
	int i, rc = 0;

	for (i = 1; i < argc; i++) {
		union bpf_attr attr;
		struct bpf_prog_info info;
		int fd;

		memset(&attr, 0, sizeof(attr));
		attr.prog_id = (__u32)strtoul(argv[i], NULL, 10);
		fd = (int)sys_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
		if (fd < 0) {
			fprintf(stderr, "proginfo: id %s: %s\n", argv[i], strerror(errno));
			rc = 1;
			continue;
		}
		memset(&info, 0, sizeof(info));
		memset(&attr, 0, sizeof(attr));
		attr.info.bpf_fd = (__u32)fd;
		attr.info.info_len = sizeof(info);
		attr.info.info = (__u64)(unsigned long)&info;
		if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)) {
			fprintf(stderr, "proginfo: id %s: %s\n", argv[i], strerror(errno));
			rc = 1;
		} else {
			printf("%u %s %u\n", info.id, info.name, info.verified_insns);
		}
		close(fd);
	}
	return rc;
}
