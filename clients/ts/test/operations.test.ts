// Every operation of the document, called through the typed client against the container,
// each answer checked against the document (support.ts `checkingFetch`): a documented status
// and content type, and a body valid against the documented schema.

import assert from "node:assert/strict";
import { createPrivateKey, randomUUID, sign } from "node:crypto";
import { after, test } from "node:test";

import WebSocket from "ws";

import { ApiProblem, createApiClient, ok, realtimeTranscriptionUrl, telnyxMediaStreamUrl } from "../src/index.js";
import {
  anonymous,
  api,
  assertServedIsSnapshot,
  bearerSession,
  checkAnswer,
  checkingFetch,
  config,
  cookieSession,
  covered,
  operations,
  violations,
} from "./support.js";

/** The Telnyx simulator's fixed test key (`callbridge sim`), to sign webhooks as Telnyx does. */
const TELNYX_KEY = createPrivateKey({
  key: Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), Buffer.from("callbridge-telnyx-sim-test-key!!", "ascii")]),
  format: "der",
  type: "pkcs8",
});

/** A short WAV: 8 kHz mono, 16-bit, half a second of a tone. */
function wav(): Blob {
  const samples = 4000;
  const bytes = Buffer.alloc(44 + samples * 2);
  bytes.write("RIFF", 0);
  bytes.writeUInt32LE(36 + samples * 2, 4);
  bytes.write("WAVEfmt ", 8);
  bytes.writeUInt32LE(16, 16);
  bytes.writeUInt16LE(1, 20);
  bytes.writeUInt16LE(1, 22);
  bytes.writeUInt32LE(8000, 24);
  bytes.writeUInt32LE(16000, 28);
  bytes.writeUInt16LE(2, 32);
  bytes.writeUInt16LE(16, 34);
  bytes.write("data", 36);
  bytes.writeUInt32LE(samples * 2, 40);
  for (let i = 0; i < samples; i++) bytes.writeInt16LE(Math.round(8000 * Math.sin(i / 4)), 44 + i * 2);
  return new Blob([bytes], { type: "audio/wav" });
}

/** Opens a WebSocket operation and records its handshake answer like any other. */
function openSocket(url: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers });
    socket.on("upgrade", (response) => {
      checkAnswer("GET", url.replace(/^ws/, "http"), response.statusCode ?? 0, null, null);
      socket.close();
      resolve(response.statusCode ?? 0);
    });
    socket.on("unexpected-response", (_request, response) => {
      let body = "";
      response.on("data", (chunk: Buffer) => (body += chunk.toString()));
      response.on("end", () => {
        checkAnswer("GET", url.replace(/^ws/, "http"), response.statusCode ?? 0, response.headers["content-type"] ?? null, body);
        resolve(response.statusCode ?? 0);
      });
    });
    socket.on("error", (error) => reject(error));
  });
}

after(() => {
  // Printed for the report: how much of the document the typed client covers.
  const all = operations.map((op) => op.operationId);
  console.log(`typed client: ${all.filter((id) => covered.has(id)).length}/${all.length} operations called`);
});

test("the container serves the document the client's types come from", () => {
  assertServedIsSnapshot();
});

test("every operation of the document, through the typed client, answers as documented", async () => {
  // Public operations.
  await ok(anonymous.GET("/healthz"));
  await ok(anonymous.GET("/readyz"));
  await ok(anonymous.GET("/metrics", { parseAs: "text" }));
  await ok(anonymous.GET("/api/openapi.json"));
  assert.match(await ok(anonymous.GET("/api/docs", { parseAs: "text" })), /<html/);

  // The signed-in user and their personal organisation.
  const me = await ok(api.GET("/api/me"));
  assert.ok(me.active_organisation_id, "a new user has a personal organisation");
  const orgId = me.active_organisation_id;
  const active = await ok(api.PUT("/api/me/active-organisation", { body: { organisation_id: orgId } }));
  assert.equal(active.active_organisation_id, orgId);
  const asBearer = await ok(createApiClient(bearerSession).GET("/api/me"));
  assert.equal(asBearer.session.source, "bearer");
  const debug = await ok(anonymous.GET("/internal/debug/session", { headers: { "X-Debug-Token": config.debugToken } }));
  assert.ok(debug);

  // Organisations and members: members join by invitation, accepted with the emailed token.
  const created = await ok(api.POST("/api/orgs", { body: { name: "TS client organisation" } }));
  assert.equal(created.role, "owner");
  const [first, second] = config.memberUserIds;
  assert.ok(first && second);
  const memberClients = config.memberSessions.map((bearer) => createApiClient({ baseUrl: config.baseUrl, bearer, fetch: checkingFetch }));
  for (const [index, member] of memberClients.entries()) {
    const email = config.memberEmails[index] ?? "";
    const invitation = await ok(
      api.POST("/api/orgs/{id}/invitations", { params: { path: { id: orgId } }, body: { email, role: "member" } }),
    );
    assert.equal(invitation.email, email);
    const joined = await ok(
      member.POST("/api/invitations/{id}/accept", { params: { path: { id: invitation.id } }, body: { token: invitation.token } }),
    );
    assert.equal(joined.id, orgId);
  }
  const pending = await ok(
    api.POST("/api/orgs/{id}/invitations", { params: { path: { id: orgId } }, body: { email: config.addableEmail } }),
  );
  assert.equal(pending.role, "member");
  const pendingListed = await ok(api.GET("/api/orgs/{id}/invitations", { params: { path: { id: orgId } } }));
  assert.deepEqual(
    pendingListed.map((invitation) => invitation.id),
    [pending.id],
  );
  await ok(api.DELETE("/api/orgs/{id}/invitations/{invitation_id}", { params: { path: { id: orgId, invitation_id: pending.id } } }));
  const members = await ok(api.GET("/api/orgs/{id}/members", { params: { path: { id: orgId } } }));
  assert.equal(members.length, 3);
  // The members invite the signed-in user into their own organisations: one accepted, one
  // declined. The address is not verified, so the in-app list is empty and the token decides.
  const myEmail = me.user.email;
  assert.ok(myEmail);
  const toMe = [];
  for (const member of memberClients) {
    const theirs = await ok(member.GET("/api/me"));
    assert.ok(theirs.active_organisation_id);
    toMe.push(
      await ok(
        member.POST("/api/orgs/{id}/invitations", { params: { path: { id: theirs.active_organisation_id } }, body: { email: myEmail } }),
      ),
    );
  }
  assert.deepEqual(await ok(api.GET("/api/invitations")), []);
  const [toAccept, toDecline] = toMe;
  assert.ok(toAccept && toDecline);
  const accepted = await ok(
    api.POST("/api/invitations/{id}/accept", { params: { path: { id: toAccept.id } }, body: { token: toAccept.token } }),
  );
  assert.equal(accepted.id, toAccept.organisation_id);
  await ok(api.POST("/api/invitations/{id}/decline", { params: { path: { id: toDecline.id } }, body: { token: toDecline.token } }));

  // Phone numbers, calls and their live events.
  const number = await ok(api.POST("/api/phone-numbers", { body: { number: "+14155550100", label: "main" } }));
  const offered = await ok(api.GET("/api/phone-numbers/available", { params: { query: { country: "US", limit: 5 } } }));
  assert.ok(Array.isArray(offered));
  const policy = await ok(api.GET("/api/orgs/{id}/dialing-policy", { params: { path: { id: orgId } } }));
  await ok(
    api.PUT("/api/orgs/{id}/dialing-policy", {
      params: { path: { id: orgId } },
      body: { allowed_countries: ["US", "GB"], min_role: policy.min_role },
    }),
  );
  const numbers = await ok(api.GET("/api/phone-numbers"));
  assert.deepEqual(
    numbers.map((n) => n.number),
    ["+14155550100"],
  );
  // The number as an inbound interpreted line.
  const line = await ok(
    api.PUT("/api/phone-numbers/{id}/line", {
      params: { path: { id: number.id } },
      body: { forward_to: "+14155550777", caller_language: "es", agent_language: "en", greeting: "Thank you for calling." },
    }),
  );
  assert.equal(line.forward_to, "+14155550777");
  const lineRead = await ok(api.GET("/api/phone-numbers/{id}/line", { params: { path: { id: number.id } } }));
  assert.equal(lineRead.phone_number_id, number.id);
  const call = await ok(
    api.POST("/api/calls", {
      params: { header: { "X-Org-Id": orgId } },
      body: { to: "+14155550123", from: number.number, source_language: "en", target_language: "de" },
    }),
  );
  assert.equal(call.status, "dialing");
  const page = await ok(api.GET("/api/calls", { params: { query: { limit: 1, status: "dialing" } } }));
  assert.equal(page.calls[0]?.id, call.id);
  const detail = await ok(api.GET("/api/calls/{id}", { params: { path: { id: call.id } } }));
  assert.equal(detail.id, call.id);
  const { response: stream } = await api.GET("/api/calls/{id}/events", {
    params: { path: { id: call.id }, query: { after: 0 } },
    parseAs: "stream",
  });
  assert.equal(stream.headers.get("content-type"), "text/event-stream");
  await stream.body?.cancel();
  await ok(api.GET("/api/calls/{id}/transcript", { params: { path: { id: call.id } } }));

  // Recordings: streamed upload, direct upload, reading them back.
  const recording = await ok(
    api.POST("/api/recordings", {
      params: { query: { call_id: call.id } },
      body: wav(),
      bodySerializer: (body) => body as BodyInit,
      headers: { "content-type": "audio/wav" },
    }),
  );
  assert.equal(recording.call_id, call.id);
  const upload = await ok(
    api.POST("/api/recordings/upload-url", {
      body: { content_type: "audio/wav", size_bytes: wav().size, recording_id: recording.id },
    }),
  );
  const put = await fetch(upload.upload_url, { method: upload.method, headers: upload.headers as Record<string, string>, body: wav() });
  assert.equal(put.status, 200, "the presigned PUT is accepted by the object store");
  const completed = await ok(
    api.POST("/api/recordings/{id}/complete", {
      params: { path: { id: upload.recording_id } },
      body: { version: upload.version },
    }),
  );
  assert.equal(completed.id, recording.id);
  const read = await ok(api.GET("/api/recordings/{id}", { params: { path: { id: recording.id }, query: { version: 1 } } }));
  assert.ok(read.download?.url);
  const { response: redirect } = await api.GET("/api/recordings/{id}/download", {
    params: { path: { id: recording.id } },
    redirect: "manual",
    parseAs: "stream",
  });
  assert.equal(redirect.status, 302);
  await redirect.body?.cancel();
  const listed = await ok(api.GET("/api/calls/{id}/recordings", { params: { path: { id: call.id } } }));
  assert.equal(listed.recordings.length, 1);

  // Translation and speech (the DeepL/OpenAI/ElevenLabs simulators).
  const translated = await ok(api.POST("/api/translate", { body: { texts: ["Good morning"], target_language: "de" } }));
  assert.equal(translated.translations.length, 1);
  const { response: speech } = await api.POST("/api/tts", { body: { text: "Good morning" }, parseAs: "arrayBuffer" });
  assert.equal(speech.status, 200);

  // Realtime transcription: a browser token, and the proxy WebSocket.
  const token = await ok(api.POST("/api/realtime/token", { body: { encoding: "pcm_s16le", sample_rate: 16000 } }));
  assert.match(token.websocket_url, /^wss?:/);
  const proxied = await openSocket(realtimeTranscriptionUrl(config.baseUrl, { sample_rate: 16000, call_id: call.id }), {
    cookie: cookieSession.cookie ?? "",
    origin: config.origin,
  });
  assert.equal(proxied, 101);

  // Telnyx's media stream for the call: the URL from the dial command the simulator received.
  const commands = (await (await fetch(`${config.telnyxSimUrl}/_sim/commands`)).json()) as { action: string; body: unknown }[];
  const streamUrl = commands
    .filter((c) => c.action === "dial")
    .map((c) => (c.body as { stream_url?: string }).stream_url)
    .find((u): u is string => typeof u === "string");
  assert.ok(streamUrl, "the dial command carries the media stream URL");
  const streamToken = decodeURIComponent(new URL(streamUrl).pathname.split("/").pop() ?? "");
  const media = await openSocket(telnyxMediaStreamUrl(config.baseUrl, { stream_token: streamToken }), {});
  assert.equal(media, 101);

  // Provider webhooks, signed as the providers sign them.
  const envelope = JSON.stringify({
    data: {
      record_type: "event",
      event_type: "call.initiated",
      id: randomUUID(),
      occurred_at: new Date().toISOString(),
      payload: { call_control_id: "v3:ts-client-inbound", direction: "incoming", from: "+14155550123", to: "+14155550199" },
    },
    meta: { attempt: 1, delivered_to: `${config.baseUrl}/webhooks/telnyx` },
  });
  const timestamp = String(Math.floor(Date.now() / 1000));
  const signature = sign(null, Buffer.from(`${timestamp}|${envelope}`), TELNYX_KEY).toString("base64");
  const received = await ok(
    anonymous.POST("/webhooks/telnyx", {
      params: { header: { "telnyx-signature-ed25519": signature, "telnyx-timestamp": timestamp } },
      body: JSON.parse(envelope) as Record<string, unknown>,
      bodySerializer: () => envelope,
    }),
  );
  assert.equal(received.duplicate, false);
  const transcriptDone = await ok(
    anonymous.POST("/webhooks/assemblyai", {
      params: { header: { "x-callbridge-webhook-secret": config.assemblyAiWebhookSecret } },
      body: { transcript_id: "ts-client", status: "completed" },
    }),
  );
  assert.equal(transcriptDone.event_id, "ts-client:completed");

  // What the organisation's calls cost, and its quotas.
  const usage = await ok(api.GET("/api/usage", { params: { query: { group_by: "day" } } }));
  assert.ok(usage);
  const quotas = await ok(api.GET("/api/usage/quotas"));
  assert.ok(quotas);

  // Ending the call; then the removals.
  const hungUp = await ok(api.POST("/api/calls/{id}/hangup", { params: { path: { id: call.id } } }));
  assert.equal(hungUp.id, call.id);
  await ok(api.DELETE("/api/orgs/{id}/members/{user_id}", { params: { path: { id: orgId, user_id: first } } }));
  await ok(api.DELETE("/api/orgs/{id}/members", { params: { path: { id: orgId }, query: { user_id: second } } }));
  await ok(api.DELETE("/api/phone-numbers/{id}/line", { params: { path: { id: number.id } } }));
  await ok(api.DELETE("/api/phone-numbers/{id}", { params: { path: { id: number.id } } }));

  const missing = operations.map((op) => op.operationId).filter((id) => !covered.has(id));
  assert.deepEqual(missing, [], "every operation of the document is called by the typed client");
  assert.deepEqual(violations, [], "every answer is documented and valid against its schema");
});

test("error answers are typed ApiProblems carrying the request id", async () => {
  const failure = await ok(anonymous.GET("/api/me")).catch((error: unknown) => error);
  assert.ok(failure instanceof ApiProblem);
  assert.equal(failure.status, 401);
  assert.ok(failure.isUnauthenticated);
  assert.equal(failure.type, "urn:callbridge:problem:unauthenticated");
  assert.ok(failure.requestId.length > 0);

  const notFound = await ok(api.GET("/api/calls/{id}", { params: { path: { id: randomUUID() } } })).catch((error: unknown) => error);
  assert.ok(notFound instanceof ApiProblem);
  assert.equal(notFound.status, 404);

  const invalid = await ok(api.POST("/api/phone-numbers", { body: { number: "not a number" } })).catch((error: unknown) => error);
  assert.ok(invalid instanceof ApiProblem);
  assert.equal(invalid.status, 422);
  assert.match(invalid.detail ?? "", /E\.164/);

  // A malformed organisation id is a 400 the document lists (checked by checkingFetch).
  const badOrg = await ok(createApiClient({ ...cookieSession, organisationId: "not-a-uuid" }).GET("/api/phone-numbers")).catch(
    (error: unknown) => error,
  );
  assert.ok(badOrg instanceof ApiProblem);
  assert.equal(badOrg.status, 400);
  assert.deepEqual(violations, []);
  void checkingFetch;
});
