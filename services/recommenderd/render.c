/*
 * render.c - the mustache-style renderer of marketing email (render.h): values, compilation
 * into a flat token list with matched sections, rendering with a context stack, fields.
 */
#include "render.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_DEPTH 32
#define MAX_NAME  64

/* ---- values ---- */

static mk_val_t *val(hm_arena_t *a, mk_type_t t)
{
    mk_val_t *v = hm_arena_zalloc(a, sizeof *v);
    v->type = t;
    return v;
}

mk_val_t *mk_obj(hm_arena_t *a)
{
    return val(a, MK_OBJ);
}

mk_val_t *mk_list(hm_arena_t *a)
{
    return val(a, MK_LIST);
}

mk_val_t *mk_str(hm_arena_t *a, const char *s)
{
    mk_val_t *v = val(a, s ? MK_STR : MK_NULL);
    v->s = s;
    return v;
}

mk_val_t *mk_bool(hm_arena_t *a, bool b)
{
    mk_val_t *v = val(a, MK_BOOL);
    v->b = b;
    return v;
}

static void grow(hm_arena_t *a, mk_val_t *v)
{
    if (v->n < v->cap)
        return;
    size_t cap = v->cap ? v->cap * 2 : 8;
    mk_val_t **items = hm_arena_alloc(a, cap * sizeof *items);
    if (v->n)
        memcpy(items, v->items, v->n * sizeof *items);
    v->items = items;
    if (v->type == MK_OBJ) {
        const char **keys = hm_arena_alloc(a, cap * sizeof *keys);
        if (v->n)
            memcpy(keys, v->keys, v->n * sizeof *keys);
        v->keys = keys;
    }
    v->cap = cap;
}

void mk_set(hm_arena_t *a, mk_val_t *obj, const char *key, mk_val_t *v)
{
    for (size_t i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) {
            obj->items[i] = v;
            return;
        }
    grow(a, obj);
    obj->keys[obj->n] = key;
    obj->items[obj->n++] = v;
}

void mk_set_str(hm_arena_t *a, mk_val_t *obj, const char *key, const char *s)
{
    mk_set(a, obj, key, mk_str(a, s));
}

void mk_push(hm_arena_t *a, mk_val_t *list, mk_val_t *v)
{
    grow(a, list);
    list->items[list->n++] = v;
}

mk_val_t *mk_get(const mk_val_t *obj, const char *key)
{
    if (!obj || obj->type != MK_OBJ)
        return NULL;
    for (size_t i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return obj->items[i];
    return NULL;
}

bool mk_truthy(const mk_val_t *v)
{
    if (!v)
        return false;
    switch (v->type) {
    case MK_STR:
        for (const char *p = v->s; *p; p++)
            if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
                return true;
        return false;
    case MK_BOOL:
        return v->b;
    case MK_LIST:
        return v->n > 0;
    case MK_OBJ:
        return true;
    default:
        return false;
    }
}

/* ---- compilation ---- */

typedef enum tok_kind { T_TEXT, T_VAR, T_RAW, T_SECTION, T_INVERTED, T_END } tok_kind_t;

typedef struct tok {
    tok_kind_t kind;
    const char *s; /* text, or the name (NUL-terminated copy) */
    size_t len;    /* bytes of s */
    size_t end;    /* T_SECTION, T_INVERTED: index of the matching T_END */
    size_t off;    /* offset of the tag in the source (error messages) */
} tok_t;

struct mk_tmpl {
    tok_t *v;
    size_t n;
};

typedef struct compiler {
    hm_arena_t *a;
    const char *src;
    tok_t *v;
    size_t n, cap;
    char *err;
    size_t errlen;
} compiler_t;

static void position(const char *src, size_t off, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off && src[i]; i++) {
        if (src[i] == '\n') {
            (*line)++;
            *col = 1;
        } else if (((unsigned char)src[i] & 0xC0) != 0x80) {
            (*col)++;
        }
    }
}

__attribute__((format(printf, 3, 4))) static int fail(compiler_t *c, size_t off, const char *fmt,
                                                      ...)
{
    int line, col;
    position(c->src, off, &line, &col);
    if (c->err && c->errlen) {
        int k = snprintf(c->err, c->errlen, "line %d, column %d: ", line, col);
        if (k >= 0 && (size_t)k < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + k, c->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return MK_ESYNTAX;
}

static tok_t *push_tok(compiler_t *c, tok_kind_t kind, const char *s, size_t len, size_t off)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 32;
        tok_t *v = hm_arena_alloc(c->a, cap * sizeof *v);
        if (c->n)
            memcpy(v, c->v, c->n * sizeof *v);
        c->v = v;
        c->cap = cap;
    }
    tok_t *t = &c->v[c->n++];
    *t = (tok_t){kind, s, len, 0, off};
    return t;
}

static bool name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '.' || ch == '-';
}

/* Trims [s, s+len) and checks it is a name; the name's copy in *out. */
static int take_name(compiler_t *c, size_t off, const char *s, size_t len, const char **out)
{
    while (len && (*s == ' ' || *s == '\t'))
        s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len == 0)
        return fail(c, off, "empty tag");
    if (len > MAX_NAME)
        return fail(c, off, "name longer than %d characters", MAX_NAME);
    for (size_t i = 0; i < len; i++)
        if (!name_char(s[i]))
            return fail(c, off, "bad character in a name (letters, digits, _ . - only)");
    if (len > 1) {
        bool bad = s[0] == '.' || s[len - 1] == '.';
        for (size_t i = 1; i < len && !bad; i++)
            bad = s[i] == '.' && s[i - 1] == '.';
        if (bad)
            return fail(c, off, "bad dotted name");
    }
    *out = hm_arena_strndup(c->a, s, len);
    return 0;
}

int mk_compile(hm_arena_t *a, const char *src, mk_tmpl_t **out, char *err, size_t errlen)
{
    compiler_t c = {.a = a, .src = src, .err = err, .errlen = errlen};
    size_t open[MAX_DEPTH];
    size_t depth = 0;
    size_t pos = 0; /* start of the pending text */
    const char *p = src;
    if (err && errlen)
        err[0] = '\0';
    for (;;) {
        const char *o = strstr(p, "{{");
        if (!o) {
            size_t len = strlen(src + pos);
            if (len)
                push_tok(&c, T_TEXT, src + pos, len, pos);
            break;
        }
        size_t ts = (size_t)(o - src); /* tag start */
        const char *body = o + 2;
        char sigil = *body;
        const char *close;
        size_t te; /* tag end (after the closing braces) */
        if (sigil == '{') {
            close = strstr(body + 1, "}}}");
            if (!close)
                return fail(&c, ts, "unclosed tag");
            te = (size_t)(close - src) + 3;
        } else {
            close = strstr(body, "}}");
            if (!close)
                return fail(&c, ts, "unclosed tag");
            te = (size_t)(close - src) + 2;
        }
        /* a section, inverted, closing or comment tag alone on its line takes the line */
        bool block = sigil == '#' || sigil == '^' || sigil == '/' || sigil == '!';
        size_t text_end = ts, next = te;
        if (block) {
            size_t ls = ts;
            while (ls > pos && (src[ls - 1] == ' ' || src[ls - 1] == '\t'))
                ls--;
            size_t le = te;
            while (src[le] == ' ' || src[le] == '\t')
                le++;
            bool eol = false;
            if (src[le] == '\n') {
                le++;
                eol = true;
            } else if (src[le] == '\r' && src[le + 1] == '\n') {
                le += 2;
                eol = true;
            } else if (src[le] == '\0') {
                eol = true;
            }
            if ((ls == 0 || src[ls - 1] == '\n') && eol) {
                text_end = ls;
                next = le;
            }
        }
        if (text_end > pos)
            push_tok(&c, T_TEXT, src + pos, text_end - pos, pos);
        const char *name;
        int rc;
        switch (sigil) {
        case '!':
            break;
        case '{':
            if ((rc = take_name(&c, ts, body + 1, (size_t)(close - body - 1), &name)) != 0)
                return rc;
            push_tok(&c, T_RAW, name, strlen(name), ts);
            break;
        case '&':
            if ((rc = take_name(&c, ts, body + 1, (size_t)(close - body - 1), &name)) != 0)
                return rc;
            push_tok(&c, T_RAW, name, strlen(name), ts);
            break;
        case '#':
        case '^':
            if ((rc = take_name(&c, ts, body + 1, (size_t)(close - body - 1), &name)) != 0)
                return rc;
            if (depth == MAX_DEPTH)
                return fail(&c, ts, "sections nested more than %d deep", MAX_DEPTH);
            open[depth++] = c.n;
            push_tok(&c, sigil == '#' ? T_SECTION : T_INVERTED, name, strlen(name), ts);
            break;
        case '/':
            if ((rc = take_name(&c, ts, body + 1, (size_t)(close - body - 1), &name)) != 0)
                return rc;
            if (depth == 0)
                return fail(&c, ts, "closing tag \"%s\" without a section", name);
            if (strcmp(c.v[open[depth - 1]].s, name) != 0)
                return fail(&c, ts, "closing tag \"%s\" inside section \"%s\"", name,
                            c.v[open[depth - 1]].s);
            c.v[open[--depth]].end = c.n;
            push_tok(&c, T_END, name, strlen(name), ts);
            break;
        case '>':
            return fail(&c, ts, "partials are not supported");
        case '=':
            return fail(&c, ts, "delimiter changes are not supported");
        default:
            if ((rc = take_name(&c, ts, body, (size_t)(close - body), &name)) != 0)
                return rc;
            push_tok(&c, T_VAR, name, strlen(name), ts);
            break;
        }
        pos = next;
        p = src + next;
    }
    if (depth > 0) {
        const tok_t *t = &c.v[open[depth - 1]];
        return fail(&c, t->off, "unclosed section \"%s\"", t->s);
    }
    mk_tmpl_t *t = hm_arena_alloc(a, sizeof *t);
    t->v = c.v;
    t->n = c.n;
    *out = t;
    return 0;
}

const char **mk_names(hm_arena_t *a, const mk_tmpl_t *t, size_t *n)
{
    const char **v = hm_arena_alloc(a, (t->n + 1) * sizeof *v);
    size_t k = 0;
    size_t stack[MAX_DEPTH + 1];
    size_t depth = 0; /* sections that push a value (#) around the current token */
    for (size_t i = 0; i < t->n; i++) {
        const tok_t *x = &t->v[i];
        while (depth && stack[depth - 1] == i) /* the pushing section ends here */
            depth--;
        if (x->kind == T_TEXT || x->kind == T_END)
            continue;
        if (depth == 0 && strcmp(x->s, ".") != 0) {
            size_t len = strcspn(x->s, ".");
            bool seen = false;
            for (size_t j = 0; j < k && !seen; j++)
                seen = strlen(v[j]) == len && strncmp(v[j], x->s, len) == 0;
            if (!seen)
                v[k++] = hm_arena_strndup(a, x->s, len);
        }
        if (x->kind == T_SECTION && depth < MAX_DEPTH + 1)
            stack[depth++] = x->end;
    }
    *n = k;
    return v;
}

/* ---- rendering ---- */

typedef struct out {
    hm_arena_t *a;
    char *p;
    size_t n, cap, max;
    size_t steps; /* tokens visited: bounded too, for loops that write nothing */
    int err;
} out_t;

static void put(out_t *o, const char *s, size_t len)
{
    if (o->err || len == 0)
        return;
    if (len > o->max - o->n) {
        o->err = MK_ETOOBIG;
        return;
    }
    if (o->n + len + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->n + len + 1)
            cap *= 2;
        char *p = hm_arena_alloc(o->a, cap);
        if (o->n)
            memcpy(p, o->p, o->n);
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->n, s, len);
    o->n += len;
}

static void put_value(out_t *o, const char *s, mk_mode_t mode)
{
    const char *run = s;
    for (; *s; s++) {
        const char *rep = NULL;
        unsigned char ch = (unsigned char)*s;
        if (mode == MK_HTML) {
            switch (ch) {
            case '&':
                rep = "&amp;";
                break;
            case '<':
                rep = "&lt;";
                break;
            case '>':
                rep = "&gt;";
                break;
            case '"':
                rep = "&quot;";
                break;
            case '\'':
                rep = "&#39;";
                break;
            default:
                break;
            }
        } else if (mode == MK_LINE && (ch < 0x20 || ch == 0x7f)) {
            rep = " ";
        }
        if (rep) {
            put(o, run, (size_t)(s - run));
            put(o, rep, strlen(rep));
            run = s + 1;
        }
    }
    put(o, run, (size_t)(s - run));
}

typedef struct render {
    const mk_tmpl_t *t;
    mk_mode_t mode;
    const mk_val_t *stack[MAX_DEPTH + 2];
    size_t depth;
    out_t o;
} render_t;

/* The value of a (possibly dotted) name: its first segment from the top of the stack down,
 * the rest descended into from there. */
static const mk_val_t *lookup(const render_t *r, const char *name)
{
    if (strcmp(name, ".") == 0)
        return r->depth ? r->stack[r->depth - 1] : NULL;
    char first[MAX_NAME + 1];
    size_t len = strcspn(name, ".");
    memcpy(first, name, len);
    first[len] = '\0';
    const mk_val_t *v = NULL;
    for (size_t i = r->depth; i-- > 0 && !v;)
        v = mk_get(r->stack[i], first);
    for (const char *p = name + len; v && *p == '.'; p += len) {
        p++;
        len = strcspn(p, ".");
        memcpy(first, p, len);
        first[len] = '\0';
        v = mk_get(v, first);
    }
    return v;
}

static void write_val(render_t *r, const mk_val_t *v, mk_mode_t mode)
{
    if (!v)
        return;
    if (v->type == MK_STR)
        put_value(&r->o, v->s, mode);
    else if (v->type == MK_BOOL)
        put(&r->o, v->b ? "true" : "false", v->b ? 4 : 5);
}

static void run(render_t *r, size_t from, size_t to)
{
    for (size_t i = from; i < to && !r->o.err; i++) {
        const tok_t *x = &r->t->v[i];
        if (++r->o.steps > r->o.max + 65536) {
            r->o.err = MK_ETOOBIG;
            break;
        }
        switch (x->kind) {
        case T_TEXT:
            put(&r->o, x->s, x->len);
            break;
        case T_VAR:
            write_val(r, lookup(r, x->s), r->mode);
            break;
        case T_RAW:
            write_val(r, lookup(r, x->s), r->mode == MK_LINE ? MK_LINE : MK_TEXT);
            break;
        case T_SECTION: {
            const mk_val_t *v = lookup(r, x->s);
            if (mk_truthy(v)) {
                if (v->type == MK_LIST) {
                    for (size_t k = 0; k < v->n && !r->o.err; k++) {
                        r->stack[r->depth++] = v->items[k];
                        run(r, i + 1, x->end);
                        r->depth--;
                    }
                } else {
                    r->stack[r->depth++] = v;
                    run(r, i + 1, x->end);
                    r->depth--;
                }
            }
            i = x->end;
            break;
        }
        case T_INVERTED:
            if (!mk_truthy(lookup(r, x->s)))
                run(r, i + 1, x->end);
            i = x->end;
            break;
        case T_END:
            break;
        }
    }
}

int mk_render(hm_arena_t *a, const mk_tmpl_t *t, const mk_val_t *ctx, mk_mode_t mode,
              size_t max_out, char **out, size_t *outlen)
{
    render_t *r = hm_arena_zalloc(a, sizeof *r);
    r->t = t;
    r->mode = mode;
    r->o = (out_t){.a = a, .max = max_out};
    if (ctx)
        r->stack[r->depth++] = ctx;
    run(r, 0, t->n);
    *out = NULL;
    if (outlen)
        *outlen = 0;
    if (r->o.err)
        return r->o.err;
    if (!r->o.p) {
        r->o.p = hm_arena_alloc(a, 1);
    }
    r->o.p[r->o.n] = '\0';
    *out = r->o.p;
    if (outlen)
        *outlen = r->o.n;
    return 0;
}

/* ---- fields, variants ---- */

int mk_apply_fields(hm_arena_t *a, mk_val_t *ctx, const mk_field_t *f, size_t n,
                    const char **missing)
{
    for (size_t i = 0; i < n; i++)
        if (f[i].def && f[i].def[0] && !mk_truthy(mk_get(ctx, f[i].name)))
            mk_set_str(a, ctx, f[i].name, f[i].def);
    for (size_t i = 0; i < n; i++)
        if (f[i].required && !mk_truthy(mk_get(ctx, f[i].name))) {
            if (missing)
                *missing = f[i].name;
            return MK_EMISSING;
        }
    return 0;
}

uint64_t mk_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

int mk_pick(const char *key, const int32_t *weights, size_t n)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += weights[i] > 0 ? (uint64_t)weights[i] : 0;
    if (total == 0)
        return -1;
    uint64_t b = mk_hash(key);
    b ^= b >> 30; /* splitmix64's finalizer: FNV's low bits alone mix poorly */
    b *= 0xbf58476d1ce4e5b9ULL;
    b ^= b >> 27;
    b *= 0x94d049bb133111ebULL;
    b ^= b >> 31;
    b %= total;
    for (size_t i = 0; i < n; i++) {
        uint64_t w = weights[i] > 0 ? (uint64_t)weights[i] : 0;
        if (b < w)
            return (int)i;
        b -= w;
    }
    return -1; /* not reached */
}
