/*
 * guestd.h - guestd's handlers, one group per .c file, listed in main.c's method table.
 */
#ifndef GUESTD_H
#define GUESTD_H

#include "hm/server.h"

/* profile.c */
hm_status_t guest_create_guest(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out);
hm_status_t guest_get_profile(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out);

/* ingest.c */
hm_status_t guest_publish_events(hm_call_t *call, const ProtobufCMessage *in,
                                 ProtobufCMessage **out);

#endif
