/*
 * token.c - `hmctl token`: mints a development HS256 JWT with the claims hm/auth.h reads
 * (sub, roles, venues, iat, exp, and iss/aud when asked), signed with HM_JWT_HS256_SECRET,
 * for the README, the tests and local runs:
 *
 *   export HM_JWT_HS256_SECRET=$(openssl rand -hex 32)
 *   hmctl token --sub guest-42 --role guest --ttl 15m
 *   hmctl token --sub alice --role staff --venue v-1 --venue v-2 --aud hospitality-mesh
 *
 * Development only: production tokens come from the identity provider, signed RS256/ES256.
 * The secret is read from the environment, never from the command line (where other users
 * could see it in the process list), and never printed.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <jwt.h>

#include "hm/auth.h"
#include "hm/config.h"

#include "token.h"

#define TTL_MAX_MS (30LL * 24 * 3600 * 1000) /* 30 days */

static int usage(void)
{
    fprintf(stderr,
            "usage: hmctl token --sub ID --role guest|staff|admin|service [--role ROLE]...\n"
            "                   [--venue V]... [--ttl 1h] [--kid K] [--iss ISS] [--aud AUD]\n"
            "       signs with HM_JWT_HS256_SECRET (at least %d bytes); prints the token\n",
            HM_AUTH_HS256_SECRET_MIN);
    return 2;
}

/* Adds the roles of "staff" or "staff,admin" to the array; false for an unknown name. */
static bool add_roles(json_t *roles, const char *arg, unsigned *seen)
{
    char buf[128];
    char *save = NULL;

    if (snprintf(buf, sizeof buf, "%s", arg) >= (int)sizeof buf)
        return false;
    for (char *r = strtok_r(buf, ",", &save); r != NULL; r = strtok_r(NULL, ",", &save)) {
        unsigned bit = hm_auth_role_parse(r);

        if (bit == 0)
            return false;
        if (!(*seen & bit))
            json_array_append_new(roles, json_string(r));
        *seen |= bit;
    }
    return *seen != 0;
}

int hmctl_token(int argc, char **argv)
{
    const char *sub = NULL, *kid = NULL, *iss = NULL, *aud = NULL, *ttl = "1h";
    const char *secret = getenv("HM_JWT_HS256_SECRET");
    json_t *claims = json_object(), *roles = json_array(), *venues = json_array();
    unsigned seen = 0;
    int64_t ttl_ms = 0;
    jwt_t *jwt = NULL;
    char *json = NULL, *token = NULL;
    long long now = (long long)time(NULL);
    int rc = 2;

    for (int i = 0; i < argc; i++) {
        const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            usage();
            rc = 0;
            goto out;
        }
        if (val == NULL || val[0] == '\0') {
            fprintf(stderr, "hmctl token: %s needs a value\n", opt);
            goto usage;
        }
        i++;
        if (strcmp(opt, "--sub") == 0) {
            sub = val;
        } else if (strcmp(opt, "--role") == 0) {
            if (!add_roles(roles, val, &seen)) {
                fprintf(stderr, "hmctl token: --role must be guest, staff, admin or service\n");
                goto usage;
            }
        } else if (strcmp(opt, "--venue") == 0) {
            json_array_append_new(venues, json_string(val));
        } else if (strcmp(opt, "--ttl") == 0) {
            ttl = val;
        } else if (strcmp(opt, "--kid") == 0) {
            kid = val;
        } else if (strcmp(opt, "--iss") == 0) {
            iss = val;
        } else if (strcmp(opt, "--aud") == 0) {
            aud = val;
        } else {
            fprintf(stderr, "hmctl token: unknown option %s\n", opt);
            goto usage;
        }
    }
    if (sub == NULL || seen == 0) {
        fprintf(stderr, "hmctl token: --sub and --role are required\n");
        goto usage;
    }
    if (hm_config_parse_duration(ttl, &ttl_ms) != 0 || ttl_ms < 1000 || ttl_ms > TTL_MAX_MS) {
        fprintf(stderr, "hmctl token: --ttl must be a duration between 1s and 720h\n");
        goto usage;
    }
    if (secret == NULL || strlen(secret) < HM_AUTH_HS256_SECRET_MIN) {
        fprintf(stderr, "hmctl token: HM_JWT_HS256_SECRET must be set, at least %d bytes\n",
                HM_AUTH_HS256_SECRET_MIN);
        goto out;
    }

    json_object_set_new(claims, "sub", json_string(sub));
    json_object_set(claims, "roles", roles);
    if (json_array_size(venues) > 0)
        json_object_set(claims, "venues", venues);
    json_object_set_new(claims, "iat", json_integer(now));
    json_object_set_new(claims, "exp", json_integer(now + ttl_ms / 1000));
    if (iss != NULL)
        json_object_set_new(claims, "iss", json_string(iss));
    if (aud != NULL)
        json_object_set_new(claims, "aud", json_string(aud));
    json = json_dumps(claims, JSON_COMPACT);

    rc = 1;
    if (json == NULL || jwt_new(&jwt) != 0 ||
        jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret)) != 0 ||
        (kid != NULL && jwt_add_header(jwt, "kid", kid) != 0) ||
        jwt_add_grants_json(jwt, json) != 0 || (token = jwt_encode_str(jwt)) == NULL) {
        fprintf(stderr, "hmctl token: signing failed\n");
        goto out;
    }
    printf("%s\n", token);
    rc = 0;
    goto out;
usage:
    rc = usage();
out:
    free(token);
    free(json);
    jwt_free(jwt);
    json_decref(venues);
    json_decref(roles);
    json_decref(claims);
    return rc;
}
