/* connloop: a tight TCP connect + close loop, for the envsteer benchmark.
 *
 *   connloop IP PORT COUNT [MAX_SECONDS]
 *
 * Each iteration: socket(), connect() (blocking; on loopback it returns once the handshake
 * is done), close() with SO_LINGER {1, 0} so the socket is reset instead of entering
 * TIME_WAIT (otherwise 20k connects per round would exhaust the ephemeral ports to one
 * destination). The loop stops after COUNT connects or MAX_SECONDS (default 60), whichever
 * comes first. Every iteration (socket + connect + close: on loopback the whole handshake,
 * both ends' kernel work and the BPF programs on it run inside these calls) is timed on its
 * own, so a rare stall (a SYN dropped because the server, starved of CPU on a busy 2-core VM,
 * let its accept queue overflow, costs a 1 s retransmit) shows as an outlier, not as a shift
 * of the median. Prints one JSON line:
 *   {"count":N,"errors":E,"first_errno":e,"elapsed_ns":T,"mean_ns":T/N,
 *    "p50_ns":..,"p90_ns":..,"p99_ns":..,"stalls":iterations over 100 ms}
 * Exit status 0 if at least one connect succeeded and none failed, else 1.
 * IPv4 only; the benchmark only ever targets 127.0.0.0/8 or 198.18.0.0/15 (the addresses of
 * the namespaces it makes). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int cmp_u32(const void *a, const void *b) {
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
	if (argc < 4) {
		fprintf(stderr, "usage: %s IP PORT COUNT [MAX_SECONDS]\n", argv[0]);
		return 2;
	}
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
		fprintf(stderr, "bad IPv4 address %s\n", argv[1]);
		return 2;
	}
	uint32_t a = ntohl(sa.sin_addr.s_addr);
	if (a >> 24 != 127 && (a & 0xfffe0000u) != 0xc6120000u) {
		fprintf(stderr, "refusing target %s outside 127.0.0.0/8 and 198.18.0.0/15\n", argv[1]);
		return 2;
	}
	long count = atol(argv[3]);
	double max_s = argc > 4 ? atof(argv[4]) : 60.0;
	uint64_t deadline = now_ns() + (uint64_t)(max_s * 1e9);
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	if (count < 1) count = 1;
	uint32_t *lat = calloc((size_t)count, sizeof(uint32_t));
	if (!lat) return 2;
	long done = 0, errors = 0, iters = 0, stalls = 0;
	int first_errno = 0;
	uint64_t t0 = now_ns(), ti = t0;
	for (long i = 0; i < count; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			if (!first_errno) first_errno = errno;
			errors++;
			break;
		}
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
			if (!first_errno) first_errno = errno;
			errors++;
		} else {
			done++;
		}
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(fd);
		uint64_t t = now_ns(), d = t - ti;
		ti = t;
		lat[iters++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
		if (d > 100000000ull) stalls++;
		if (t > deadline) break;
		if (errors > 100) break;
	}
	uint64_t el = ti - t0;
	qsort(lat, (size_t)iters, sizeof(uint32_t), cmp_u32);
#define PCT(p) (iters ? lat[(size_t)((double)(iters - 1) * (p) / 100.0)] : 0)
	printf("{\"count\":%ld,\"errors\":%ld,\"first_errno\":%d,\"elapsed_ns\":%llu,"
	       "\"mean_ns\":%.1f,\"p50_ns\":%u,\"p90_ns\":%u,\"p99_ns\":%u,\"stalls\":%ld}\n",
	       done, errors, first_errno, (unsigned long long)el,
	       iters ? (double)el / (double)iters : 0.0, PCT(50), PCT(90), PCT(99), stalls);
	free(lat);
	return (done > 0 && errors == 0) ? 0 : 1;
}
