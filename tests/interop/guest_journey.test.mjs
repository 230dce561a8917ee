// guest_journey.test.mjs - the guest journey of guestd's issue through @grpc/grpc-js, a client
// nobody here wrote, loading the project's .proto files: anonymous browsing -> sign-up with an
// email -> merge of the anonymous profile -> preferences -> interactions -> personalization
// context. Run by run_node.py (guest_journey.test.mjs argument) against a fresh guestd.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test, after } from 'node:test';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const ADDR = process.env.HM_INTEROP_ADDR;
const TOKEN = process.env.HM_INTEROP_TOKEN;
const PROTO_DIR = process.env.HM_INTEROP_PROTO_DIR;
if (!ADDR || !TOKEN || !PROTO_DIR) throw new Error('run through run_node.py');

// google/api/annotations.proto from grpc-gateway's copy of googleapis (Debian), as docs/clients.md.
const GOOGLEAPIS =
  '/usr/share/gocode/src/github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis';
const def = protoLoader.loadSync('hospitality/guest/v1/guest.proto', {
  includeDirs: [PROTO_DIR, GOOGLEAPIS, '/usr/include'],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
});
const pkg = grpc.loadPackageDefinition(def).hospitality.guest.v1;
const client = new pkg.GuestService(ADDR, grpc.credentials.createInsecure());
after(() => client.close());

const md = new grpc.Metadata();
md.set('authorization', `Bearer ${TOKEN}`);

function call(method, req) {
  return new Promise((resolve, reject) =>
    client[method](req, md, { deadline: Date.now() + 10000 }, (err, res) =>
      err ? reject(err) : resolve(res)));
}

test('anonymous browsing -> sign-up -> merge -> preferences -> interactions -> context', async () => {
  const session = `sess-${randomBytes(8).toString('hex')}`;
  const email = `journey-${randomBytes(4).toString('hex')}@example.com`;

  // 1. an anonymous visitor browses and searches
  const anon = await call('ResolveIdentity', {
    identifiers: [{ type: 'IDENTIFIER_TYPE_ANONYMOUS_SESSION_ID', value: session }],
    create_if_missing: true,
    app: 'APP_WEB',
  });
  assert.equal(anon.created, true);
  assert.equal(anon.profile.status, 'GUEST_STATUS_ANONYMOUS');
  await call('RecordInteraction', {
    guest_id: anon.guest_id,
    interaction: { type: 'INTERACTION_TYPE_SEARCH', search_query: 'rooftop dinner' },
  });
  await call('RecordInteraction', {
    guest_id: anon.guest_id,
    interaction: { type: 'INTERACTION_TYPE_VIEW', venue_id: 'venue-rooftop', category: 'italian' },
  });

  // 2. the same person already has an account (created by the booking app) and signs in on
  //    the web with its email: the anonymous profile is merged into the known one
  const known = await call('CreateGuest', {
    profile: { name: 'Journey Guest', email, origin_app: 'APP_BOOKING' },
  });
  const signed = await call('ResolveIdentity', {
    identifiers: [
      { type: 'IDENTIFIER_TYPE_ANONYMOUS_SESSION_ID', value: session },
      { type: 'IDENTIFIER_TYPE_EMAIL', value: email.toUpperCase() },
    ],
    app: 'APP_WEB',
  });
  assert.equal(signed.guest_id, known.profile.guest_id);
  assert.equal(signed.merges.length, 1);
  assert.equal(signed.merges[0].rule_id, 'anonymous_login');
  assert.deepEqual(signed.merges[0].merged_guest_ids, [anon.guest_id]);
  assert.equal(signed.merges[0].interactions_moved, 2);
  const why = await call('ExplainIdentity', {
    first: { type: 'IDENTIFIER_TYPE_EMAIL', value: email },
    second: { type: 'IDENTIFIER_TYPE_ANONYMOUS_SESSION_ID', value: session },
  });
  assert.equal(why.same_guest, true);
  assert.match(why.explanation, /anonymous_login/);
  const guest = signed.guest_id;

  // 3. preferences
  const prefs = await call('UpdatePreferences', {
    guest_id: guest,
    explicit_preferences: { dietary_restrictions: ['vegetarian'], favorite_categories: ['italian'] },
  });
  assert.equal(prefs.preferences.version, 1);

  // 4. interactions: a booking and a review
  await call('RecordInteractions', {
    guest_id: guest,
    idempotency_key: 'journey-batch',
    interactions: [
      { type: 'INTERACTION_TYPE_BOOKING_CREATED', venue_id: 'venue-rooftop', category: 'italian',
        metadata: { party_size: '2' } },
      { type: 'INTERACTION_TYPE_REVIEW_SUBMITTED', venue_id: 'venue-rooftop', rating: 5 },
    ],
  });
  const listed = await call('ListInteractions', { guest_id: guest });
  assert.equal(listed.interactions.length, 4); // two anonymous ones moved by the merge + two
  const signals = await call('GetBehaviorSignals', { guest_id: guest });
  assert.equal(signals.signals.category_affinities[0].category, 'italian');

  // 5. the personalization context: explicit preferences always, behaviour only with consent
  const ctx = (await call('GetPersonalizationContext', { guest_id: guest })).context;
  assert.deepEqual(ctx.preferences.dietary_restrictions, ['vegetarian']);
  assert.equal(ctx.personalization_allowed, false); // privacyd has not recorded consent
  assert.ok(ctx.omitted.includes('signals'));
  assert.ok(ctx.preference_vector.some((f) => f.feature === 'diet:vegetarian'));
  assert.ok(ctx.profile.apps.includes('APP_BOOKING'));

  // and errors are clean statuses
  await assert.rejects(call('GetProfile', { guest_id: 'not-a-uuid' }),
    (e) => e.code === grpc.status.INVALID_ARGUMENT && /guest_id/.test(e.details));
});
