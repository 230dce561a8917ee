/*
 * util.c - small helpers every guestd handler uses: parameterised queries from varargs, column
 * readers, field validation, offset paging and the caller as a history actor.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guestd.h"
#include "hm/auth.h"
#include "hm/id.h"

int gd_q(const gd_env_t *e, const hm_stmt_t *stmt, PGresult **out, ...)
{
    const char *params[GD_MAX_PARAMS] = {0};
    if (stmt->nparams > GD_MAX_PARAMS)
        return HM_EINTERNAL;
    va_list ap;
    va_start(ap, out);
    for (int i = 0; i < stmt->nparams; i++)
        params[i] = va_arg(ap, const char *);
    va_end(ap);
    PGresult *r = NULL;
    int rc = hm_db_exec_arena(e->db, e->arena, stmt, params, NULL, NULL, &r);
    if (out)
        *out = r;
    return rc;
}

const char *gd_str(const PGresult *r, int row, int col)
{
    const char *v = hm_db_get(r, row, col);
    return v ? v : "";
}

int64_t gd_i64(const PGresult *r, int row, int col)
{
    int64_t v = 0;
    hm_db_get_int64(r, row, col, &v);
    return v;
}

double gd_f64(const PGresult *r, int row, int col)
{
    const char *v = hm_db_get(r, row, col);
    return v ? strtod(v, NULL) : 0;
}

bool gd_bool(const PGresult *r, int row, int col)
{
    bool v = false;
    hm_db_get_bool(r, row, col, &v);
    return v;
}

Google__Protobuf__Timestamp *gd_ts(hm_arena_t *a, const PGresult *r, int row, int col)
{
    if (!hm_db_get(r, row, col))
        return NULL;
    return hm_timestamp_from_us(a, gd_i64(r, row, col));
}

const char *gd_i64p(hm_arena_t *a, int64_t v)
{
    return hm_db_param_int64(a, v);
}

const char *gd_usp(hm_arena_t *a, int64_t us)
{
    return hm_arena_printf(a, "%lld.%06lld", (long long)(us / 1000000),
                           (long long)(us % 1000000 < 0 ? -(us % 1000000) : us % 1000000));
}

bool gd_check_guest(hm_call_t *call, const char *field, const char *id, hm_status_t *st)
{
    if (id && hm_uuid_valid(id))
        return true;
    *st = hm_call_invalid(call, field, "must be a UUID");
    return false;
}

bool gd_check_text(hm_call_t *call, const char *field, const char *v, size_t max, hm_status_t *st)
{
    if (!hm_utf8_valid(v)) {
        *st = hm_call_invalid(call, field, "not valid UTF-8");
        return false;
    }
    if (hm_utf8_len(v) > max) {
        *st = hm_call_invalid(call, field, "longer than %zu characters", max);
        return false;
    }
    return true;
}

bool gd_check_enum(hm_call_t *call, const char *field, int v, const ProtobufCEnumDescriptor *d,
                   hm_status_t *st)
{
    if (protobuf_c_enum_descriptor_get_value(d, v))
        return true;
    *st = hm_call_invalid(call, field, "unknown value %d", v);
    return false;
}

bool gd_page(hm_call_t *call, const Hospitality__Common__V1__PageRequest *p, int *size,
             long *offset, hm_status_t *st)
{
    *size = p && p->page_size > 0 ? p->page_size : 50;
    if (p && p->page_size < 0) {
        *st = hm_call_invalid(call, "page.page_size", "must not be negative");
        return false;
    }
    if (*size > 500)
        *size = 500;
    *offset = 0;
    if (p && *p->page_token) {
        char *end;
        *offset = strtol(p->page_token, &end, 10);
        if (*end || *offset < 0) {
            *st = hm_call_invalid(call, "page.page_token", "not a token this service issued");
            return false;
        }
    }
    return true;
}

Hospitality__Common__V1__PageResponse *gd_page_resp(hm_arena_t *a, int got, int size, long offset)
{
    Hospitality__Common__V1__PageResponse *r = hm_arena_alloc(a, sizeof *r);
    hospitality__common__v1__page_response__init(r);
    if (got > size)
        r->next_page_token = hm_arena_printf(a, "%ld", offset + size);
    return r;
}

int gd_actor_type(const hm_call_t *call)
{
    if (!call || !call->principal)
        return HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM;
    unsigned roles = call->principal->roles;
    if (roles & HM_ROLE_ADMIN)
        return HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_ADMIN;
    if (roles & HM_ROLE_STAFF)
        return HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_STAFF;
    if (roles & HM_ROLE_SERVICE)
        return HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SERVICE;
    return HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_GUEST;
}

const char *gd_actor_id(const hm_call_t *call)
{
    return call && call->principal && call->principal->subject ? call->principal->subject : "";
}

Hospitality__Common__V1__Actor *gd_actor(hm_arena_t *a, int type, const char *id)
{
    Hospitality__Common__V1__Actor *x = hm_arena_alloc(a, sizeof *x);
    hospitality__common__v1__actor__init(x);
    x->type = (Hospitality__Common__V1__ActorType)type;
    x->id = hm_arena_strdup(a, id ? id : "");
    return x;
}

hm_status_t gd_not_found(hm_call_t *call, const char *guest_id)
{
    return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "guest %s not found", guest_id);
}

hm_status_t gd_fail(hm_call_t *call, int rc, const char *what)
{
    const char *msg = hm_db_last_message(call->db);
    if ((rc == HM_ECONFLICT || rc == HM_EPRECOND) && msg && *msg)
        return hm_call_error(
            call, rc == HM_ECONFLICT ? HM_CODE_ABORTED : HM_CODE_FAILED_PRECONDITION,
            rc == HM_ECONFLICT ? "VERSION_CONFLICT" : "FAILED_PRECONDITION", "%s: %s", what, msg);
    return hm_call_fail(call, rc, what);
}
