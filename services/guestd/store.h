/*
 * store.h - guestd's SQL: guest profiles in Postgres. Personal fields are encrypted and
 * blind-indexed here, at the boundary, so handlers only ever see plaintext in the arena and
 * the database only ever sees ciphertext.
 */
#ifndef GUESTD_STORE_H
#define GUESTD_STORE_H

#include <stdbool.h>

#include "hm/server.h"
#include "hospitality/guest/v1/guest.pb-c.h"

typedef Hospitality__Guest__V1__Profile guest_profile_t;

/* A validated profile to insert; strings are plaintext (arena), "" when absent. */
typedef struct guest_new {
    char guest_id[37];
    int status;
    const char *name, *email, *phone; /* email/phone normalized; "" when absent */
    const char *city, *region, *country;
    bool has_point;
    double latitude, longitude;
    int theme, visibility;
    bool show_on_leaderboards;
    const char *avatar_url, *bio, *language, *time_zone;
    int origin_app;
    const char *idempotency_key; /* NULL when absent */
} guest_new_t;

#include "guestd.h"

/*
 * Inserts a guest and returns its stored profile (arena). HM_EEXIST when the email, phone or
 * idempotency key is taken: *conflict then names which ("email", "phone",
 * "idempotency_key"). Other HM_E* codes as hm_db_exec.
 */
int guest_store_insert(const gd_env_t *e, const guest_new_t *g, guest_profile_t **out,
                       const char **conflict);

/* Loads a guest by id (guest_store_lock: FOR UPDATE) or by creation idempotency key;
 * HM_ENOTFOUND when there is none. */
int guest_store_get(const gd_env_t *e, const char *guest_id, guest_profile_t **out);
int guest_store_lock(const gd_env_t *e, const char *guest_id, guest_profile_t **out);
int guest_store_get_by_idempotency_key(const gd_env_t *e, const char *key, guest_profile_t **out);

/* Writes every mutable field of `p` as version p->version + 1 (HM_ECONFLICT when the stored
 * version is not p->version; HM_EEXIST with *conflict for a taken email or phone); `p` is
 * replaced by the stored row. */
int guest_store_write(const gd_env_t *e, guest_profile_t *p, const char **conflict);

/* Keeps `p` (at its version) in the encrypted history. */
int guest_store_snapshot(const gd_env_t *e, const guest_profile_t *p, char *const *changed,
                         size_t nchanged, int actor_type, const char *actor_id);
int guest_store_history(const gd_env_t *e, const char *guest_id, int limit, long offset,
                        Hospitality__Guest__V1__ProfileVersion ***out, size_t *n);

/* Encryption at the store boundary: AES-GCM bound to `aad`; SQL NULL/"" for empty values. */
int gd_seal(const gd_env_t *e, const char *aad, const void *plain, size_t n, const char **param,
            int *len);
int gd_open(const gd_env_t *e, const PGresult *res, int row, int col, const char *aad,
            unsigned char **out, size_t *n);
/* Keyed blind index of "domain:value" (64 hex), NULL on failure or empty value. */
const char *gd_blind(const gd_env_t *e, const char *domain, const char *value);

/* profile.c: validation of a new profile, and the insert of a guest with its identifiers,
 * first version and guest.profile.created, in the open transaction of e (an RPC's). */
bool guest_validate_new(hm_call_t *call, const Hospitality__Guest__V1__Profile *p, guest_new_t *g,
                        hm_status_t *st);
int guest_insert(const gd_env_t *e, guest_new_t *g, Hospitality__Guest__V1__Identifier *const *ids,
                 size_t nids, guest_profile_t **p, const char **conflict);
/* identity.c: every identifier valid (normalizable, not blocked); false with *st naming it. */
bool guest_validate_identifiers(hm_call_t *call, const char *field,
                                Hospitality__Guest__V1__Identifier *const *ids, size_t n,
                                hm_status_t *st);

/* identity.c: a guest's identifiers (values decrypted). */
int guest_list_identifiers(const gd_env_t *e, const char *guest,
                           Hospitality__Guest__V1__Identifier ***out, size_t *n);
/* apps.c: a guest's app profiles as JSON objects appended to `arr` (fields decrypted). */
int guest_export_apps(const gd_env_t *e, const char *guest, void *json_array);

/* text[] literals. */
char *gd_text_array(hm_arena_t *a, char *const *v, size_t n);
void gd_parse_text_array(hm_arena_t *a, const char *lit, char ***out, size_t *n);

#endif
