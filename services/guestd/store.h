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

/*
 * Inserts a guest and returns its stored profile (arena). HM_EEXIST when the email, phone or
 * idempotency key is taken: *conflict then names which ("email", "phone",
 * "idempotency_key"). Other HM_E* codes as hm_db_exec.
 */
int guest_store_insert(hm_call_t *call, const guest_new_t *g, guest_profile_t **out,
                       const char **conflict);

/* Loads a guest by id or by creation idempotency key; HM_ENOTFOUND when there is none. */
int guest_store_get(hm_call_t *call, const char *guest_id, guest_profile_t **out);
int guest_store_get_by_idempotency_key(hm_call_t *call, const char *key, guest_profile_t **out);

#endif
