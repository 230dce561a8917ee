/*
 * echo_server.c - the benchmark baseline: the simplest correct unary server on the bare gRPC C
 * core, run by tools/bench/bench beside a daemon so the daemon's figures can be read as a
 * fraction of what the transport alone does on the same machine in the same minute.
 *
 * This file is the one deliberate exception to "all grpc_* calls live in common/": a baseline
 * that went through libhm would measure libhm against itself. It is not part of the mesh and no
 * daemon links it.
 *
 * It serves one registered method, /grpc.health.v1.Health/Check, answering SERVING for the
 * service "" (NOT_FOUND for any other name), with the same request and response bytes as the
 * daemons' health check, so one h2load request file drives both. Any other method gets
 * UNIMPLEMENTED at once. Shape: N worker threads, each with its own completion queue and exactly
 * one posted request per method, re-posted as soon as a call has been answered; one batch per
 * call (SEND_INITIAL_METADATA + SEND_MESSAGE + SEND_STATUS_FROM_SERVER + RECV_CLOSE_ON_SERVER);
 * the tag is the call's own struct and the call is freed when that batch completes.
 *
 * Counters (calls answered per status, cancelled calls, UNIMPLEMENTED calls) are printed to
 * stdout on SIGUSR1 and at exit, one line each:
 *   counters seq=K check_ok=N check_error=N check_cancelled=N unimplemented=N
 * where K counts the lines printed so far (1, 2, ...), so a script can wait for its own.
 *
 * SIGTERM/SIGINT: stop accepting, let in-flight calls finish (5 s, then cancel them), shut each
 * worker's queue down once the server's shutdown has completed and the worker holds no call
 * (a batch on a shut queue aborts the process), print the counters, exit 0.
 *
 * Usage: echo_server [-a ADDR] [-t THREADS]   (defaults: $ECHO_ADDR or 127.0.0.1:50090,
 * $ECHO_THREADS or 4). ADDR's port may be 0; the bound port is printed at start:
 *   listening 127.0.0.1:PORT threads N
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#define CHECK_METHOD    "/grpc.health.v1.Health/Check"
#define DEFAULT_ADDR    "127.0.0.1:50090"
#define DEFAULT_THREADS 4
#define MAX_THREADS     256
#define GRACE_MS        5000
#define POLL_MS         200
#define STATUS_CODES    17 /* GRPC_STATUS_OK .. GRPC_STATUS_UNAUTHENTICATED */

/* HealthCheckResponse{status: SERVING}: field 1, varint, value 1. */
static const char serving_response[] = {0x08, 0x01};

typedef enum { KIND_CHECK, KIND_OTHER } call_kind_t;

typedef enum {
    CALL_REQUESTED, /* posted with grpc_server_request_*call, waiting for a client */
    CALL_ANSWERING, /* the answer batch is in flight */
} call_state_t;

struct worker;

/* One call, from the posted request to the completion of its answer batch. Owned by the worker
 * whose queue it was posted on; only that worker's thread touches it. The struct's address is
 * the tag of every event about it. */
typedef struct echo_call {
    call_kind_t kind;
    call_state_t state;
    struct worker *worker;
    grpc_call *call;           /* set by the core when a client arrives; unref when done */
    gpr_timespec deadline;     /* KIND_CHECK: client's deadline (unused: answers at once) */
    grpc_call_details details; /* KIND_OTHER: method and host, owned by the call */
    grpc_metadata_array request_md;
    grpc_byte_buffer *request;  /* KIND_CHECK: the request message, ours; NULL if none */
    grpc_byte_buffer *response; /* ours; destroyed when the answer batch completes */
    grpc_slice details_slice;   /* status message for non-OK answers (static) */
    grpc_status_code status;    /* status being sent */
    int cancelled;              /* RECV_CLOSE_ON_SERVER: 1 if the call did not complete */
} echo_call_t;

/* One worker thread and its completion queue. `live` is touched by the worker thread only; the
 * counters are written by the worker and read by the main thread (relaxed atomics). */
typedef struct worker {
    pthread_t thread;
    grpc_completion_queue *cq;
    int live; /* posted requests + calls being answered */
    uint64_t check_status[STATUS_CODES];
    uint64_t check_cancelled;
    uint64_t unimplemented;
} worker_t;

static grpc_server *server;
static void *check_method; /* registered method handle */
static worker_t *workers;
static int nworkers;
static int stopping;    /* set by main before grpc_server_shutdown_and_notify */
static int server_done; /* set by main once the server's shutdown tag has arrived */
static unsigned print_seq;

static void die(const char *msg)
{
    fprintf(stderr, "echo_server: %s\n", msg);
    exit(1);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p)
        die("out of memory");
    return p;
}

static void count(uint64_t *counter)
{
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

static uint64_t load(const uint64_t *counter)
{
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

static void print_counters(void)
{
    uint64_t ok = 0, error = 0, cancelled = 0, unimplemented = 0;
    for (int i = 0; i < nworkers; i++) {
        worker_t *w = &workers[i];
        ok += load(&w->check_status[GRPC_STATUS_OK]);
        for (int c = 1; c < STATUS_CODES; c++)
            error += load(&w->check_status[c]);
        cancelled += load(&w->check_cancelled);
        unimplemented += load(&w->unimplemented);
    }
    printf("counters seq=%u check_ok=%llu check_error=%llu check_cancelled=%llu "
           "unimplemented=%llu\n",
           ++print_seq, (unsigned long long)ok, (unsigned long long)error,
           (unsigned long long)cancelled, (unsigned long long)unimplemented);
    fflush(stdout);
}

/* ---- requests ---- */

static void post(worker_t *w, call_kind_t kind)
{
    echo_call_t *c = xcalloc(1, sizeof *c);
    grpc_call_error err;

    c->kind = kind;
    c->state = CALL_REQUESTED;
    c->worker = w;
    grpc_metadata_array_init(&c->request_md);
    if (kind == KIND_CHECK) {
        err = grpc_server_request_registered_call(server, check_method, &c->call, &c->deadline,
                                                  &c->request_md, &c->request, w->cq, w->cq, c);
    } else {
        grpc_call_details_init(&c->details);
        err = grpc_server_request_call(server, &c->call, &c->details, &c->request_md, w->cq, w->cq,
                                       c);
    }
    if (err != GRPC_CALL_OK) {
        fprintf(stderr, "echo_server: request_call failed: %d\n", (int)err);
        exit(1);
    }
    w->live++;
}

static void free_call(echo_call_t *c)
{
    if (c->request)
        grpc_byte_buffer_destroy(c->request);
    if (c->response)
        grpc_byte_buffer_destroy(c->response);
    grpc_metadata_array_destroy(&c->request_md);
    if (c->kind == KIND_OTHER)
        grpc_call_details_destroy(&c->details);
    if (c->call)
        grpc_call_unref(c->call);
    free(c);
}

/* ---- Health/Check ---- */

/* Reads a protobuf varint from [*p, end); false when truncated or longer than 10 bytes. */
static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* Decodes a HealthCheckRequest {string service = 1;}: sets *service_len to the length of the
 * service name (last one wins, as in protobuf). Unknown fields are skipped. False if malformed. */
static bool decode_check_request(const uint8_t *p, size_t n, uint64_t *service_len)
{
    const uint8_t *end = p + n;
    *service_len = 0;
    while (p < end) {
        uint64_t key, v;
        if (!read_varint(&p, end, &key))
            return false;
        switch (key & 7) {
        case 0: /* varint */
            if (!read_varint(&p, end, &v))
                return false;
            break;
        case 1: /* fixed64 */
            if (end - p < 8)
                return false;
            p += 8;
            break;
        case 2: /* length-delimited */
            if (!read_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return false;
            if ((key >> 3) == 1)
                *service_len = v;
            p += v;
            break;
        case 5: /* fixed32 */
            if (end - p < 4)
                return false;
            p += 4;
            break;
        default:
            return false;
        }
    }
    return true;
}

/* Picks the status (and response) for a Check call from its request message. */
static void handle_check(echo_call_t *c)
{
    grpc_byte_buffer_reader reader;
    grpc_slice bytes;
    uint64_t service_len;
    bool ok;

    if (!c->request) {
        c->status = GRPC_STATUS_INVALID_ARGUMENT;
        c->details_slice = grpc_slice_from_static_string("missing request message");
        return;
    }
    if (!grpc_byte_buffer_reader_init(&reader, c->request)) {
        c->status = GRPC_STATUS_INTERNAL;
        c->details_slice = grpc_slice_from_static_string("cannot read request");
        return;
    }
    bytes = grpc_byte_buffer_reader_readall(&reader);
    ok = decode_check_request(GRPC_SLICE_START_PTR(bytes), GRPC_SLICE_LENGTH(bytes), &service_len);
    grpc_slice_unref(bytes);
    grpc_byte_buffer_reader_destroy(&reader);

    if (!ok) {
        c->status = GRPC_STATUS_INVALID_ARGUMENT;
        c->details_slice = grpc_slice_from_static_string("malformed HealthCheckRequest");
    } else if (service_len != 0) {
        c->status = GRPC_STATUS_NOT_FOUND;
        c->details_slice = grpc_slice_from_static_string("unknown service");
    } else {
        grpc_slice s = grpc_slice_from_static_buffer(serving_response, sizeof serving_response);
        c->status = GRPC_STATUS_OK;
        c->response = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
    }
}

/* Starts the one answer batch of a call that has just arrived. */
static void answer(echo_call_t *c)
{
    grpc_op ops[4];
    size_t n = 0;
    grpc_call_error err;

    if (c->kind == KIND_CHECK) {
        handle_check(c);
    } else {
        c->status = GRPC_STATUS_UNIMPLEMENTED;
        c->details_slice = grpc_slice_from_static_string("unknown method");
    }

    memset(ops, 0, sizeof ops);
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n++;
    if (c->response) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->response;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.trailing_metadata_count = 0;
    ops[n].data.send_status_from_server.status = c->status;
    ops[n].data.send_status_from_server.status_details =
        c->status == GRPC_STATUS_OK ? NULL : &c->details_slice;
    n++;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
    n++;

    c->state = CALL_ANSWERING;
    err = grpc_call_start_batch(c->call, ops, n, c, NULL);
    if (err != GRPC_CALL_OK) {
        fprintf(stderr, "echo_server: start_batch failed: %d\n", (int)err);
        exit(1);
    }
}

/* The answer batch of a call completed: count it and free it. */
static void answered(echo_call_t *c, bool success)
{
    worker_t *w = c->worker;
    if (c->kind == KIND_OTHER)
        count(&w->unimplemented);
    else if (!success || c->cancelled)
        count(&w->check_cancelled);
    else
        count(&w->check_status[c->status]);
    free_call(c);
    w->live--;
}

/* ---- workers ---- */

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    bool cq_shut = false;

    post(w, KIND_CHECK);
    post(w, KIND_OTHER);
    for (;;) {
        gpr_timespec until =
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(POLL_MS, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(w->cq, until, NULL);

        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE) {
            echo_call_t *c = ev.tag;
            if (c->state == CALL_ANSWERING) {
                answered(c, ev.success != 0);
            } else if (!ev.success) {
                /* A posted request fails only when the server shuts down: not re-posted. */
                free_call(c);
                w->live--;
            } else {
                call_kind_t kind = c->kind;
                answer(c);
                if (!__atomic_load_n(&stopping, __ATOMIC_ACQUIRE))
                    post(w, kind);
            }
        }
        /* Shut the queue only when no batch can be started on it any more (pitfall: a batch on
         * a shut queue aborts the process). */
        if (!cq_shut && w->live == 0 && __atomic_load_n(&server_done, __ATOMIC_ACQUIRE)) {
            grpc_completion_queue_shutdown(w->cq);
            cq_shut = true;
        }
    }
    return NULL;
}

/* ---- main ---- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: echo_server [-a ADDR] [-t THREADS]\n"
            "  -a ADDR     listen address host:port, port 0 = any free port\n"
            "              (default $ECHO_ADDR or " DEFAULT_ADDR ")\n"
            "  -t THREADS  worker threads, one completion queue each, 1..%d\n"
            "              (default $ECHO_THREADS or %d)\n"
            "SIGUSR1 prints the counters; SIGTERM/SIGINT shut down.\n",
            MAX_THREADS, DEFAULT_THREADS);
}

static int parse_threads(const char *s)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > MAX_THREADS) {
        fprintf(stderr, "echo_server: invalid thread count \"%s\" (1..%d)\n", s, MAX_THREADS);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    const char *addr = getenv("ECHO_ADDR");
    const char *threads_env = getenv("ECHO_THREADS");
    grpc_completion_queue *shutdown_cq;
    grpc_server_credentials *creds;
    sigset_t sigs;
    int opt, port, sig, shutdown_tag;
    char bound[300];
    const char *colon;

    nworkers = threads_env && *threads_env ? parse_threads(threads_env) : DEFAULT_THREADS;
    if (!addr || !*addr)
        addr = DEFAULT_ADDR;
    while ((opt = getopt(argc, argv, "a:t:h")) != -1) {
        switch (opt) {
        case 'a':
            addr = optarg;
            break;
        case 't':
            nworkers = parse_threads(optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    /* Block the signals before grpc_init so every thread the core starts inherits the mask;
     * the main thread takes them with sigwait. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    grpc_init();
    server = grpc_server_create(NULL, NULL);
    check_method = grpc_server_register_method(server, CHECK_METHOD, NULL,
                                               GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    if (!check_method)
        die("cannot register " CHECK_METHOD);

    workers = xcalloc((size_t)nworkers, sizeof *workers);
    for (int i = 0; i < nworkers; i++) {
        workers[i].cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(server, workers[i].cq, NULL);
    }
    shutdown_cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(server, shutdown_cq, NULL);

    creds = grpc_insecure_server_credentials_create();
    port = grpc_server_add_http2_port(server, addr, creds);
    grpc_server_credentials_release(creds);
    if (port == 0) {
        fprintf(stderr, "echo_server: cannot listen on %s\n", addr);
        return 1;
    }
    grpc_server_start(server);

    for (int i = 0; i < nworkers; i++) {
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0)
            die("cannot start a worker thread");
    }
    colon = strrchr(addr, ':');
    snprintf(bound, sizeof bound, "%.*s:%d", colon ? (int)(colon - addr) : (int)strlen(addr), addr,
             port);
    printf("listening %s threads %d\n", bound, nworkers);
    fflush(stdout);

    for (;;) {
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig == SIGUSR1) {
            print_counters();
            continue;
        }
        break;
    }

    /* Stop accepting; in-flight calls get GRACE_MS to finish, then are cancelled. */
    __atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
    grpc_server_shutdown_and_notify(server, shutdown_cq, &shutdown_tag);
    grpc_event ev = grpc_completion_queue_next(
        shutdown_cq,
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(GRACE_MS, GPR_TIMESPAN)),
        NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) {
        grpc_server_cancel_all_calls(server);
        ev = grpc_completion_queue_next(shutdown_cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    }
    __atomic_store_n(&server_done, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < nworkers; i++)
        pthread_join(workers[i].thread, NULL);

    grpc_server_destroy(server);
    for (int i = 0; i < nworkers; i++)
        grpc_completion_queue_destroy(workers[i].cq);
    grpc_completion_queue_shutdown(shutdown_cq);
    while (
        grpc_completion_queue_next(shutdown_cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
        GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(shutdown_cq);
    grpc_shutdown();

    print_counters();
    free(workers);
    return 0;
}
