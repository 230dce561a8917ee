/*
 * events.h - `hmctl events`, the event bus operations command (events.c).
 */
#ifndef HMCTL_EVENTS_H
#define HMCTL_EVENTS_H

/*
 * Runs `hmctl events ...` against the Redis named by HM_REDIS_ADDR; argv holds the arguments
 * after "events" (argc of them):
 *
 *   streams                                 streams, lengths, groups with lag and pending
 *   dlq list [--daemon D] [--count N]       dead letters (every daemon's without --daemon)
 *   dlq requeue ID|--all --daemon D         back to the stream they came from
 *   replay --daemon D --stream S --from X   group D re-reads S after X (an entry id, "0",
 *                                           a UTC time 2024-05-01T12:00:00Z or @<epoch ms>)
 *
 * Returns the exit status: 0, 1 when Redis fails or an entry is missing, 2 for a usage or
 * configuration error (with a message on stderr).
 */
int hmctl_events(int argc, char **argv);

#endif
