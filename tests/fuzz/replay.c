/*
 * replay.c - main() for the fuzz targets in a build without libFuzzer (gcc, no -Dfuzz): feeds
 * every file named on the command line, and every regular file of every directory named, to
 * LLVMFuzzerTestOneInput once, so the normal test build (under ASan and UBSan) replays the
 * committed corpora and any reproducer as a regression test. Exits 0 when all ran, 1 when a
 * file cannot be read, 2 when no input was found; a failed check aborts.
 */
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Reads a whole file into a heap buffer of exactly its size (at least 1 byte allocated). */
static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;

    if (f == NULL)
        return NULL;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            buf = hm_xrealloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n, f);

        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    /* An exact-size copy, so ASan catches a read one byte past the input. */
    uint8_t *exact = hm_xmalloc(n);

    memcpy(exact, buf, n);
    free(buf);
    *len = n;
    return exact;
}

/* Runs one file; returns 0, or -1 with a message when it cannot be read. */
static int run_file(const char *path)
{
    size_t len = 0;
    uint8_t *data = read_file(path, &len);

    if (data == NULL) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs the regular files of a directory in name order; counts them in *ran. */
static int run_dir(const char *dir, size_t *ran)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t n = 0;
    int rc = 0;

    if (d == NULL) {
        fprintf(stderr, "%s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        names = hm_xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = hm_xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        struct stat st;

        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_file(path) != 0)
                rc = -1;
            else
                (*ran)++;
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    size_t ran = 0;
    int rc = 0;

    for (int i = 1; i < argc; i++) {
        struct stat st;

        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            if (run_dir(argv[i], &ran) != 0)
                rc = 1;
        } else if (run_file(argv[i]) != 0) {
            rc = 1;
        } else {
            ran++;
        }
    }
    printf("%s: %zu inputs replayed\n", argc > 0 ? argv[0] : "replay", ran);
    if (rc == 0 && ran == 0) {
        fprintf(stderr, "no inputs given\n");
        return 2;
    }
    return rc;
}
