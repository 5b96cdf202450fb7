/*
 * bench/load.c: a closed-loop load generator for replicad and Redis.
 *
 * One thread, epoll, non-blocking sockets, so that it costs the machine as little as
 * possible and reports what it did cost (its own CPU time from getrusage).  Compiled by
 * bench/suite.py with the machine's `cc -O2` into a temporary directory; never committed
 * as a binary.  Build by hand:  cc -O2 -o /tmp/load bench/load.c
 *
 * Protocols (--proto):
 *   line  replicad's client protocol: "PUT k v\r\n" -> "OK\r\n",
 *         "GET k\r\n" -> "VALUE v\r\n", "PING\r\n" -> "PONG\r\n"
 *   resp  Redis: SET/GET/PING as RESP arrays -> "+OK", "$n\r\nv\r\n", "+PONG"
 * Every reply is parsed and compared byte for byte with the expected one; anything else
 * (an error line, NOTFOUND / $-1, a closed connection, a timeout) counts as an error.
 *
 * Modes (--mode):
 *   persistent  --conns N connections, each keeping --pipeline D requests outstanding
 *               (closed loop: a reply lets the next request go)
 *   oneshot     --conns N concurrent slots, each doing connect, one request, read the
 *               reply, close, and again; the latency includes the connect
 *   burst       open --conns N connections at once, send PING on each as soon as it is
 *               connected, wait for every PONG; reports when all were connected (client
 *               side) and when all had answered (accepted and served by the server)
 *
 * Keys: PUT request number n (counted over the whole run) writes key <prefix><n> with
 * n zero-padded to 9 digits, so every PUT inserts a new key unless --keyspace K is
 * given (then n mod K); GET reads <prefix><n mod K> (--keyspace, default 1000), so the
 * keys must have been written first (e.g. a PUT run with --max-ops K).  The value is
 * --value-bytes bytes of a fixed printable pattern.
 *
 * Timing: requests flow for --warmup seconds unmeasured, then --duration seconds
 * measured (replies received in that window count; latency = reply time - send time),
 * then no new request is sent and the outstanding ones are drained (and verified).
 * --max-ops N stops sending after N requests in all (the window then ends at the last
 * reply).  The result is one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum { PROTO_LINE, PROTO_RESP };
enum { OP_GET, OP_PUT, OP_PING };
enum { MODE_PERSISTENT, MODE_ONESHOT, MODE_BURST };
enum { ST_IDLE, ST_CONNECTING, ST_OPEN };

#define INBUF 65536
#define MAX_PIPELINE 1024
#define ERRTEXT 240

typedef struct {
    int fd;
    int state;
    int index;
    char *out;            /* bytes not yet written */
    size_t out_len, out_off, out_cap;
    char *in;
    size_t in_len;
    double *sent;         /* ring of send times of outstanding requests */
    int head, count;
    double started;       /* oneshot: connect start; burst: connect start */
    double connected;     /* burst: when connect completed */
    double answered;      /* burst: when PONG came (0: not yet) */
    int want_out;         /* EPOLLOUT registered */
    int failed;           /* burst: this connection already counted as an error */
} conn_t;

/* Options */
static const char *host = "127.0.0.1";
static int port = 0;
static int proto = PROTO_LINE;
static int op = OP_GET;
static int mode = MODE_PERSISTENT;
static int nconns = 1;
static int depth = 1;
static double duration = 1.0;
static double warmup = 0.0;
static long long max_ops = 0;
static long long keyspace = 1000;
static int keyspace_set = 0;
static const char *prefix = "k";
static int value_bytes = 100;
static double timeout_s = 10.0;
static long long max_errors = 1000;

/* State */
static int ep;
static struct sockaddr_in addr;
static conn_t *conns;
static char *value;
static char expected[8192];
static size_t expected_len;
static long long issued, completed, errors, measured;
static double t_start, w_start, w_end, last_reply;
static int stopping;
static char error_sample[ERRTEXT + 1];
static float *lat;
static size_t lat_len, lat_cap;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "load: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void) {
    fprintf(stderr,
            "usage: load --port P [--host H] [--proto line|resp] [--op get|put|ping]\n"
            "            [--mode persistent|oneshot|burst] [--conns N] [--pipeline D]\n"
            "            [--duration S] [--warmup S] [--max-ops N] [--keyspace K]\n"
            "            [--prefix P] [--value-bytes B] [--timeout S] [--max-errors N]\n");
    exit(2);
}

static void note_error(const char *fmt, const char *detail, size_t len) {
    errors++;
    if (error_sample[0])
        return;
    char clean[ERRTEXT + 1];
    size_t j = 0;
    for (size_t i = 0; detail && i < len && j < 120; i++) {
        unsigned char c = (unsigned char)detail[i];
        clean[j++] = (c >= 32 && c < 127 && c != '"' && c != '\\') ? (char)c : '.';
    }
    clean[j] = 0;
    snprintf(error_sample, sizeof error_sample, fmt, clean);
}

static void record(double latency) {
    if (lat_len == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 65536;
        lat = realloc(lat, lat_cap * sizeof *lat);
        if (!lat)
            die("realloc");
    }
    lat[lat_len++] = (float)(latency * 1e6);
}

static int can_issue(void) {
    if (stopping)
        return 0;
    if (max_ops && issued >= max_ops)
        return 0;
    if (errors >= max_errors)
        return 0;
    return 1;
}

/* The request for number n, appended to c->out. */
static void out_reserve(conn_t *c, size_t extra) {
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
    }
    if (c->out_len + extra > c->out_cap) {
        if (c->out_off) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        while (c->out_len + extra > c->out_cap)
            c->out_cap = c->out_cap ? c->out_cap * 2 : 4096;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out)
            die("realloc");
    }
}

static void append_request(conn_t *c, long long n) {
    char key[128];
    long long k = n;
    if (op == OP_GET || keyspace_set)
        k = n % keyspace;
    int klen = snprintf(key, sizeof key, "%s%09lld", prefix, k);
    out_reserve(c, (size_t)klen + (size_t)value_bytes + 64);
    char *p = c->out + c->out_len;
    int w = 0;
    if (proto == PROTO_LINE) {
        if (op == OP_PING) {
            w = sprintf(p, "PING\r\n");
        } else if (op == OP_GET) {
            w = sprintf(p, "GET %s\r\n", key);
        } else {
            w = sprintf(p, "PUT %s ", key);
            memcpy(p + w, value, (size_t)value_bytes);
            w += value_bytes;
            p[w++] = '\r';
            p[w++] = '\n';
        }
    } else {
        if (op == OP_PING) {
            w = sprintf(p, "*1\r\n$4\r\nPING\r\n");
        } else if (op == OP_GET) {
            w = sprintf(p, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", klen, key);
        } else {
            w = sprintf(p, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n", klen, key, value_bytes);
            memcpy(p + w, value, (size_t)value_bytes);
            w += value_bytes;
            p[w++] = '\r';
            p[w++] = '\n';
        }
    }
    c->out_len += (size_t)w;
}

static void build_expected(void) {
    char *e = expected;
    if (proto == PROTO_LINE) {
        if (op == OP_PING)
            expected_len = (size_t)sprintf(e, "PONG\r\n");
        else if (op == OP_PUT)
            expected_len = (size_t)sprintf(e, "OK\r\n");
        else {
            int w = sprintf(e, "VALUE ");
            memcpy(e + w, value, (size_t)value_bytes);
            w += value_bytes;
            e[w++] = '\r';
            e[w++] = '\n';
            expected_len = (size_t)w;
        }
    } else {
        if (op == OP_PING)
            expected_len = (size_t)sprintf(e, "+PONG\r\n");
        else if (op == OP_PUT)
            expected_len = (size_t)sprintf(e, "+OK\r\n");
        else {
            int w = sprintf(e, "$%d\r\n", value_bytes);
            memcpy(e + w, value, (size_t)value_bytes);
            w += value_bytes;
            e[w++] = '\r';
            e[w++] = '\n';
            expected_len = (size_t)w;
        }
    }
}

/* Length of the first complete reply in buf, 0 if incomplete. */
static size_t reply_length(const char *buf, size_t len) {
    const char *nl = memchr(buf, '\n', len);
    if (!nl)
        return 0;
    size_t line = (size_t)(nl - buf) + 1;
    if (proto == PROTO_RESP && buf[0] == '$') {
        long n = strtol(buf + 1, NULL, 10);
        if (n >= 0) {
            size_t total = line + (size_t)n + 2;
            return total <= len ? total : 0;
        }
    }
    return line;
}

static void set_events(conn_t *c, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl mod");
    c->want_out = want_out;
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = ST_IDLE;
    c->in_len = 0;
    c->out_len = c->out_off = 0;
    c->head = c->count = 0;
}

static void conn_open(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->started = now();
    c->in_len = 0;
    c->out_len = c->out_off = 0;
    c->head = c->count = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        note_error("connect failed: %s", strerror(errno), strlen(strerror(errno)));
        close(fd);
        c->fd = -1;
        c->state = ST_IDLE;
        return;
    }
    c->state = ST_CONNECTING;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl add");
    c->want_out = 1;
}

/* A connection failed: its outstanding requests are errors. */
static void conn_fail(conn_t *c, const char *why) {
    if (mode == MODE_BURST) {   /* one error per connection at most */
        if (!c->failed)
            note_error("%s", why, strlen(why));
        c->failed = 1;
        conn_close(c);
        return;
    }
    long long lost = c->count;
    if (c->state == ST_CONNECTING && mode != MODE_PERSISTENT)
        lost = lost ? lost : 1;
    if (lost == 0)
        lost = 1;
    for (long long i = 0; i < lost; i++)
        note_error("%s", why, strlen(why));
    conn_close(c);
}

static int flush_out(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            conn_fail(c, strerror(errno));
            return -1;
        }
        c->out_off += (size_t)w;
    }
    int pending = c->out_off < c->out_len;
    if (pending != c->want_out)
        set_events(c, pending);
    return 0;
}

/* Fill the pipeline of an open persistent connection (or the one request of a oneshot). */
static int fill(conn_t *c) {
    int limit = mode == MODE_PERSISTENT ? depth : 1;
    double t = now();
    int added = 0;
    while (c->count < limit && can_issue()) {
        if (mode == MODE_BURST) {
            out_reserve(c, 64);
            c->out_len += (size_t)sprintf(c->out + c->out_len, proto == PROTO_LINE
                                          ? "PING\r\n" : "*1\r\n$4\r\nPING\r\n");
        } else {
            append_request(c, issued);
        }
        issued++;
        c->sent[(c->head + c->count) % MAX_PIPELINE] = t;
        c->count++;
        added++;
    }
    if (added)
        return flush_out(c);
    return 0;
}

static void start_slot(conn_t *c) {
    /* oneshot: a new connection per request */
    if (can_issue())
        conn_open(c);
}

static void on_reply(conn_t *c, const char *r, size_t len, double t) {
    double sent = c->sent[c->head];
    c->head = (c->head + 1) % MAX_PIPELINE;
    c->count--;
    completed++;
    last_reply = t;
    int ok = len == expected_len && memcmp(r, expected, len) == 0;
    if (!ok) {
        if (mode != MODE_BURST || !c->failed)
            note_error("unexpected reply: %s", r, len);
        c->failed = 1;
        return;
    }
    if (mode == MODE_BURST) {
        c->answered = t;
        return;
    }
    if (t >= w_start && t <= w_end) {
        measured++;
        record(t - (mode == MODE_ONESHOT ? c->started : sent));
    }
}

static void on_readable(conn_t *c) {
    ssize_t r = read(c->fd, c->in + c->in_len, INBUF - c->in_len);
    if (r == 0) {
        conn_fail(c, "connection closed by the server");
        if (mode == MODE_PERSISTENT && can_issue())
            conn_open(c);
        else if (mode == MODE_ONESHOT)
            start_slot(c);
        return;
    }
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        conn_fail(c, strerror(errno));
        if (mode == MODE_PERSISTENT && can_issue())
            conn_open(c);
        else if (mode == MODE_ONESHOT)
            start_slot(c);
        return;
    }
    c->in_len += (size_t)r;
    double t = now();
    size_t off = 0;
    for (;;) {
        size_t n = reply_length(c->in + off, c->in_len - off);
        if (n == 0)
            break;
        if (c->count == 0) {
            note_error("reply without a request: %s", c->in + off, n);
        } else {
            on_reply(c, c->in + off, n, t);
        }
        off += n;
    }
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    if (c->in_len == INBUF) {
        conn_fail(c, "reply line over 64 KiB");
        return;
    }
    if (mode == MODE_ONESHOT) {
        if (c->count == 0 && off) {
            conn_close(c);
            start_slot(c);
        }
        return;
    }
    if (mode == MODE_PERSISTENT)
        fill(c);
}

static void on_writable(conn_t *c) {
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            char why[128];
            snprintf(why, sizeof why, "connect failed: %s", strerror(err));
            conn_fail(c, why);
            if (mode == MODE_ONESHOT)
                start_slot(c);
            return;
        }
        c->state = ST_OPEN;
        c->connected = now();
        if (mode == MODE_BURST) {
            /* issue the PING regardless of can_issue: every connection gets one */
            out_reserve(c, 64);
            c->out_len += (size_t)sprintf(c->out + c->out_len, proto == PROTO_LINE
                                          ? "PING\r\n" : "*1\r\n$4\r\nPING\r\n");
            issued++;
            c->sent[0] = c->connected;
            c->count = 1;
            flush_out(c);
            return;
        }
        if (fill(c) == 0 && c->count == 0 && mode == MODE_ONESHOT) {
            conn_close(c);   /* nothing to send any more */
            return;
        }
        if (c->fd >= 0 && c->out_off == c->out_len && c->want_out)
            set_events(c, 0);
        return;
    }
    flush_out(c);
}

static void check_timeouts(double t) {
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->fd < 0)
            continue;
        double since = c->count ? c->sent[c->head] : c->started;
        if (mode == MODE_BURST && c->answered)
            continue;
        if ((c->count || c->state == ST_CONNECTING) && t - since > timeout_s) {
            conn_fail(c, "timeout: no reply");
            if (mode == MODE_PERSISTENT && can_issue())
                conn_open(c);
            else if (mode == MODE_ONESHOT)
                start_slot(c);
        }
    }
}

static int outstanding(void) {
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0 && (conns[i].count || conns[i].state == ST_CONNECTING))
            return 1;
    return 0;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double pct(const float *v, size_t n, double p) {
    if (n == 0)
        return -1;
    double rank = (double)(n - 1) * p / 100.0;
    size_t lo = (size_t)rank;
    size_t hi = lo + 1 < n ? lo + 1 : n - 1;
    return v[lo] + (v[hi] - v[lo]) * (rank - (double)lo);
}

static void print_latency(const char *name, float *v, size_t n) {
    qsort(v, n, sizeof *v, cmp_float);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    printf("\"%s\": {\"n\": %zu, \"mean_us\": %.3f, \"p50_us\": %.3f, \"p90_us\": %.3f, "
           "\"p99_us\": %.3f, \"p999_us\": %.3f, \"max_us\": %.3f}",
           name, n, n ? sum / (double)n : -1.0, pct(v, n, 50), pct(v, n, 90), pct(v, n, 99),
           pct(v, n, 99.9), n ? (double)v[n - 1] : -1.0);
}

static double arg_double(const char *s) {
    char *end;
    double d = strtod(s, &end);
    if (*end)
        usage();
    return d;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--port"))
            port = atoi(v);
        else if (!strcmp(a, "--proto"))
            proto = !strcmp(v, "resp") ? PROTO_RESP : !strcmp(v, "line") ? PROTO_LINE : -1;
        else if (!strcmp(a, "--op"))
            op = !strcmp(v, "get") ? OP_GET : !strcmp(v, "put") ? OP_PUT
                 : !strcmp(v, "ping") ? OP_PING : -1;
        else if (!strcmp(a, "--mode"))
            mode = !strcmp(v, "persistent") ? MODE_PERSISTENT : !strcmp(v, "oneshot")
                   ? MODE_ONESHOT : !strcmp(v, "burst") ? MODE_BURST : -1;
        else if (!strcmp(a, "--conns"))
            nconns = atoi(v);
        else if (!strcmp(a, "--pipeline"))
            depth = atoi(v);
        else if (!strcmp(a, "--duration"))
            duration = arg_double(v);
        else if (!strcmp(a, "--warmup"))
            warmup = arg_double(v);
        else if (!strcmp(a, "--max-ops"))
            max_ops = atoll(v);
        else if (!strcmp(a, "--keyspace")) {
            keyspace = atoll(v);
            keyspace_set = 1;
        } else if (!strcmp(a, "--prefix"))
            prefix = v;
        else if (!strcmp(a, "--value-bytes"))
            value_bytes = atoi(v);
        else if (!strcmp(a, "--timeout"))
            timeout_s = arg_double(v);
        else if (!strcmp(a, "--max-errors"))
            max_errors = atoll(v);
        else
            usage();
    }
    if (port <= 0 || proto < 0 || op < 0 || mode < 0 || nconns < 1 || depth < 1 ||
        depth > MAX_PIPELINE || keyspace < 1 || value_bytes < 0 || value_bytes > 4000 ||
        strlen(prefix) > 64 || timeout_s <= 0)
        usage();
    if (mode != MODE_PERSISTENT)
        depth = 1;
    if (mode == MODE_BURST)
        op = OP_PING;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "load: --host takes an IPv4 address\n");
        return 2;
    }
    value = malloc((size_t)value_bytes + 1);
    for (int i = 0; i < value_bytes; i++)
        value[i] = (char)('a' + i % 26);
    build_expected();

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    conns = calloc((size_t)nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].index = i;
        conns[i].in = malloc(INBUF);
        conns[i].sent = calloc(MAX_PIPELINE, sizeof(double));
    }

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    t_start = now();
    if (mode == MODE_BURST) {
        w_start = t_start;
        w_end = t_start + timeout_s;
    } else {
        w_start = t_start + warmup;
        w_end = duration > 0 ? w_start + duration : 1e300;
    }
    for (int i = 0; i < nconns; i++)
        conn_open(&conns[i]);

    struct epoll_event *events = calloc((size_t)nconns, sizeof *events);
    double next_check = t_start + 0.1;
    double drain_deadline = 0;
    long long answered = 0;
    for (;;) {
        double t = now();
        if (mode == MODE_BURST) {
            answered = 0;
            for (int i = 0; i < nconns; i++)
                answered += conns[i].answered > 0;
            if (answered + errors >= nconns || t > w_end)
                break;
        } else if (!stopping && (t >= w_end || (max_ops && issued >= max_ops) ||
                                 errors >= max_errors)) {
            stopping = 1;
            drain_deadline = t + timeout_s;
        }
        if (stopping && (!outstanding() || t > drain_deadline))
            break;
        if (t >= next_check) {
            if (mode != MODE_BURST)
                check_timeouts(t);
            next_check = t + 0.1;
        }
        int n = epoll_wait(ep, events, nconns, 10);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            int fd = c->fd;
            if (fd < 0)
                continue;
            uint32_t e = events[i].events;
            if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
                if (c->state == ST_CONNECTING || (e & EPOLLOUT))
                    on_writable(c);
                if (c->fd != fd)   /* closed (and maybe reopened): a new socket */
                    continue;
            }
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(c);
        }
    }
    double t_end = now();
    getrusage(RUSAGE_SELF, &ru1);
    double user = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                  (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) * 1e-6;
    double sys = (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1e-6;

    static const char *mode_names[] = {"persistent", "oneshot", "burst"};
    static const char *op_names[] = {"get", "put", "ping"};
    printf("{\"mode\": \"%s\", \"proto\": \"%s\", \"op\": \"%s\", \"conns\": %d, "
           "\"pipeline\": %d, ", mode_names[mode], proto == PROTO_LINE ? "line" : "resp",
           op_names[op], nconns, depth);
    if (mode == MODE_BURST) {
        float *open_t = malloc(sizeof(float) * (size_t)nconns);
        float *answer_t = malloc(sizeof(float) * (size_t)nconns);
        size_t nopen = 0, nanswer = 0;
        double all_open = 0, all_answered = 0;
        for (int i = 0; i < nconns; i++) {
            conn_t *c = &conns[i];
            if (c->connected > 0) {
                open_t[nopen++] = (float)((c->connected - t_start) * 1e6);
                if (c->connected - t_start > all_open)
                    all_open = c->connected - t_start;
            }
            if (c->answered > 0) {
                answer_t[nanswer++] = (float)((c->answered - t_start) * 1e6);
                if (c->answered - t_start > all_answered)
                    all_answered = c->answered - t_start;
            }
        }
        printf("\"connected\": %zu, \"answered\": %zu, \"all_connected_s\": %.6f, "
               "\"all_answered_s\": %.6f, \"complete\": %s, ", nopen, nanswer, all_open,
               all_answered, nanswer == (size_t)nconns ? "true" : "false");
        print_latency("connect_time", open_t, nopen);
        printf(", ");
        print_latency("answer_time", answer_t, nanswer);
        printf(", ");
    } else {
        double w_last = w_end < 1e299 ? w_end : last_reply;
        if (last_reply < w_last && (max_ops && issued >= max_ops))
            w_last = last_reply;
        double window = w_last - w_start;
        printf("\"ops\": %lld, \"window_s\": %.6f, \"rate\": %.3f, ", measured, window,
               window > 0 ? (double)measured / window : 0.0);
        print_latency("latency", lat, lat_len);
        printf(", ");
    }
    printf("\"issued\": %lld, \"completed\": %lld, \"errors\": %lld, \"error_sample\": \"%s\", "
           "\"wall_s\": %.6f, \"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f}\n",
           issued, completed, errors, error_sample, t_end - t_start, user, sys);
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0)
            close(conns[i].fd);
    return 0;
}
