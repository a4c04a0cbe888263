/*
 * floor.h: what the two C floors (floor.c, floor-fdpass.c) share: the canned
 * answers and the count of complete requests in what a read brought.
 */
#include <string.h>
#include <sys/types.h>

#define MAXFD 65536
#define PIPELINE 64

static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                           "Content-Length: 11\r\n\r\nHello World";
static const char bye[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                          "Content-Length: 11\r\nConnection: close\r\n\r\nHello World";
static char out[PIPELINE * sizeof resp]; /* PIPELINE copies of resp, from fill_out */
static unsigned char matched[MAXFD];     /* bytes of "\r\n\r\n" seen so far, per fd */

static void fill_out(void) {
	for (int j = 0; j < PIPELINE; j++)
		memcpy(out + j * (sizeof resp - 1), resp, sizeof resp - 1);
}

/* requests counts the request ends in p[0:n] and carries a partial match. */
static int requests(int fd, const char *p, ssize_t n) {
	static const char end[] = "\r\n\r\n";
	int m = matched[fd], count = 0;
	for (ssize_t i = 0; i < n; i++) {
		m = p[i] == end[m] ? m + 1 : p[i] == '\r';
		if (m == 4) {
			count++;
			m = 0;
		}
	}
	matched[fd] = m;
	return count;
}
