/*
 * suppress.c - the erasure suppression list in Redis (hm/suppress.h).
 */
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "hm/err.h"
#include "hm/log.h"
#include "hm/suppress.h"

void hm_subject_hash(const char *subject, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;

    EVP_Digest(subject, strlen(subject), md, &n, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

bool hm_subject_suppressed(hm_cache_t *cache, const char *subject)
{
    char h[65];
    hm_arena_t arena;
    redisReply *r;
    bool yes = false;

    if (subject == NULL || subject[0] == '\0' || cache == NULL)
        return false;
    hm_subject_hash(subject, h);
    hm_arena_init(&arena, 0);
    r = hm_cache_command(cache, &arena, "SISMEMBER %s %s", HM_SUPPRESS_KEY, h);
    if (r != NULL && r->type == REDIS_REPLY_INTEGER)
        yes = r->integer == 1;
    else
        HM_WARN("suppression list: redis did not answer; event applied");
    hm_arena_deinit(&arena);
    return yes;
}

int hm_suppress_hash(hm_cache_t *cache, const char *hash_hex)
{
    hm_arena_t arena;
    redisReply *r;
    int rc;

    hm_arena_init(&arena, 0);
    r = hm_cache_command(cache, &arena, "SADD %s %s", HM_SUPPRESS_KEY, hash_hex);
    rc = r != NULL && r->type == REDIS_REPLY_INTEGER ? 0 : HM_EUNAVAIL;
    hm_arena_deinit(&arena);
    return rc;
}

int hm_suppress_subject(hm_cache_t *cache, const char *subject)
{
    char h[65];

    if (subject == NULL || subject[0] == '\0')
        return HM_EINVAL;
    hm_subject_hash(subject, h);
    return hm_suppress_hash(cache, h);
}
