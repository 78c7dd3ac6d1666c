/* httpd: a small, fast HTTP/1.1 server for the envsteer benchmark (one thread, epoll).
 *
 *   httpd IP PORT [--ready-file PATH] [--max-seconds N]
 *
 * Answers every request (GET/HEAD, no body expected) with a fixed 3-byte body "ok\n";
 * keep-alive by default, pipelining supported, closes after the response when the request
 * says "Connection: close" or is HTTP/1.0 without keep-alive. Connections that reset
 * (the connect loop closes with RST) are simply closed. It exists so that the cost of the
 * server does not hide the per-request cost of the BPF programs (python http.server would).
 * Exits by itself after --max-seconds (default 3600) as a safety net; the benchmark stops
 * it by PID long before. Listens only on the address given (the benchmark uses a pod address
 * of its own namespaces, 198.18.0.0/15, or with --loopback 127.1.x.y). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IN_CAP 8192
#define OUT_CAP 16384
#define MAX_FD 65536

static const char RESP_KA[] =
    "HTTP/1.1 200 OK\r\nServer: envsteer-bench\r\nContent-Type: text/plain\r\n"
    "Content-Length: 3\r\n\r\nok\n";
static const char RESP_CLOSE[] =
    "HTTP/1.1 200 OK\r\nServer: envsteer-bench\r\nContent-Type: text/plain\r\n"
    "Content-Length: 3\r\nConnection: close\r\n\r\nok\n";

struct conn {
	size_t in_len, out_len, out_off;
	int closing; /* close once out is flushed */
	char in[IN_CAP];
	char out[OUT_CAP];
};

static struct conn *conns[MAX_FD];
static int epfd;

static int ci_contains(const char *h, size_t n, const char *needle) {
	size_t m = strlen(needle);
	if (m > n) return 0;
	for (size_t i = 0; i + m <= n; i++)
		if (strncasecmp(h + i, needle, m) == 0) return 1;
	return 0;
}

static void drop(int fd) {
	free(conns[fd]);
	conns[fd] = NULL;
	close(fd); /* also removes it from the epoll set */
}

/* Flush the out buffer. Returns 0 when the connection stays, -1 when it was dropped. */
static int flush(int fd, struct conn *c) {
	while (c->out_off < c->out_len) {
		ssize_t w = send(fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN) {
				struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
				epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
				return 0;
			}
			drop(fd);
			return -1;
		}
		c->out_off += (size_t)w;
	}
	c->out_len = c->out_off = 0;
	if (c->closing) {
		drop(fd);
		return -1;
	}
	return 0;
}

/* Read and answer. Returns 0 when the connection stays, -1 when it was dropped. */
static int on_readable(int fd, struct conn *c) {
	for (;;) {
		if (c->in_len == IN_CAP) { /* header section too large: give up on it */
			drop(fd);
			return -1;
		}
		ssize_t r = recv(fd, c->in + c->in_len, IN_CAP - c->in_len, 0);
		if (r < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN) break;
			drop(fd); /* ECONNRESET from the connect loop's RST close */
			return -1;
		}
		if (r == 0) {
			drop(fd);
			return -1;
		}
		c->in_len += (size_t)r;
		/* answer every complete request in the buffer */
		size_t start = 0;
		for (;;) {
			char *p = memmem(c->in + start, c->in_len - start, "\r\n\r\n", 4);
			if (!p) break;
			size_t end = (size_t)(p - c->in) + 4;
			const char *req = c->in + start;
			size_t n = end - start;
			int close_it = ci_contains(req, n, "\r\nconnection: close") ||
			               (ci_contains(req, n, " HTTP/1.0\r\n") &&
			                !ci_contains(req, n, "\r\nconnection: keep-alive"));
			const char *resp = close_it ? RESP_CLOSE : RESP_KA;
			size_t rl = close_it ? sizeof(RESP_CLOSE) - 1 : sizeof(RESP_KA) - 1;
			if (c->out_len + rl > OUT_CAP) {
				if (flush(fd, c) < 0) return -1;
				if (c->out_len + rl > OUT_CAP) { /* peer not reading: drop it */
					drop(fd);
					return -1;
				}
			}
			memcpy(c->out + c->out_len, resp, rl);
			c->out_len += rl;
			start = end;
			if (close_it) {
				c->closing = 1;
				break;
			}
		}
		if (start) {
			memmove(c->in, c->in + start, c->in_len - start);
			c->in_len -= start;
		}
		if (c->out_len && flush(fd, c) < 0) return -1;
		if ((size_t)r < IN_CAP / 2) break; /* likely drained; level-triggered epoll resumes */
	}
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: %s IP PORT [--ready-file PATH] [--max-seconds N]\n", argv[0]);
		return 2;
	}
	const char *ready = NULL;
	int max_s = 3600;
	for (int i = 3; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--ready-file")) ready = argv[i + 1];
		else if (!strcmp(argv[i], "--max-seconds")) max_s = atoi(argv[i + 1]);
	}
	signal(SIGPIPE, SIG_IGN);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
	uint32_t a = 0;
	if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1 ||
	    ((a = ntohl(sa.sin_addr.s_addr)) >> 24 != 127 && (a & 0xfffe0000u) != 0xc6120000u)) {
		fprintf(stderr, "need a 127.0.0.0/8 or 198.18.0.0/15 IPv4 address, got %s\n", argv[1]);
		return 2;
	}
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(ls, 4096) != 0) {
		perror("bind/listen");
		return 1;
	}
	epfd = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
	epoll_ctl(epfd, EPOLL_CTL_ADD, ls, &ev);
	if (ready) {
		FILE *f = fopen(ready, "w");
		if (f) fclose(f);
	}
	alarm((unsigned)max_s); /* safety net: SIGALRM ends the process */

	struct epoll_event evs[256];
	for (;;) {
		int n = epoll_wait(epfd, evs, 256, -1);
		if (n < 0) {
			if (errno == EINTR) continue;
			perror("epoll_wait");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == ls) {
				for (;;) {
					int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (c < 0) break;
					if (c >= MAX_FD) {
						close(c);
						continue;
					}
					/* Most connect-loop connections are reset before they are accepted:
					 * read at once and close those without touching epoll. */
					struct conn *cn = malloc(sizeof(struct conn)); /* buffers need no zeroing */
					if (!cn) {
						close(c);
						continue;
					}
					cn->in_len = cn->out_len = cn->out_off = 0;
					cn->closing = 0;
					conns[c] = cn;
					if (on_readable(c, cn) < 0) continue;
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
					epoll_ctl(epfd, EPOLL_CTL_ADD, c, &cev);
					if (cn->out_len) { /* a response waits for room */
						cev.events = EPOLLIN | EPOLLOUT;
						epoll_ctl(epfd, EPOLL_CTL_MOD, c, &cev);
					}
				}
				continue;
			}
			struct conn *c = conns[fd];
			if (!c) continue;
			if (evs[i].events & EPOLLOUT) {
				if (flush(fd, c) < 0) continue;
				if (c->out_len == 0) {
					struct epoll_event mev = {.events = EPOLLIN, .data.fd = fd};
					epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &mev);
				}
			}
			if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(fd, c);
		}
	}
}
