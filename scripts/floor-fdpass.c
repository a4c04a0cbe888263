/*
 * floor-fdpass: the C floor of procpool's fdpass design, for scripts/bench.
 *
 *   cc -O2 -o floor-fdpass scripts/floor-fdpass.c && ./floor-fdpass PORT WORKERS [DEFER]
 *
 * A master owns the one listening socket on 127.0.0.1:PORT. On each wake-up
 * it accepts until EAGAIN, deals the connections round-robin to WORKERS
 * children and sends each child its share with one sendmsg(SCM_RIGHTS) over a
 * SOCK_SEQPACKET socketpair, then closes its own copies. Child i is pinned to
 * CPU i (mod the CPUs it may use) and runs an epoll loop: one recvmsg per
 * channel event; a new connection's first request is read and answered at
 * once, and only then (or when nothing has come yet) is the connection added
 * with EPOLLIN|EPOLLRDHUP|EPOLLONESHOT; after each later request it is re-armed
 * with EPOLL_CTL_MOD. One read and one write per event, a canned response per
 * complete request in the read ("\r\n\r\n" may straddle reads), close on EOF
 * and after answering a read that carries "Connection: close". Reads are
 * MSG_DONTWAIT; accepted sockets stay blocking so that a write completes.
 * This is the naive design: every connection wakes the master and then a
 * child, and nothing shares those wake-ups beyond what arrives together.
 * DEFER, when given and > 0, sets TCP_DEFER_ACCEPT (seconds) on the listener:
 * the kernel then queues a connection for accept only once its first bytes
 * have arrived.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "floor.h"

#define MAXKIDS 64
#define BATCH 253 /* SCM_MAX_FD */
#define ARM (EPOLLIN | EPOLLRDHUP | EPOLLONESHOT)

static char in[65536];
static int ep;

/* serve reads once from fd and answers; then arms it (op ADD or MOD) or closes it. */
static void serve(int fd, int op) {
	ssize_t r = recv(fd, in, sizeof in, MSG_DONTWAIT);
	if (r < 0 && errno == EAGAIN)
		goto arm;
	if (r <= 0)
		goto done;
	int k = requests(fd, in, r);
	int last = k > 0 && memmem(in, r, "\r\nConnection: close\r\n", 21);
	for (k -= last; k > 0; k -= PIPELINE) {
		int batch = k < PIPELINE ? k : PIPELINE;
		if (send(fd, out, batch * (sizeof resp - 1), MSG_NOSIGNAL) < 0)
			goto done;
	}
	if (last) {
		send(fd, bye, sizeof bye - 1, MSG_NOSIGNAL);
		goto done;
	}
arm:;
	struct epoll_event ev = {.events = ARM, .data.fd = fd};
	if (epoll_ctl(ep, op, fd, &ev) == 0)
		return;
done:
	close(fd); /* also leaves the epoll set */
}

static void child(int ch, int cpu) {
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof set, &set);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = ch}, evs[256];
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(BATCH * sizeof(int))];
	} cm;
	ep = epoll_create1(0);
	epoll_ctl(ep, EPOLL_CTL_ADD, ch, &ev);
	fill_out();
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd, one = 1;
			if (fd != ch) {
				serve(fd, EPOLL_CTL_MOD);
				continue;
			}
			char b;
			struct iovec iov = {&b, 1};
			struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
			                     .msg_control = cm.buf, .msg_controllen = sizeof cm.buf};
			if (recvmsg(ch, &msg, MSG_DONTWAIT) <= 0) {
				if (errno == EAGAIN)
					continue;
				exit(0); /* the master is gone */
			}
			struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
			if (!h || h->cmsg_type != SCM_RIGHTS)
				continue;
			int *fds = (int *)CMSG_DATA(h), nfd = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (int j = 0; j < nfd; j++) {
				int c = fds[j];
				if (c >= MAXFD) {
					close(c);
					continue;
				}
				setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
				matched[c] = 0;
				serve(c, EPOLL_CTL_ADD); /* the first request, at once */
			}
		}
	}
}

/* give sends child ch the n fds of batch in one message and closes them. */
static void give(int ch, int *batch, int n) {
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(BATCH * sizeof(int))];
	} cm;
	char b = (char)n;
	struct iovec iov = {&b, 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
	                     .msg_control = cm.buf, .msg_controllen = CMSG_SPACE(n * sizeof(int))};
	struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	h->cmsg_len = CMSG_LEN(n * sizeof(int));
	memcpy(CMSG_DATA(h), batch, n * sizeof(int));
	if (sendmsg(ch, &msg, MSG_NOSIGNAL) < 0) { /* blocking: a full channel waits */
		perror("floor-fdpass: sendmsg"); /* a child died */
		exit(1);
	}
	for (int i = 0; i < n; i++)
		close(batch[i]);
}

int main(int argc, char **argv) {
	if (argc < 3 || argc > 4 || atoi(argv[2]) < 1 || atoi(argv[2]) > MAXKIDS) {
		fprintf(stderr, "usage: floor-fdpass PORT WORKERS(1-%d) [DEFER]\n", MAXKIDS);
		return 2;
	}
	int port = atoi(argv[1]), workers = atoi(argv[2]), defer = argc > 3 ? atoi(argv[3]) : 0, one = 1, ch[MAXKIDS], cpus[CPU_SETSIZE], ncpu = 0;
	cpu_set_t allowed;
	sched_getaffinity(0, sizeof allowed, &allowed);
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &allowed))
			cpus[ncpu++] = c;
	for (int i = 0; i < workers; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) {
			perror("floor-fdpass: socketpair");
			return 1;
		}
		pid_t pid = fork();
		if (pid < 0) {
			perror("floor-fdpass: fork");
			return 1;
		}
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGTERM);
			close(sv[0]);
			child(sv[1], cpus[i % ncpu]);
		}
		close(sv[1]);
		ch[i] = sv[0];
	}
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
	    bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, SOMAXCONN) ||
	    (defer > 0 && setsockopt(ls, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer))) {
		perror("floor-fdpass: listen");
		return 2;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
	int mep = epoll_create1(EPOLL_CLOEXEC), rr = 0, c;
	static int batch[MAXKIDS][BATCH], nb[MAXKIDS];
	epoll_ctl(mep, EPOLL_CTL_ADD, ls, &ev);
	for (;;) {
		if (epoll_wait(mep, &ev, 1, -1) < 1)
			continue;
		while ((c = accept4(ls, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
			batch[rr][nb[rr]++] = c;
			if (nb[rr] == BATCH) {
				give(ch[rr], batch[rr], BATCH);
				nb[rr] = 0;
			}
			rr = (rr + 1) % workers;
		}
		for (int i = 0; i < workers; i++)
			if (nb[i]) {
				give(ch[i], batch[i], nb[i]);
				nb[i] = 0;
			}
	}
}
