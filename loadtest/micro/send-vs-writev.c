/*
 * loadtest/micro/send-vs-writev.c: the kernel cost of one small WebSocket frame written to a
 * loopback TCP socket as a writev of header and payload, a writev of one buffer, or a send of
 * one buffer (docs/loadtest.md, "each frame encoded once"). The writer runs on core 0, the
 * reader (a child process draining the socket) on core 1; the writer pauses 50 us every 64
 * frames so the reader keeps up. Prints the writer's CPU (user + system) per write.
 *
 *   gcc -O2 -o /tmp/send-vs-writev loadtest/micro/send-vs-writev.c
 *   for i in 1 2 3 4 5 6; do for m in 1 2 3; do taskset -c 0 /tmp/send-vs-writev $m 200000; done; done
 *
 * Mode 1: writev(header, payload); 2: writev(frame); 3: send(frame). Loopback only; bounded by
 * the count given.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODE(1-3) COUNT\n", argv[0]);
        return 2;
    }
    int mode = atoi(argv[1]), n = atoi(argv[2]);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &al)) {
        perror("listen");
        return 1;
    }
    pid_t p = fork();
    if (p == 0) {
        cpu_set_t cs;
        CPU_ZERO(&cs);
        CPU_SET(1, &cs);
        sched_setaffinity(0, sizeof cs, &cs);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (void *)&a, sizeof a)) _exit(1);
        char b[65536];
        while (read(c, b, sizeof b) > 0) {}
        _exit(0);
    }
    int s = accept(l, 0, 0), one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char head[4] = {(char)0x81, 126, 0, 130}, payload[130], frame[134];
    memset(payload, 'x', sizeof payload);
    memcpy(frame, head, 4);
    memcpy(frame + 4, payload, sizeof payload);
    double t0 = cpu_seconds();
    for (int i = 0; i < n; i++) {
        if (mode == 1) {
            struct iovec v[2] = {{head, 4}, {payload, sizeof payload}};
            writev(s, v, 2);
        } else if (mode == 2) {
            struct iovec v[1] = {{frame, sizeof frame}};
            writev(s, v, 1);
        } else {
            send(s, frame, sizeof frame, MSG_NOSIGNAL);
        }
        if (i % 64 == 0) usleep(50);
    }
    printf("mode %d: %.3f us/write\n", mode, (cpu_seconds() - t0) / n * 1e6);
    close(s);
    wait(0);
    return 0;
}
