/*
 * floor: the reference C floor for scripts/bench.
 *
 *   cc -O2 -o floor scripts/floor.c && ./floor PORT WORKERS
 *
 * WORKERS forked processes, each with its own SO_REUSEPORT listener on
 * 127.0.0.1:PORT and its own epoll loop: one read per readiness event, one
 * canned response per complete request in it (requests end at "\r\n\r\n",
 * which may straddle two reads), all sent in one write; close on EOF, and
 * after answering a read that carries "Connection: close" (as wrk writes it).
 * Accepted sockets stay blocking so that a write always completes; a read
 * only follows EPOLLIN and so never blocks.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

static int listener(int port) {
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) ||
	    bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, SOMAXCONN)) {
		perror("floor: listen");
		exit(2);
	}
	return fd;
}

static void serve(int port) {
	static char in[65536];
	struct epoll_event ev = {.events = EPOLLIN}, evs[256];
	int ls = listener(port), ep = epoll_create1(0);
	fill_out();
	ev.data.fd = ls;
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		for (int i = 0; i < n; i++) {
			int c, fd = evs[i].data.fd, one = 1;
			if (fd == ls) {
				while ((c = accept4(ls, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
					if (c >= MAXFD) {
						close(c);
						continue;
					}
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					matched[c] = 0;
					ev.data.fd = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
				}
				continue;
			}
			ssize_t r = read(fd, in, sizeof in);
			if (r <= 0) {
				close(fd); /* also leaves the epoll set */
				continue;
			}
			int k = requests(fd, in, r);
			int last = k > 0 && memmem(in, r, "\r\nConnection: close\r\n", 21);
			for (k -= last; k > 0; k -= PIPELINE) {
				int batch = k < PIPELINE ? k : PIPELINE;
				if (write(fd, out, batch * (sizeof resp - 1)) < 0)
					break; /* the peer went away; EOF or an error follows */
			}
			if (last && write(fd, bye, sizeof bye - 1) >= 0)
				close(fd); /* else, as above */
		}
	}
}

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: floor PORT WORKERS\n");
		return 2;
	}
	int port = atoi(argv[1]), workers = atoi(argv[2]);
	for (int i = 0; i < workers; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGTERM);
			serve(port);
		}
		if (pid < 0) {
			perror("floor: fork");
			return 1;
		}
	}
	while (wait(NULL) > 0)
		;
	return 1; /* every worker died */
}
