// grpcjs.test.mjs - @grpc/grpc-js (a pure-JavaScript HTTP/2 + gRPC stack nobody here wrote)
// against one running daemon, using only .proto files: Debian's grpc/health/v1/health.proto
// and googleapis' google/rpc/{status,error_details}.proto (Debian's gogo copy).
//
// Run by run_node.py (which starts the daemon through tests/lib/hmtest.py) as
//   node --test grpcjs.test.mjs
// with HM_INTEROP_ADDR=127.0.0.1:PORT, HM_INTEROP_SERVICES=comma-separated service names the
// daemon registers, HM_INTEROP_DAEMON=its name (messages only), HM_INTEROP_MAX_MESSAGE=the
// daemon's HM_MAX_MESSAGE_BYTES.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { accessSync } from 'node:fs';
import { test, after } from 'node:test';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

const ADDR = process.env.HM_INTEROP_ADDR;
const SERVICES = (process.env.HM_INTEROP_SERVICES || '').split(',').filter(Boolean);
const DAEMON = process.env.HM_INTEROP_DAEMON || 'daemon';
const MAX_MESSAGE = Number(process.env.HM_INTEROP_MAX_MESSAGE || 4 * 1024 * 1024);
const GRPC_PROTO_DIR = '/usr/share/grpc-proto';
// google/rpc from gogo's newer copy: grpc-gateway 1.6's error_details.proto predates ErrorInfo.
const GOOGLERPC_DIR = '/usr/share/gocode/src/github.com/gogo/googleapis';
const WKT_DIR = '/usr/include';

if (!ADDR) throw new Error('HM_INTEROP_ADDR is not set (run through run_node.py)');

// ---- protos ----

const healthDef = protoLoader.loadSync('grpc/health/v1/health.proto', {
  includeDirs: [GRPC_PROTO_DIR],
  keepCase: true,
  enums: String,
  defaults: true,
});
const healthPkg = grpc.loadPackageDefinition(healthDef).grpc.health.v1;

const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (origin, target) => {
  for (const dir of [GOOGLERPC_DIR, WKT_DIR]) {
    const p = `${dir}/${target}`;
    try {
      // protobufjs asks for imports as written; return the first folder that has the file.
      accessSync(p);
      return p;
    } catch {}
  }
  return target;
};
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const RpcStatus = rpcRoot.lookupType('google.rpc.Status');
const ErrorInfo = rpcRoot.lookupType('google.rpc.ErrorInfo');
const RequestInfo = rpcRoot.lookupType('google.rpc.RequestInfo');
const HealthCheckResponse = new protobuf.Root()
  .loadSync(`${GRPC_PROTO_DIR}/grpc/health/v1/health.proto`)
  .lookupType('grpc.health.v1.HealthCheckResponse');

// ---- wire format helpers ----

function varint(n) {
  const out = [];
  do {
    let c = n % 128;
    n = Math.floor(n / 128);
    if (n) c |= 0x80;
    out.push(c);
  } while (n);
  return Buffer.from(out);
}

// True when b is a structurally valid protobuf message (tags, wire types 0/1/2/5, lengths in
// bounds, no groups), whatever its fields mean.
function wellFormed(b) {
  let i = 0;
  const readVarint = () => {
    let n = 0n;
    let shift = 0n;
    for (;;) {
      if (i >= b.length || shift > 63n) return null;
      const c = b[i++];
      n |= BigInt(c & 0x7f) << shift;
      shift += 7n;
      if (!(c & 0x80)) return n;
    }
  };
  while (i < b.length) {
    const key = readVarint();
    if (key === null) return false;
    const field = key >> 3n;
    const wt = Number(key & 7n);
    if (field === 0n || field > 0x1fffffffn) return false;
    if (wt === 0) {
      if (readVarint() === null) return false;
    } else if (wt === 1) {
      i += 8;
    } else if (wt === 2) {
      const n = readVarint();
      if (n === null) return false;
      i += Number(n);
    } else if (wt === 5) {
      i += 4;
    } else {
      return false;
    }
    if (i > b.length) return false;
  }
  return true;
}

// ---- clients ----

const creds = grpc.credentials.createInsecure();
// No client-side size limits: the server's limit is what is under test.
const opts = {
  'grpc.max_send_message_length': -1,
  'grpc.max_receive_message_length': -1,
  'grpc.enable_retries': 0,
};
const health = new healthPkg.Health(ADDR, creds, opts);
const generic = new grpc.Client(ADDR, creds, opts);
after(() => {
  health.close();
  generic.close();
});

const deadline = (ms) => new Date(Date.now() + ms);
const codeName = (c) => Object.keys(grpc.status).find((k) => grpc.status[k] === c) ?? String(c);

// Unary Health/Check: resolves {err, resp, headers, trailers, ms}.
function check(service, { md = new grpc.Metadata(), timeoutMs = 10000 } = {}) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let headers = null;
    let trailers = null;
    const call = health.Check({ service }, md, { deadline: deadline(timeoutMs) }, (err, resp) =>
      // 'status' follows the callback: wait one tick for the trailers.
      setImmediate(() => resolve({ err, resp, headers, trailers, ms: performance.now() - t0 })),
    );
    call.on('metadata', (m) => (headers = m));
    call.on('status', (s) => (trailers = s.metadata));
  });
}

// A unary call with raw bytes and any method name.
function rawCall(method, bytes, { md = new grpc.Metadata(), timeoutMs = 10000 } = {}) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let headers = null;
    const call = generic.makeUnaryRequest(
      method,
      () => bytes,
      (b) => b,
      Buffer.alloc(0),
      md,
      { deadline: deadline(timeoutMs) },
      (err, resp) => setImmediate(() => resolve({ err, resp, headers, ms: performance.now() - t0 })),
    );
    call.on('metadata', (m) => (headers = m));
  });
}

function assertCode(r, want, what) {
  const got = r.err ? r.err.code : grpc.status.OK;
  assert.equal(
    codeName(got),
    codeName(want),
    `${DAEMON} ${what}: want ${codeName(want)}, got ${codeName(got)} (${r.err?.details ?? 'ok'})`,
  );
}

async function assertStillServing(what) {
  const r = await check('');
  assertCode(r, grpc.status.OK, `Check("") after ${what}`);
  assert.equal(r.resp.status, 'SERVING', `${DAEMON} no longer SERVING after ${what}`);
}

// Decodes grpc-status-details-bin of an error: {status, info, req}.
function details(err) {
  const raw = err.metadata.get('grpc-status-details-bin');
  assert.equal(raw.length, 1, `one grpc-status-details-bin in the trailers of ${codeName(err.code)}`);
  const status = RpcStatus.decode(raw[0]);
  let info = null;
  let req = null;
  for (const any of status.details) {
    if (any.type_url === 'type.googleapis.com/google.rpc.ErrorInfo') info = ErrorInfo.decode(any.value);
    if (any.type_url === 'type.googleapis.com/google.rpc.RequestInfo') req = RequestInfo.decode(any.value);
  }
  return { status, info, req };
}

const requestId = (headers) => {
  const v = headers?.get('x-request-id') ?? [];
  assert.equal(v.length, 1, `${DAEMON}: one x-request-id in the response headers, got ${v.length}`);
  return String(v[0]);
};

// ---- tests ----

test('health Check SERVING for "", liveness, readiness and every service', async () => {
  assert.ok(SERVICES.length > 0, 'HM_INTEROP_SERVICES lists the services');
  for (const name of ['', 'liveness', 'readiness', ...SERVICES]) {
    const r = await check(name);
    assertCode(r, grpc.status.OK, `Check(${JSON.stringify(name)})`);
    assert.equal(r.resp.status, 'SERVING', `${DAEMON} Check(${JSON.stringify(name)})`);
  }
});

test('health Check of an unknown name is NOT_FOUND with rich error details', async () => {
  const md = new grpc.Metadata();
  md.set('x-request-id', 'interop-js-notfound-1');
  const r = await check('hospitality.nope.v1.NopeService', { md });
  assertCode(r, grpc.status.NOT_FOUND, 'Check(unknown)');
  const d = details(r.err);
  assert.equal(d.status.code, grpc.status.NOT_FOUND, 'google.rpc.Status.code matches grpc-status');
  assert.equal(d.status.message, r.err.details, 'google.rpc.Status.message matches grpc-message');
  assert.ok(d.info, 'an ErrorInfo detail');
  assert.match(d.info.reason, /^[A-Z][A-Z0-9_]*$/, 'ErrorInfo.reason is UPPER_SNAKE_CASE');
  assert.equal(d.info.domain, 'hospitality.mesh');
  assert.ok(d.req, 'a RequestInfo detail');
  assert.equal(d.req.request_id, 'interop-js-notfound-1', 'RequestInfo.request_id echoes x-request-id');
  assert.equal(requestId(r.headers), 'interop-js-notfound-1', 'x-request-id on an error response');
});

test('health Check of a long unknown name (64 KiB) is still NOT_FOUND', async () => {
  // On a connection of its own: a response too large for the client's header limits may break
  // the connection (seen: the call hangs to its deadline and the next calls get GOAWAY).
  const own = new healthPkg.Health(ADDR, creds, { ...opts, 'grpc.use_local_subchannel_pool': 1 });
  try {
    const r = await new Promise((resolve) =>
      own.Check({ service: 'x'.repeat(64 * 1024) }, { deadline: deadline(3000) }, (err, resp) =>
        resolve({ err, resp }),
      ),
    );
    assertCode(r, grpc.status.NOT_FOUND, 'Check(64 KiB unknown name)');
  } finally {
    own.close();
  }
  await assertStillServing('a long unknown name');
});

test('health Watch sends SERVING first and keeps the stream open', async () => {
  for (const name of ['', 'readiness', SERVICES[0]]) {
    const first = await new Promise((resolve, reject) => {
      const call = health.Watch({ service: name }, { deadline: deadline(10000) });
      const timer = setTimeout(() => reject(new Error(`${DAEMON}: no Watch message in 5 s`)), 5000);
      call.on('data', (m) => {
        clearTimeout(timer);
        // The stream must still be open after its first message: wait a little, then cancel.
        setTimeout(() => call.cancel(), 200);
        resolve(m.status);
      });
      call.on('error', (e) => {
        clearTimeout(timer);
        if (e.code !== grpc.status.CANCELLED) reject(e);
      });
      call.on('end', () => reject(new Error(`${DAEMON}: Watch(${name}) ended on its own`)));
    });
    assert.equal(first, 'SERVING', `${DAEMON} Watch(${JSON.stringify(name)}) first message`);
  }
});

test('health Watch of an unknown name sends SERVICE_UNKNOWN', async () => {
  const first = await new Promise((resolve, reject) => {
    const call = health.Watch({ service: 'hospitality.nope.v1.NopeService' }, { deadline: deadline(10000) });
    call.on('data', (m) => {
      call.cancel();
      resolve(m.status);
    });
    call.on('error', (e) => {
      if (e.code !== grpc.status.CANCELLED) reject(e);
    });
  });
  assert.equal(first, 'SERVICE_UNKNOWN', `${DAEMON} Watch(unknown) first message`);
});

test('an unknown method is UNIMPLEMENTED at once (10 s deadline)', async () => {
  for (const method of ['/hospitality.nope.v1.NopeService/Nothing', '/grpc.health.v1.Health/Nope']) {
    const r = await rawCall(method, Buffer.alloc(0));
    assertCode(r, grpc.status.UNIMPLEMENTED, method);
    assert.ok(r.ms < 1000, `${DAEMON} ${method} answered in ${r.ms.toFixed(0)} ms (want < 1000)`);
    const d = details(r.err);
    assert.equal(d.status.code, grpc.status.UNIMPLEMENTED);
    assert.ok(d.info?.reason, 'ErrorInfo.reason on UNIMPLEMENTED');
    assert.equal(d.req?.request_id, requestId(r.headers), 'RequestInfo.request_id = x-request-id');
  }
});

test('a 1 ms deadline is DEADLINE_EXCEEDED', async () => {
  let expired = 0;
  for (let i = 0; i < 20; i++) {
    const r = await check('', { timeoutMs: 1 });
    // A call may beat a 1 ms deadline now and then: a plain success then, nothing else.
    if (!r.err) {
      assert.equal(r.resp.status, 'SERVING');
      continue;
    }
    assertCode(r, grpc.status.DEADLINE_EXCEEDED, 'Check with a 1 ms deadline');
    expired++;
  }
  assert.ok(expired > 0, `${DAEMON}: none of 20 calls with a 1 ms deadline expired`);
  await assertStillServing('expired deadlines');
});

test('a Watch stream ends with DEADLINE_EXCEEDED at its deadline', async () => {
  const t0 = performance.now();
  const { msgs, err } = await new Promise((resolve) => {
    const msgs = [];
    const call = health.Watch({ service: '' }, { deadline: deadline(700) });
    call.on('data', (m) => msgs.push(m.status));
    call.on('error', (e) => resolve({ msgs, err: e }));
    call.on('end', () => resolve({ msgs, err: null }));
  });
  const ms = performance.now() - t0;
  assert.deepEqual(msgs, ['SERVING'], `${DAEMON} Watch messages before the deadline`);
  assert.equal(codeName(err?.code ?? 0), 'DEADLINE_EXCEEDED', `${DAEMON} Watch end status`);
  assert.ok(ms >= 600 && ms < 5000, `Watch ended after ${ms.toFixed(0)} ms (deadline 700 ms)`);
  await assertStillServing('a Watch deadline');
});

test('a message over the size limit is RESOURCE_EXHAUSTED and the daemon still serves', async () => {
  const big = MAX_MESSAGE + 1024 * 1024;
  const r = await check('s'.repeat(big));
  assertCode(r, grpc.status.RESOURCE_EXHAUSTED, `Check with a ${big} byte request`);
  await assertStillServing('an oversized message');
});

test('a message just under the size limit is accepted', async () => {
  // An unknown field (15, bytes) of almost the limit, which the decoder skips: service "".
  const n = MAX_MESSAGE - 16;
  const msg = Buffer.concat([Buffer.from([0x7a]), varint(n), Buffer.alloc(n, 0x75)]);
  assert.ok(msg.length <= MAX_MESSAGE);
  const r = await rawCall('/grpc.health.v1.Health/Check', msg);
  assertCode(r, grpc.status.OK, `Check with a ${msg.length} byte request`);
  assert.equal(HealthCheckResponse.decode(r.resp).status, 1, 'SERVING');
  await assertStillServing('an oversized message');
});

test('garbage request bytes are INVALID_ARGUMENT and the daemon still serves', async () => {
  const cases = [
    // Field 1 (string) claims 100 bytes, 10 follow.
    Buffer.concat([Buffer.from([0x0a, 0x64]), randomBytes(10)]),
    // Wire type 7 does not exist.
    Buffer.concat([Buffer.from([0x0f]), randomBytes(32)]),
    // Field number 0 is invalid.
    Buffer.concat([Buffer.from([0x00]), randomBytes(16)]),
    // A varint that never ends.
    Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
  ];
  // Random bytes that are not a well-formed protobuf message (a wire-format walk of our own).
  while (cases.length < 40) {
    const b = randomBytes(1 + cases.length * 7);
    if (!wellFormed(b)) cases.push(b);
  }
  for (const bytes of cases) {
    const r = await rawCall('/grpc.health.v1.Health/Check', bytes);
    const got = codeName(r.err?.code ?? 0);
    assert.ok(
      got === 'INVALID_ARGUMENT' || got === 'INTERNAL',
      `${DAEMON} garbage ${bytes.toString('hex').slice(0, 40)}: want INVALID_ARGUMENT, got ${got}`,
    );
    if (got === 'INVALID_ARGUMENT') assert.ok(details(r.err).info?.reason, 'ErrorInfo.reason');
  }
  await assertStillServing('garbage requests');
});

test('x-request-id: present on every response, echoed when sane', async () => {
  const plain = await check('');
  const generated = requestId(plain.headers);
  assert.ok(generated.length >= 16, `generated x-request-id ${generated} is long enough`);
  const again = requestId((await check('')).headers);
  assert.notEqual(again, generated, 'a new request id per call');

  const md = new grpc.Metadata();
  md.set('x-request-id', 'interop-js-42.A_b');
  assert.equal(requestId((await check('', { md })).headers), 'interop-js-42.A_b', 'echoed');

  // Not sane (a space and a quote; or too long): replaced by a generated one.
  for (const bad of ['two words"', 'x'.repeat(200)]) {
    const m = new grpc.Metadata();
    m.set('x-request-id', bad);
    const r = await check('', { md: m });
    assertCode(r, grpc.status.OK, 'Check with an odd x-request-id');
    const got = requestId(r.headers);
    assert.notEqual(got, bad, 'an insane x-request-id is not echoed');
    assert.match(got, /^[A-Za-z0-9._-]{16,64}$/);
  }
});

test('a gzip-compressed request is understood', async () => {
  const gz = new healthPkg.Health(ADDR, creds, {
    ...opts,
    'grpc.use_local_subchannel_pool': 1,
    'grpc.default_compression_algorithm': 2, // gzip
  });
  try {
    const r = await new Promise((resolve) =>
      gz.Check({ service: 'readiness' }, { deadline: deadline(5000) }, (err, resp) =>
        resolve({ err, resp }),
      ),
    );
    assertCode(r, grpc.status.OK, 'gzip Check(readiness)');
    assert.equal(r.resp.status, 'SERVING');
  } finally {
    gz.close();
  }
});

test('many concurrent calls on one connection all succeed', async () => {
  const rs = await Promise.all(Array.from({ length: 200 }, () => check('readiness')));
  const bad = rs.filter((r) => r.err || r.resp.status !== 'SERVING');
  assert.equal(bad.length, 0, `${bad.length} of 200 concurrent checks failed: ${bad[0]?.err?.message}`);
});
