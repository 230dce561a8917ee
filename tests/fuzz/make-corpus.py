#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/ as seed-* files,
replacing earlier seed-* files and leaving every other file (reproducers kept as regression
inputs) alone. Deterministic: running it twice gives the same bytes.

  fuzz_decode  one populated message per request type, behind the selector byte fuzz_decode.c
               computes the same way: services sorted by full name, methods in declaration
               order, each input type counted at its first appearance.
  fuzz_events  one Event envelope per payload type (type from `option (event_type)`), with a
               populated payload, plus an unknown type and an empty envelope.
  fuzz_text    strings for the UTF-8, UUID, email, phone, JSON and duration checks.

Needs Debian's protoc and python3-protobuf; run from anywhere:
  /usr/bin/python3 tests/fuzz/make-corpus.py
"""
import os
import subprocess
import sys
import tempfile
import uuid

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# The --proto_path list of the root meson.build (proto_cmd).
PROTO_PATHS = [
    os.path.join(ROOT, 'proto'),
    '/usr/share/grpc-proto',
    '/usr/share/gocode/src/github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis',
    '/usr/include',
]
HEALTH = 'grpc/health/v1/health.proto'
MAX_DEPTH = 4


def load_pool():
    """Compiles our .proto files and health.proto into a descriptor pool."""
    ours = []
    for d, _, files in os.walk(os.path.join(ROOT, 'proto', 'hospitality')):
        ours += [os.path.relpath(os.path.join(d, f), PROTO_PATHS[0])
                 for f in files if f.endswith('.proto')]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'set.pb')
        subprocess.run(['protoc', '--include_imports', '--descriptor_set_out=' + out] +
                       ['--proto_path=' + p for p in PROTO_PATHS] + sorted(ours) + [HEALTH],
                       check=True)
        fds = descriptor_pb2.FileDescriptorSet.FromString(open(out, 'rb').read())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return pool, fds, sorted(ours) + [HEALTH]


def string_value(field, n):
    """A plausible value for a string field, chosen by its name; n varies repeated values."""
    name = field.name
    if name == 'id' or name.endswith('_id') or name == 'subject':
        return str(uuid.uuid5(uuid.NAMESPACE_URL, '%s/%d' % (field.full_name, n)))
    if 'email' in name:
        return ' Guest.Name@Example.COM '
    if 'phone' in name:
        return '+1 (555) 010-0199'
    if name == 'traceparent':
        return '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
    if 'currency' in name:
        return 'EUR'
    if name.endswith('country_code'):
        return 'PT'
    if 'url' in name:
        return 'https://example.com/x?a=1&b=%22'
    if name.endswith('_token'):
        return 'dG9rZW4'
    if 'name' in name:
        return 'Café Zürich'
    return '%s %d ✓' % (name, n)


def scalar_value(field, n):
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return string_value(field, n)
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes([1, 2, 3, n & 0xff])
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 4.5 + n
    if t == FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values
        return values[min(1 + n, len(values) - 1)].number
    return 2 + n  # every integer type


def fill(msg, depth=0):
    """Sets every field of msg (the first member of each oneof), recursing into messages."""
    d = msg.DESCRIPTOR
    if d.full_name == 'google.protobuf.Timestamp':
        msg.seconds, msg.nanos = 1732000000, 123000000
        return
    if d.full_name == 'google.protobuf.Duration':
        msg.seconds = 90
        return
    if d.full_name == 'google.protobuf.FieldMask':
        msg.paths.append('display_name')
        return
    for field in d.fields:
        if field.containing_oneof is not None and field.containing_oneof.fields[0] is not field:
            continue
        is_msg = field.type == FieldDescriptor.TYPE_MESSAGE
        if field.label == FieldDescriptor.LABEL_REPEATED:
            if is_msg and field.message_type.GetOptions().map_entry:
                entry = field.message_type
                key = scalar_value(entry.fields_by_name['key'], 0)
                value_field = entry.fields_by_name['value']
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    if depth < MAX_DEPTH:
                        fill(getattr(msg, field.name)[key], depth + 1)
                else:
                    getattr(msg, field.name)[key] = scalar_value(value_field, 0)
            elif is_msg:
                if depth < MAX_DEPTH:
                    for _ in range(2):
                        fill(getattr(msg, field.name).add(), depth + 1)
            else:
                getattr(msg, field.name).extend(scalar_value(field, n) for n in range(2))
        elif is_msg:
            if depth < MAX_DEPTH:
                fill(getattr(msg, field.name), depth + 1)
                getattr(msg, field.name).SetInParent()
        else:
            setattr(msg, field.name, scalar_value(field, 0))


def request_types(pool, files):
    """Input types in fuzz_decode.c's order."""
    services = []
    for f in files:
        services += pool.FindFileByName(f).services_by_name.values()
    types = []
    for s in sorted(services, key=lambda s: s.full_name):
        for m in s.methods:
            if m.input_type not in types:
                types.append(m.input_type)
    return types


def varint(buf, i):
    v, shift = 0, 0
    while True:
        b = buf[i]
        v |= (b & 0x7f) << shift
        i, shift = i + 1, shift + 7
        if b < 0x80:
            return v, i


def event_type_option(options):
    """The (event_type) option (field 51001) of serialized MessageOptions, or None. Read by hand:
    the C++ protobuf runtime does not resolve extensions from a pool it did not build."""
    buf, i = options.SerializeToString(), 0
    while i < len(buf):
        key, i = varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = varint(buf, i)
            if key >> 3 == 51001:
                return buf[i:i + n].decode('utf-8')
            i += n
        else:
            sys.exit('unexpected wire type %d in MessageOptions' % wire)
    return None


def event_types(fds, pool):
    """type string -> payload descriptor, from option (event_type)."""
    out = {}
    for f in fds.file:
        if f.package != 'hospitality.events.v1':
            continue
        for m in f.message_type:
            t = event_type_option(m.options)
            if t is not None:
                out[t] = pool.FindMessageTypeByName('%s.%s' % (f.package, m.name))
    return out


def write(target, seeds):
    d = os.path.join(HERE, 'corpus', target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        if old.startswith('seed-'):
            os.remove(os.path.join(d, old))
    for name, data in seeds:
        with open(os.path.join(d, 'seed-' + name), 'wb') as f:
            f.write(data)
    print('%s: %d seeds, %d bytes' % (target, len(seeds), sum(len(b) for _, b in seeds)))


def main():
    pool, fds, files = load_pool()
    factory = message_factory.MessageFactory(pool)

    types = request_types(pool, files)
    if len(types) > 256:
        sys.exit('more than 256 request types: the selector byte cannot reach them all')
    decode = []
    for i, t in enumerate(types):
        msg = factory.GetPrototype(t)()
        fill(msg)
        decode.append((t.full_name, bytes([i]) + msg.SerializeToString()))
    decode.append(('empty-' + types[0].full_name, bytes([0])))
    write('fuzz_decode', decode)

    envelope = factory.GetPrototype(pool.FindMessageTypeByName('hospitality.events.v1.Event'))
    events = []
    for n, (name, d) in enumerate(sorted(event_types(fds, pool).items())):
        payload = factory.GetPrototype(d)()
        fill(payload)
        ev = envelope(id=str(uuid.UUID(int=(0x0193_5b2c_4a00 << 80) | (0x7 << 76) | (2 << 62) | n)),
                      type=name, source=name.split('.')[0] + 'd', schema_version=1,
                      subject=str(uuid.uuid5(uuid.NAMESPACE_URL, 'subject')),
                      traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
                      payload=payload.SerializeToString())
        ev.time.seconds = 1732000000
        events.append((name, ev.SerializeToString()))
    events.append(('unknown-type', envelope(id='x', type='no.such.type', payload=b'\x08\x01')
                   .SerializeToString()))
    events.append(('empty', b''))
    write('fuzz_events', events)

    texts = {
        'email': ' Guest.Name@Example.COM ',
        'email-two-at': 'a@b@example.com',
        'email-space': 'a b@example.com',
        'email-utf8': 'Zoë@Bücher.example',
        'phone': '+1 (555) 010-0199',
        'phone-dots': '555.010.0199',
        'phone-plus-late': '555+0100',
        'phone-long': '+123456789012345678901',
        'uuid': '0193a5b2-c4a0-7f3e-8b1d-2e4f6a8c0d1e',
        'uuid-upper': '0193A5B2-C4A0-7F3E-8B1D-2E4F6A8C0D1E',
        'uuid-bad': '0193a5b2-c4a0-7f3e-8b1d-2e4f6a8c0d1',
        'duration-ms': '250ms',
        'duration-s': '10s',
        'duration-m': '5m',
        'duration-h': '1h',
        'duration-bare': '1500',
        'duration-max': '9223372036854775807',
        'duration-overflow': '9223372036854775807h',
        'utf8': 'Café Zürich 日本 🍷',
        'json': 'say "hi"\\ \n\t\r\b\f\x01\x1f\x7f </script>',
    }
    binary = {
        'utf8-overlong': b'\xc0\x80',
        'utf8-surrogate': b'\xed\xa0\x80',
        'utf8-too-big': b'\xf4\x90\x80\x80',
        'utf8-truncated': b'ok \xe2\x82',
        'utf8-lone-continuation': b'\x80abc',
    }
    text = [(k, v.encode('utf-8')) for k, v in sorted(texts.items())]
    text += sorted(binary.items())
    write('fuzz_text', text)


if __name__ == '__main__':
    main()
