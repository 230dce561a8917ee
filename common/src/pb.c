/*
 * pb.c - checks on decoded protobuf-c messages (see hm/pb.h).
 */
#include "hm/pb.h"

#include <stddef.h>

static bool field_ok(const ProtobufCFieldDescriptor *f, const void *member)
{
    if (f->type != PROTOBUF_C_TYPE_MESSAGE)
        return true;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        size_t n = *(const size_t *)((const char *)member - f->offset + f->quantifier_offset);
        ProtobufCMessage *const *items = *(ProtobufCMessage *const *const *)member;
        for (size_t i = 0; i < n; i++)
            if (items[i] && !hm_pb_repackable(items[i]))
                return false;
        return true;
    }
    const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)member;
    return !sub || hm_pb_repackable(sub);
}

bool hm_pb_repackable(const ProtobufCMessage *msg)
{
    for (unsigned i = 0; i < msg->n_unknown_fields; i++)
        if (msg->unknown_fields[i].tag == 0)
            return false;
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            /* Only the member the oneof's case names is set. */
            uint32_t which = *(const uint32_t *)((const char *)msg + f->quantifier_offset);
            if (which != f->id)
                continue;
        }
        if (!field_ok(f, (const char *)msg + f->offset))
            return false;
    }
    return true;
}
