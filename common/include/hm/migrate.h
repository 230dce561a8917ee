/*
 * hm/migrate.h - schema migrations embedded in the binary and applied at start-up.
 *
 * tools/embed-migrations.py turns services/<name>/migrations/NNN_name.up.sql and
 * NNN_name.down.sql into `const hm_migration_t <prefix>_migrations[]` (versions 1..n, in
 * order) and `const size_t <prefix>_nmigrations`. Applied versions are recorded in the table
 * hm_schema_migrations(version, name, checksum, applied_at) of the daemon's database.
 *
 * Rolling updates follow expand/contract (docs/migrations.md): a release only adds to the
 * schema, and what it stops using is dropped a release later. So a binary tolerates a
 * database newer than itself: versions it does not know are logged and left alone.
 */
#ifndef HM_MIGRATE_H
#define HM_MIGRATE_H

#include <stddef.h>
#include <stdio.h>

#include "hm/db.h"

typedef struct hm_migration {
    int version;          /* 1..n without gaps, ascending in the array */
    const char *name;     /* "create_guests" from 001_create_guests.up.sql */
    const char *up;       /* SQL, run with the simple query protocol in one transaction */
    const char *down;     /* SQL undoing `up` */
    const char *checksum; /* SHA-256 of `up`, 64 lower-case hex digits */
} hm_migration_t;

/*
 * Applies the pending migrations of `service`. Takes the session advisory lock
 * pg_advisory_lock(hashtext('hm_migrate:' || service)) so replicas starting together migrate
 * once; creates hm_schema_migrations if absent; then runs each pending migration and records
 * it in one transaction. Runs without statement_timeout (restored afterwards); migrations
 * that cannot run in a transaction (CREATE INDEX CONCURRENTLY) are not supported.
 *
 * Returns 0 (also when nothing was pending or the database is newer), or with a message in
 * err: HM_EPRECOND when an applied migration's checksum differs from the binary's (a
 * migration was edited after release: refuse to start) or a known migration is missing below
 * an applied one; HM_EINVAL for a malformed array; the hm_db error when a migration fails
 * (it is rolled back; those before it stay applied); HM_EUNAVAIL when the connection was lost.
 */
int hm_migrate_up(hm_db_t *db, const char *service, const hm_migration_t *migs, size_t n, char *err,
                  size_t errlen);

/*
 * Runs the down scripts of the applied migrations above target_version, newest first, each in
 * its own transaction, under the same lock. Refuses (HM_EPRECOND) when one of them is unknown
 * to this binary or changed since it was applied: roll back with the binary that applied it.
 * HM_EINVAL for target_version < 0. Other errors as hm_migrate_up().
 */
int hm_migrate_down(hm_db_t *db, const char *service, const hm_migration_t *migs, size_t n,
                    int target_version, char *err, size_t errlen);

/*
 * Prints one line per migration known to the binary or the database: version, name,
 * applied_at and state (applied, pending, changed: checksum differs, unknown: applied by a
 * newer binary). 0 or the hm_db error.
 */
int hm_migrate_status(hm_db_t *db, const char *service, const hm_migration_t *migs, size_t n,
                      FILE *out);

#endif
