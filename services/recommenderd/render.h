/*
 * render.h - the mustache-style template renderer of marketing email (docs/marketing.md).
 *
 * Syntax: {{name}} (escaped per mode), {{{name}}} and {{&name}} (never escaped), dotted names
 * ({{item.name}}) and {{.}} (the current value), {{#name}}..{{/name}} (rendered once for a
 * true value, once per element of a list with the element on top of the context stack, never
 * for a false, empty or missing value), {{^name}}..{{/name}} (rendered only for such a value),
 * {{! comment}}. A section, inverted or closing tag or a comment alone on its line takes the
 * line with it. Partials and delimiter changes are refused at compile time.
 *
 * Values form a tree: strings, booleans, lists and objects. Names are looked up from the top of
 * the context stack down; a name found nowhere renders as nothing. Personalization fields
 * (mk_apply_fields) give top-level names defaults and make some required, so that a template
 * never renders "Dear ,".
 *
 * Pure C on top of the arena (no I/O, no globals): shared by recommenderd, its unit test and
 * the fuzz target tests/fuzz/fuzz_template.c.
 */
#ifndef REC_RENDER_H
#define REC_RENDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hm/arena.h"

/* Results of the functions below (0 is success). */
enum {
    MK_ESYNTAX = -1,  /* the template does not compile (message with line and column) */
    MK_ETOOBIG = -2,  /* the output would exceed its limit */
    MK_EMISSING = -3, /* a required field has no value and no default */
};

typedef enum mk_type { MK_NULL, MK_STR, MK_BOOL, MK_LIST, MK_OBJ } mk_type_t;

/* A value of the context tree; all of it lives in one arena. */
typedef struct mk_val {
    mk_type_t type;
    bool b;                /* MK_BOOL */
    const char *s;         /* MK_STR: NUL-terminated, not copied (must outlive rendering) */
    size_t n, cap;         /* MK_LIST elements, MK_OBJ fields (n <= cap) */
    const char **keys;     /* MK_OBJ: field names, parallel to items */
    struct mk_val **items; /* MK_LIST elements, MK_OBJ field values */
} mk_val_t;

mk_val_t *mk_obj(hm_arena_t *a);
mk_val_t *mk_list(hm_arena_t *a);
/* A string value referring to s (NULL makes an MK_NULL value). */
mk_val_t *mk_str(hm_arena_t *a, const char *s);
mk_val_t *mk_bool(hm_arena_t *a, bool b);
/* Sets obj.key to v, replacing an earlier value of key. */
void mk_set(hm_arena_t *a, mk_val_t *obj, const char *key, mk_val_t *v);
/* Shorthand for mk_set(a, obj, key, mk_str(a, s)). */
void mk_set_str(hm_arena_t *a, mk_val_t *obj, const char *key, const char *s);
/* Appends v to a list. */
void mk_push(hm_arena_t *a, mk_val_t *list, mk_val_t *v);
/* obj.key, or NULL when obj is not an object or has no such field. */
mk_val_t *mk_get(const mk_val_t *obj, const char *key);
/* False for a missing, MK_NULL, false, blank (white space only) or empty-list value. */
bool mk_truthy(const mk_val_t *v);

/* A compiled template (arena memory, read-only: may be rendered any number of times). */
typedef struct mk_tmpl mk_tmpl_t;

/*
 * Compiles src (NUL-terminated). 0 with *out, or MK_ESYNTAX with a message ("line 3, column
 * 7: unclosed section \"items\"") in err. Sections nest at most 32 deep; a name is 1..64
 * characters of [A-Za-z0-9_.-].
 */
int mk_compile(hm_arena_t *a, const char *src, mk_tmpl_t **out, char *err, size_t errlen);

/* The top-level names a template refers to (first segment of each tag's name, outside of
 * sections that push a value, once each, in order of appearance). *n is set. */
const char **mk_names(hm_arena_t *a, const mk_tmpl_t *t, size_t *n);

/* How {{name}} values are written. */
typedef enum mk_mode {
    MK_HTML, /* & < > " ' escaped as entities */
    MK_TEXT, /* as they are */
    MK_LINE, /* as they are, with every control character (CR, LF, TAB...) made a space: a
                subject line cannot be split into extra headers */
} mk_mode_t;

/*
 * Renders t with the context ctx (an object; NULL renders every name as nothing). The result
 * is NUL-terminated in the arena, *outlen bytes. MK_ETOOBIG when it would exceed max_out bytes
 * or take more than max_out + 65536 steps (tokens visited: loops over big lists, nested
 * loops writing nothing), with nothing in *out.
 */
int mk_render(hm_arena_t *a, const mk_tmpl_t *t, const mk_val_t *ctx, mk_mode_t mode,
              size_t max_out, char **out, size_t *outlen);

/* A personalization field: a top-level name with a default and a required flag. */
typedef struct mk_field {
    const char *name;
    bool required;
    const char *def; /* "" or NULL: no default */
} mk_field_t;

/*
 * Fills in the fields' defaults where ctx has no true value (mk_truthy) for their name, then
 * checks the required ones: 0, or MK_EMISSING with the first field still without a value in
 * *missing.
 */
int mk_apply_fields(hm_arena_t *a, mk_val_t *ctx, const mk_field_t *f, size_t n,
                    const char **missing);

/* FNV-1a 64 of s: the variant bucket of "guest/campaign/template" (stable across builds). */
uint64_t mk_hash(const char *s);

/* Index of the weighted choice for key among n weights (negative weights count as 0), or -1
 * when every weight is 0. Deterministic: the same key and weights give the same index. */
int mk_pick(const char *key, const int32_t *weights, size_t n);

#endif
