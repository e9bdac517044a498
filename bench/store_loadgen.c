/*
 * Closed-loop write load for the store server, in C so that the client side costs
 * little CPU next to the server it measures (bench/store_bench.py builds and runs it).
 *
 *     store_loadgen HOST PORT CLIENTS SECONDS WARMUP
 *
 * CLIENTS connections on one epoll loop, each with one write_fact in flight: the next
 * request goes out when the previous one's {"ok":true} arrives. Requests are CRC32-framed
 * JSON (u32 BE length | body | u32 BE CRC-32), facts shaped like the Python bench's.
 * After WARMUP seconds it prints "start" and counts acks for SECONDS more, then prints
 * "stop" (the bench samples the server's CPU at both lines), then one result line:
 *
 *     acked N seconds S p50_us X p99_us Y max_us Z
 *
 * Any answer other than {"ok":true} is an error (exit status 2).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char OK_BODY[] = "{\"ok\":true}";
static const char VALUE_HASH[] =
    "abababababababababababababababababababababababababababababababab";
#define OK_SIZE (4 + 11 + 4)
#define MAX_CLIENTS 4096
#define MAX_SAMPLES (1 << 24)

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct client {
    int fd;
    int writer;
    long n;
    double sent_at;
    unsigned char in[OK_SIZE];
    int have;
};

static unsigned char ok_frame[OK_SIZE];
static double *samples;
static long sample_count;

static int request(unsigned char *out, int writer, long n) {
    char *body = (char *)out + 4;
    char payload[121];
    memset(payload, 'x', 120);
    payload[120] = 0;
    int size = snprintf(
        body, 1024,
        "{\"op\":\"write_fact\",\"fact\":{\"id\":\"%08d-0000-4000-8000-%012ld\","
        "\"store\":\"bench%d\",\"key\":\"k%ld\",\"value\":{\"n\":%ld,\"payload\":\"%s\"},"
        "\"value_hash\":\"%s\",\"causation\":null,\"transaction_time\":%.6f,"
        "\"valid_time\":null,\"schema_version\":1,\"producer\":null,\"derivation\":null}}",
        writer, n, writer % 4, n, n, payload, VALUE_HASH, wall());
    put_u32(out, (uint32_t)size);
    put_u32(out + 4 + size, crc32((unsigned char *)body, (size_t)size));
    return size + 8;
}

static void send_request(struct client *c) {
    unsigned char buf[1100];
    int size = request(buf, c->writer, c->n);
    int off = 0;
    while (off < size) { /* a ~400-byte send into an empty socket buffer completes */
        ssize_t w = send(c->fd, buf + off, (size_t)(size - off), MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            perror("send");
            exit(1);
        }
        off += (int)w;
    }
    c->sent_at = now();
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT CLIENTS SECONDS WARMUP\n", argv[0]);
        return 64;
    }
    int clients = atoi(argv[3]);
    double seconds = atof(argv[4]), warmup = atof(argv[5]);
    if (clients < 1 || clients > MAX_CLIENTS) {
        fprintf(stderr, "CLIENTS must be 1..%d\n", MAX_CLIENTS);
        return 64;
    }
    crc_init();
    put_u32(ok_frame, 11);
    memcpy(ok_frame + 4, OK_BODY, 11);
    put_u32(ok_frame + 15, crc32((const unsigned char *)OK_BODY, 11));
    samples = malloc(sizeof(double) * MAX_SAMPLES);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 64;
    }
    int ep = epoll_create1(0);
    struct client *cs = calloc((size_t)clients, sizeof *cs);
    for (int i = 0; i < clients; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            perror("connect");
            return 1;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        cs[i].fd = fd;
        cs[i].writer = i;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    for (int i = 0; i < clients; i++) send_request(&cs[i]);
    double t0 = now();
    double start_at = t0 + warmup, stop_at = start_at + seconds;
    int started = 0;
    struct epoll_event events[256];
    for (;;) {
        double t = now();
        if (!started && t >= start_at) {
            started = 1;
            printf("start\n");
            fflush(stdout);
        }
        if (t >= stop_at) break;
        int n = epoll_wait(ep, events, 256, 50);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int e = 0; e < n; e++) {
            struct client *c = events[e].data.ptr;
            ssize_t r = recv(c->fd, c->in + c->have, (size_t)(OK_SIZE - c->have), 0);
            if (r == 0) {
                fprintf(stderr, "server closed a connection\n");
                return 1;
            }
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                perror("recv");
                return 1;
            }
            c->have += (int)r;
            if (c->have < OK_SIZE) continue;
            if (memcmp(c->in, ok_frame, OK_SIZE) != 0) {
                fprintf(stderr, "unexpected answer: %.*s\n", OK_SIZE - 4, c->in + 4);
                return 2;
            }
            c->have = 0;
            double done = now();
            if (started && done < stop_at && sample_count < MAX_SAMPLES)
                samples[sample_count++] = done - c->sent_at;
            c->n++;
            send_request(c);
        }
    }
    printf("stop\n");
    fflush(stdout);
    qsort(samples, (size_t)sample_count, sizeof(double), compare);
    double p50 = 0, p99 = 0, worst = 0;
    if (sample_count) {
        p50 = samples[sample_count / 2];
        p99 = samples[(long)(sample_count * 0.99)];
        worst = samples[sample_count - 1];
    }
    printf("acked %ld seconds %.6f p50_us %.1f p99_us %.1f max_us %.1f\n", sample_count, seconds,
           p50 * 1e6, p99 * 1e6, worst * 1e6);
    for (int i = 0; i < clients; i++) close(cs[i].fd);
    return 0;
}
