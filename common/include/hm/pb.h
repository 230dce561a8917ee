/*
 * hm/pb.h - checks on decoded protobuf-c messages that protobuf-c itself does not make.
 */
#ifndef HM_PB_H
#define HM_PB_H

#include <stdbool.h>

#include <protobuf-c/protobuf-c.h>

/*
 * True when the message (and every nested message) can be packed back into bytes that decode
 * again. protobuf-c 1.4 accepts a field number 0 in a multi-byte tag (80 00) as an unknown
 * field but re-packs it as the single byte 00, which every decoder rejects; the runtime
 * refuses such requests so nothing re-packs them into the outbox or a stream.
 */
bool hm_pb_repackable(const ProtobufCMessage *msg);

#endif
