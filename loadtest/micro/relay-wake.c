/*
 * loadtest/micro/relay-wake.c: what one relayed message costs a process that sleeps between
 * messages, the way a gateway's pub/sub reader does at 2,000 targeted events a second, and how
 * much more when the process it writes to preempts it (docs/loadtest.md, section 17).
 *
 * Three processes on loopback TCP: a sender writes a 100-byte message every 500 us (paced on
 * the clock, COUNT messages); the relay (this process) waits for each, reads it and writes a
 * 134-byte frame to a reader; the reader reads frames until COUNT have come. Prints the relay's
 * CPU (user + system) per message and its voluntary and involuntary context switches.
 *
 *   gcc -O2 -o /tmp/relay-wake loadtest/micro/relay-wake.c
 *   for i in 1 2 3; do for m in 1 2 3; do for p in normal batch; do
 *     /tmp/relay-wake $m $p 20000; done; done; done
 *
 * MODE 1: the relay sleeps in a blocking recv. 2: it sleeps in epoll_wait (edge-triggered, as
 * tokio does), then reads. 3: as 2, then after each write it walks a 256 KiB table (a stand-in
 * for the bookkeeping an async runtime does between a write and its next sleep).
 * POLICY: the reader's scheduling policy, `normal` or `batch` (SCHED_BATCH: its wake-ups
 * preempt nothing). Loopback only; bounded by COUNT (20,000 take 10 s).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG 100
#define FRAME 134
#define TABLE (256 * 1024)

static int listen_any(int *port) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4) ||
        getsockname(l, (struct sockaddr *)&a, &n)) {
        perror("listen");
        exit(1);
    }
    *port = ntohs(a.sin_port);
    return l;
}

static int dial(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) {
        perror("connect");
        exit(1);
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
}

/* The sender: one message every 500 us on the clock, COUNT of them. */
static void sender(int port, int count) {
    int s = dial(port);
    char m[MSG];
    memset(m, 'm', sizeof m);
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    for (int i = 0; i < count; i++) {
        t.tv_nsec += 500000;
        if (t.tv_nsec >= 1000000000) {
            t.tv_nsec -= 1000000000;
            t.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
        if (send(s, m, sizeof m, 0) != sizeof m) {
            perror("sender send");
            exit(1);
        }
    }
    _exit(0);
}

/* The reader: reads until COUNT frames' bytes have come. */
static void reader(int port, int count, int batch) {
    if (batch) {
        struct sched_param p = {0};
        if (sched_setscheduler(0, SCHED_BATCH, &p)) {
            perror("SCHED_BATCH");
            exit(1);
        }
    }
    int s = dial(port);
    char b[65536];
    long want = (long)count * FRAME, got = 0;
    while (got < want) {
        ssize_t n = recv(s, b, sizeof b, 0);
        if (n <= 0) {
            perror("reader recv");
            exit(1);
        }
        got += n;
    }
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODE(1-3) POLICY(normal|batch) COUNT\n", argv[0]);
        return 2;
    }
    int mode = atoi(argv[1]), batch = strcmp(argv[2], "batch") == 0, count = atoi(argv[3]);
    if (mode < 1 || mode > 3 || (!batch && strcmp(argv[2], "normal")) || count <= 0) {
        fprintf(stderr, "usage: %s MODE(1-3) POLICY(normal|batch) COUNT\n", argv[0]);
        return 2;
    }
    int pin, pout;
    int lin = listen_any(&pin), lout = listen_any(&pout);
    pid_t rd = fork();
    if (rd == 0)
        reader(pout, count, batch);
    int out = accept(lout, NULL, NULL), one = 1;
    setsockopt(out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pid_t sd = fork();
    if (sd == 0)
        sender(pin, count);
    int in = accept(lin, NULL, NULL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.fd = in};
    epoll_ctl(ep, EPOLL_CTL_ADD, in, &ev);
    static unsigned char table[TABLE];
    char frame[FRAME], buf[65536];
    memset(frame, 'f', sizeof frame);
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    long got = 0, want = (long)count * MSG, sum = 0;
    int frames = 0, wait = 1;
    while (got < want) {
        ssize_t n;
        if (mode == 1) {
            n = recv(in, buf, sizeof buf, 0);
        } else {
            /* A read that left room in the buffer took everything: the next wait is epoll's
             * (one recv and one epoll_wait per message, as the gateway's reader does). */
            if (wait) {
                struct epoll_event e;
                epoll_wait(ep, &e, 1, -1);
            }
            n = recv(in, buf, sizeof buf, MSG_DONTWAIT);
            if (n < 0) {
                wait = 1;
                continue;
            }
            wait = n < (ssize_t)sizeof buf;
        }
        if (n <= 0) {
            perror("relay recv");
            return 1;
        }
        got += n;
        /* One frame per whole message that arrived. */
        for (; frames < got / MSG; frames++) {
            if (send(out, frame, sizeof frame, 0) != sizeof frame) {
                perror("relay send");
                return 1;
            }
            if (mode == 3)
                for (int i = 0; i < TABLE; i += 64)
                    sum += table[(i * 7919) % TABLE]++;
        }
    }
    getrusage(RUSAGE_SELF, &r1);
    waitpid(sd, NULL, 0);
    waitpid(rd, NULL, 0);
    double cpu = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
                 ((r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec)) / 1e6;
    /* `sum` is printed into nothing, so the compiler keeps mode 3's walk. */
    printf("mode %d reader %-6s: %.2f us CPU per message, %ld voluntary and %ld involuntary switches "
           "(%d messages)%s\n",
           mode, argv[2], cpu * 1e6 / count, r1.ru_nvcsw - r0.ru_nvcsw, r1.ru_nivcsw - r0.ru_nivcsw, count,
           sum == 42 ? " " : "");
    return 0;
}
