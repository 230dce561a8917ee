/*
 * reflection.c - answers of gRPC server reflection (grpc.reflection.v1 and v1alpha, the same
 * wire format) from the descriptor set embedded at build time (common/meson.build: protoc
 * --include_imports over proto/ plus health and reflection; tools/embed-blob.py).
 *
 * At start the set is split into its files (the exact bytes of each FileDescriptorProto are
 * sent, never re-encoded) and an index is built: every fully-qualified symbol (messages and
 * nested messages, enums, services, methods, extensions) -> file, and every extension by
 * extendee and number. The index is immutable afterwards, so any worker answers without locks.
 * server.c runs the stream; this file turns one request message into one response message.
 */
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "hm/log.h"
#include "internal.h"

extern const unsigned char hm__descriptor_set[];
extern const size_t hm__descriptor_set_len;

#define NOT_FOUND        5 /* grpc status codes in ErrorResponse */
#define INVALID_ARGUMENT 3
#define UNIMPLEMENTED    12

typedef struct file {
    const uint8_t *bytes; /* the FileDescriptorProto as embedded */
    size_t len;
    Google__Protobuf__FileDescriptorProto *fd; /* decoded (malloc) */
    int *deps;                                 /* indexes of its dependencies, ndeps */
    size_t ndeps;
} file_t;

typedef struct symbol {
    char *name; /* "pkg.Msg.Nested", owned */
    int file;
} symbol_t;

typedef struct extension {
    const char *extendee; /* "pkg.Msg" without the leading '.', points into the descriptor */
    int32_t number;
    int file;
} extension_t;

static struct index {
    file_t *files;
    size_t nfiles;
    symbol_t *symbols; /* sorted by name */
    size_t nsymbols, capsymbols;
    extension_t *exts;
    size_t nexts, capexts;
    char **services; /* names listed by list_services, owned */
    size_t nservices;
} ix;

/* Reads a varint; 0 on malformed input. */
static size_t varint(const uint8_t *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n && i < 10; i++) {
        v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *out = v;
            return i + 1;
        }
    }
    return 0;
}

static void add_symbol(const char *pkg, const char *scope, const char *name, int file)
{
    if (!name)
        return;
    if (ix.nsymbols == ix.capsymbols) {
        ix.capsymbols = ix.capsymbols ? ix.capsymbols * 2 : 512;
        ix.symbols = realloc(ix.symbols, ix.capsymbols * sizeof(*ix.symbols));
        if (!ix.symbols)
            abort();
    }
    size_t n = strlen(pkg) + strlen(scope) + strlen(name) + 3;
    char *s = hm_xmalloc(n);
    snprintf(s, n, "%s%s%s%s%s", pkg, *pkg && (*scope || *name) ? "." : "", scope,
             *scope ? "." : "", name);
    ix.symbols[ix.nsymbols++] = (symbol_t){s, file};
}

static void add_extension(const Google__Protobuf__FieldDescriptorProto *f, int file)
{
    if (!f->extendee || !f->has_number)
        return;
    if (ix.nexts == ix.capexts) {
        ix.capexts = ix.capexts ? ix.capexts * 2 : 64;
        ix.exts = realloc(ix.exts, ix.capexts * sizeof(*ix.exts));
        if (!ix.exts)
            abort();
    }
    const char *e = f->extendee[0] == '.' ? f->extendee + 1 : f->extendee;
    ix.exts[ix.nexts++] = (extension_t){e, f->number, file};
}

static void index_message(const char *pkg, const char *scope,
                          const Google__Protobuf__DescriptorProto *m, int file)
{
    add_symbol(pkg, scope, m->name, file);
    size_t n = strlen(scope) + strlen(m->name) + 2;
    char *inner = hm_xmalloc(n);
    snprintf(inner, n, "%s%s%s", scope, *scope ? "." : "", m->name);
    for (size_t i = 0; i < m->n_nested_type; i++)
        index_message(pkg, inner, m->nested_type[i], file);
    for (size_t i = 0; i < m->n_enum_type; i++)
        add_symbol(pkg, inner, m->enum_type[i]->name, file);
    for (size_t i = 0; i < m->n_extension; i++) {
        add_symbol(pkg, inner, m->extension[i]->name, file);
        add_extension(m->extension[i], file);
    }
    free(inner);
}

static void index_file(int k)
{
    const Google__Protobuf__FileDescriptorProto *fd = ix.files[k].fd;
    const char *pkg = fd->package ? fd->package : "";
    for (size_t i = 0; i < fd->n_message_type; i++)
        index_message(pkg, "", fd->message_type[i], k);
    for (size_t i = 0; i < fd->n_enum_type; i++)
        add_symbol(pkg, "", fd->enum_type[i]->name, k);
    for (size_t i = 0; i < fd->n_service; i++) {
        const Google__Protobuf__ServiceDescriptorProto *s = fd->service[i];
        add_symbol(pkg, "", s->name, k);
        for (size_t m = 0; m < s->n_method; m++)
            add_symbol(pkg, s->name, s->method[m]->name, k);
    }
    for (size_t i = 0; i < fd->n_extension; i++) {
        add_symbol(pkg, "", fd->extension[i]->name, k);
        add_extension(fd->extension[i], k);
    }
}

static int cmp_symbol(const void *a, const void *b)
{
    return strcmp(((const symbol_t *)a)->name, ((const symbol_t *)b)->name);
}

static int find_file(const char *name)
{
    for (size_t i = 0; i < ix.nfiles; i++)
        if (ix.files[i].fd->name && strcmp(ix.files[i].fd->name, name) == 0)
            return (int)i;
    return -1;
}

static int find_symbol(const char *name)
{
    symbol_t key = {(char *)name, 0};
    symbol_t *s = bsearch(&key, ix.symbols, ix.nsymbols, sizeof(*ix.symbols), cmp_symbol);
    return s ? s->file : -1;
}

int hm__reflection_init(const hm_service_t *const *services, size_t n)
{
    const uint8_t *p = hm__descriptor_set, *end = p + hm__descriptor_set_len;
    size_t cap = 0;
    /* FileDescriptorSet: repeated FileDescriptorProto file = 1 (tag 0x0a, length, bytes). */
    while (p < end) {
        uint64_t len;
        size_t k;
        if (*p != 0x0a || !(k = varint(p + 1, (size_t)(end - p - 1), &len)) ||
            len > (uint64_t)(end - p - 1 - k)) {
            HM_ERROR("reflection: embedded descriptor set is malformed");
            return HM_EINTERNAL;
        }
        if (ix.nfiles == cap) {
            cap = cap ? cap * 2 : 64;
            ix.files = realloc(ix.files, cap * sizeof(*ix.files));
            if (!ix.files)
                abort();
        }
        file_t *f = &ix.files[ix.nfiles];
        memset(f, 0, sizeof(*f));
        f->bytes = p + 1 + k;
        f->len = (size_t)len;
        f->fd = google__protobuf__file_descriptor_proto__unpack(NULL, f->len, f->bytes);
        if (!f->fd) {
            HM_ERROR("reflection: embedded file %zu does not decode", ix.nfiles);
            return HM_EINTERNAL;
        }
        ix.nfiles++;
        p = f->bytes + f->len;
    }
    for (size_t i = 0; i < ix.nfiles; i++) {
        file_t *f = &ix.files[i];
        f->deps = hm_xcalloc(f->fd->n_dependency + 1, sizeof(*f->deps));
        for (size_t d = 0; d < f->fd->n_dependency; d++) {
            int k = find_file(f->fd->dependency[d]);
            if (k >= 0)
                f->deps[f->ndeps++] = k;
        }
        index_file((int)i);
    }
    qsort(ix.symbols, ix.nsymbols, sizeof(*ix.symbols), cmp_symbol);
    /* list_services: what this server answers. */
    static const char *const builtin[] = {"grpc.health.v1.Health",
                                          "grpc.reflection.v1.ServerReflection",
                                          "grpc.reflection.v1alpha.ServerReflection"};
    ix.services = hm_xcalloc(n + 3, sizeof(*ix.services));
    for (size_t i = 0; i < 3; i++)
        ix.services[ix.nservices++] = hm_xstrdup(builtin[i]);
    for (size_t i = 0; i < n; i++) {
        ix.services[ix.nservices++] = hm_xstrdup(services[i]->name);
        if (find_symbol(services[i]->name) < 0)
            HM_WARN("reflection: service %s is not in the embedded descriptor set",
                    services[i]->name);
    }
    HM_DEBUG("reflection: %zu files, %zu symbols, %zu extensions", ix.nfiles, ix.nsymbols,
             ix.nexts);
    return 0;
}

void hm__reflection_deinit(void)
{
    for (size_t i = 0; i < ix.nfiles; i++) {
        google__protobuf__file_descriptor_proto__free_unpacked(ix.files[i].fd, NULL);
        free(ix.files[i].deps);
    }
    for (size_t i = 0; i < ix.nsymbols; i++)
        free(ix.symbols[i].name);
    for (size_t i = 0; i < ix.nservices; i++)
        free(ix.services[i]);
    free(ix.files);
    free(ix.symbols);
    free(ix.exts);
    free(ix.services);
    memset(&ix, 0, sizeof(ix));
}

/* Adds file k and its transitive dependencies (each once) to list (capacity nfiles). */
static void collect(int k, bool *seen, ProtobufCBinaryData *list, size_t *n)
{
    if (seen[k])
        return;
    seen[k] = true;
    list[(*n)++] = (ProtobufCBinaryData){ix.files[k].len, (uint8_t *)ix.files[k].bytes};
    for (size_t d = 0; d < ix.files[k].ndeps; d++)
        collect(ix.files[k].deps[d], seen, list, n);
}

int hm__reflection_answer(const uint8_t *in, size_t inlen, uint8_t **out, size_t *outlen)
{
    Grpc__Reflection__V1__ServerReflectionRequest *req =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, inlen, in);
    if (!req)
        return HM_EINVAL;
    Grpc__Reflection__V1__ServerReflectionResponse resp;
    Grpc__Reflection__V1__FileDescriptorResponse files;
    Grpc__Reflection__V1__ListServiceResponse list;
    Grpc__Reflection__V1__ExtensionNumberResponse numbers;
    Grpc__Reflection__V1__ErrorResponse error;
    grpc__reflection__v1__server_reflection_response__init(&resp);
    resp.valid_host = req->host;
    resp.original_request = req;

    bool *seen = hm_xcalloc(ix.nfiles + 1, sizeof(*seen));
    ProtobufCBinaryData *blobs = hm_xcalloc(ix.nfiles + 1, sizeof(*blobs));
    Grpc__Reflection__V1__ServiceResponse *svc = hm_xcalloc(ix.nservices + 1, sizeof(*svc));
    Grpc__Reflection__V1__ServiceResponse **svcp = hm_xcalloc(ix.nservices + 1, sizeof(*svcp));
    int32_t *nums = hm_xcalloc(ix.nexts + 1, sizeof(*nums));
    int file = -1, code = 0;
    const char *what = NULL;

    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        what = req->file_by_filename;
        file = find_file(what);
        code = file < 0 ? NOT_FOUND : 0;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        what = req->file_containing_symbol;
        file = find_symbol(what);
        code = file < 0 ? NOT_FOUND : 0;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION: {
        const Grpc__Reflection__V1__ExtensionRequest *e = req->file_containing_extension;
        what = e && e->containing_type ? e->containing_type : "";
        for (size_t i = 0; e && i < ix.nexts && file < 0; i++)
            if (ix.exts[i].number == e->extension_number && strcmp(ix.exts[i].extendee, what) == 0)
                file = ix.exts[i].file;
        code = file < 0 ? NOT_FOUND : 0;
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        what = req->all_extension_numbers_of_type;
        if (find_symbol(what) < 0) {
            code = NOT_FOUND;
            break;
        }
        grpc__reflection__v1__extension_number_response__init(&numbers);
        numbers.base_type_name = (char *)what;
        numbers.extension_number = nums;
        for (size_t i = 0; i < ix.nexts; i++)
            if (strcmp(ix.exts[i].extendee, what) == 0)
                nums[numbers.n_extension_number++] = ix.exts[i].number;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
        resp.all_extension_numbers_response = &numbers;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        grpc__reflection__v1__list_service_response__init(&list);
        for (size_t i = 0; i < ix.nservices; i++) {
            grpc__reflection__v1__service_response__init(&svc[i]);
            svc[i].name = ix.services[i];
            svcp[i] = &svc[i];
        }
        list.service = svcp;
        list.n_service = ix.nservices;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp.list_services_response = &list;
        break;
    default:
        code = UNIMPLEMENTED;
        what = "";
        break;
    }
    if (file >= 0) {
        grpc__reflection__v1__file_descriptor_response__init(&files);
        collect(file, seen, blobs, &files.n_file_descriptor_proto);
        files.file_descriptor_proto = blobs;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
        resp.file_descriptor_response = &files;
    }
    char msg[300];
    if (code) {
        grpc__reflection__v1__error_response__init(&error);
        error.error_code = code;
        snprintf(msg, sizeof msg, "%s: %.200s",
                 code == UNIMPLEMENTED ? "request not supported" : "not found", what);
        error.error_message = msg;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        resp.error_response = &error;
    }
    *outlen = protobuf_c_message_get_packed_size(&resp.base);
    *out = hm_xmalloc(*outlen ? *outlen : 1);
    protobuf_c_message_pack(&resp.base, *out);
    free(seen);
    free(blobs);
    free(svc);
    free(svcp);
    free(nums);
    grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
    return 0;
}
