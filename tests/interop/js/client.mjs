// Interop test client: a third-party Matrix client (matrix-js-sdk + its bundled
// Rust crypto compiled to wasm) driven over a JSON-lines protocol.
//
// Protocol (stdin/stdout, one JSON object per line, UTF-8):
//   request : {"id": <any>, "cmd": "<command>", ...params}
//   success : {"id": <same>, ...result fields}
//   failure : {"id": <same>, "error": "<message>"}
// Requests are handled concurrently; responses may come back out of order.
// stdout carries ONLY protocol lines. Every log line (ours, matrix-js-sdk's,
// the Rust crypto tracing output) goes to stderr.
//
// Commands: ping, login, join, wait_event, send_event, send_state, create_plain_room,
// download_decrypt,
// ydoc_catch_up, ydoc_edit, ydoc_snapshot (Yjs documents in IXO's matrix-crdt format),
// upload_encrypted, bootstrap_cross_signing, device_status, stop; key backup:
// restore_backup_with_recovery_key, cross_signing_from_secret_storage, setup_key_backup,
// wait_backup_sessions; interactive
// verification (SAS): request_verification, wait_verification_request,
// accept_verification, start_verification, sas, sas_confirm, sas_mismatch,
// cancel_verification, wait_verification. See the handlers below for parameters.
//
// Environment:
//   INTEROP_JS_LOG_LEVEL  matrix-js-sdk log level (trace|debug|info|warn|error), default "info"
//   INTEROP_JS_RUST_LOG   Rust crypto tracing level (trace|debug|info|warn|error), default "info"

// ---------------------------------------------------------------------------
// 1. Keep stdout clean: route every console method to stderr. This has to run
//    before matrix-js-sdk is loaded (its logger binds console methods).
// ---------------------------------------------------------------------------
import { format } from "node:util";
import { createInterface } from "node:readline";

const writeErr = (...args) => process.stderr.write(format(...args) + "\n");
for (const m of ["log", "info", "debug", "trace", "warn", "error"]) {
    console[m] = writeErr;
}

// ---------------------------------------------------------------------------
// 2. Node 20 shims. matrix-js-sdk 43 declares engines.node >= 22 and uses
//    Promise.withResolvers (Node >= 22). Polyfill it *before* importing the SDK,
//    hence the dynamic import() below. fetch, WebCrypto (globalThis.crypto) and
//    WebAssembly are native in Node 20. No IndexedDB shim is needed because the
//    crypto store is in-memory (initRustCrypto({useIndexedDB: false})) and the
//    sync store is the default MemoryStore.
// ---------------------------------------------------------------------------
if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function withResolvers() {
        let resolve, reject;
        const promise = new this((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}
if (!globalThis.crypto?.subtle) {
    globalThis.crypto = (await import("node:crypto")).webcrypto;
}

const sdk = await import("matrix-js-sdk");
const { ClientEvent, RoomEvent, MatrixEventEvent, SyncState } = sdk;
// The global SDK logger isn't re-exported from the package index.
const { logger } = await import("matrix-js-sdk/lib/logger.js");
const { CryptoEvent, VerificationPhase, VerifierEvent, VerificationRequestEvent, decodeRecoveryKey } = await import(
    "matrix-js-sdk/lib/crypto-api/index.js"
);
const RustCrypto = await import("@matrix-org/matrix-sdk-crypto-wasm");
// Yjs, the CRDT IXO's matrix-crdt carries: documents in the IXO wire format
// (matrix-crdt.doc_update / doc_snapshot / doc_snapshot_v2), read and written here.
const Y = await import("yjs");
const ydocs = new Map();
const CRDT_UPDATE = "matrix-crdt.doc_update";
const CRDT_SNAPSHOT = "matrix-crdt.doc_snapshot";
const CRDT_SNAPSHOT_V2 = "matrix-crdt.doc_snapshot_v2";
// IXO's olmlib.encodeBase64: Node's standard, padded base64.
const ixoB64 = (bytes) => Buffer.from(bytes).toString("base64");

logger.setLevel(process.env.INTEROP_JS_LOG_LEVEL || "info", false);

const log = (...args) => writeErr(`[interop-js ${new Date().toISOString()}]`, ...args);

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------
function send(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

function need(params, ...names) {
    for (const n of names) {
        if (params[n] === undefined || params[n] === null) {
            throw new Error(`missing parameter '${n}'`);
        }
    }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function b64encode(bytes, { unpadded = true, urlsafe = false } = {}) {
    let s = Buffer.from(bytes).toString("base64");
    if (urlsafe) s = s.replace(/\+/g, "-").replace(/\//g, "_");
    if (unpadded) s = s.replace(/=+$/, "");
    return s;
}

// Tolerant decoder: accepts standard or URL-safe alphabet, padded or not.
function b64decode(s) {
    if (typeof s !== "string") throw new Error("expected a base64 string");
    const std = s.replace(/-/g, "+").replace(/_/g, "/").replace(/=+$/, "");
    return new Uint8Array(Buffer.from(std + "=".repeat((4 - (std.length % 4)) % 4), "base64"));
}

function normB64(s) {
    return String(s).replace(/-/g, "+").replace(/_/g, "/").replace(/=+$/, "");
}

async function sha256b64(bytes) {
    return b64encode(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
}

async function aesCtr(op, rawKey, iv, data) {
    const key = await crypto.subtle.importKey("raw", rawKey, { name: "AES-CTR" }, false, [op]);
    const fn = op === "encrypt" ? crypto.subtle.encrypt : crypto.subtle.decrypt;
    return new Uint8Array(await fn.call(crypto.subtle, { name: "AES-CTR", counter: iv, length: 64 }, key, data));
}

function parseMxc(mxc) {
    const m = /^mxc:\/\/([^/]+)\/([^/?#]+)$/.exec(mxc || "");
    if (!m) throw new Error(`not an mxc URL: ${mxc}`);
    return { server: m[1], mediaId: m[2] };
}

// Does `actual` contain every field of `expected`? (recursive for objects,
// exact for arrays and scalars)
function contains(actual, expected) {
    if (expected !== null && typeof expected === "object" && !Array.isArray(expected)) {
        if (actual === null || typeof actual !== "object" || Array.isArray(actual)) return false;
        return Object.entries(expected).every(([k, v]) => contains(actual[k], v));
    }
    return JSON.stringify(actual) === JSON.stringify(expected);
}

// ---------------------------------------------------------------------------
// client state
// ---------------------------------------------------------------------------
let client = null;
let homeserverUrl = null;
let accessToken = null;

// Secret storage keys this client may use (the app's getSecretStorageKey /
// cacheSecretStorageKey callbacks, as Element implements them): keys cached by
// bootstrapSecretStorage, by key id; and one key the user typed in (a recovery
// key), handed out for the account's default secret storage key.
const ssssKeyCache = new Map();
let typedSsssKey = null;
const cryptoCallbacks = {
    async getSecretStorageKey({ keys }, name) {
        for (const id of Object.keys(keys)) {
            if (ssssKeyCache.has(id)) return [id, ssssKeyCache.get(id)];
        }
        if (!typedSsssKey) {
            log(`getSecretStorageKey(${name}): no key known for ${Object.keys(keys)}`);
            return null;
        }
        const defaultId = await client.secretStorage.getDefaultKeyId();
        const id = defaultId && Object.hasOwn(keys, defaultId) ? defaultId : Object.keys(keys)[0];
        log(`getSecretStorageKey(${name}): using the recovery key for key id ${id}`);
        return [id, typedSsssKey];
    },
    cacheSecretStorageKey(keyId, _keyInfo, key) {
        ssssKeyCache.set(keyId, key);
    },
};

// Interactive verification: every request (ours or theirs) by flow id
// (to-device transaction id, or the event id of the in-room request).
const verifications = new Map();
const incomingVerifications = []; // flow ids not yet handed out by wait_verification_request
const sasPromises = new Map(); // flow id -> verifier.verify() promise (settled)

function phaseName(phase) {
    return Object.keys(VerificationPhase).find((k) => VerificationPhase[k] === phase)?.toLowerCase() ?? String(phase);
}

function describeRequest(req) {
    return {
        flow_id: req.transactionId,
        other_user: req.otherUserId,
        other_device: req.otherDeviceId ?? null,
        room_id: req.roomId ?? null,
        initiated_by_me: req.initiatedByMe,
        phase: phaseName(req.phase),
        cancellation_code: req.cancellationCode ?? null,
    };
}

function getVerification(flowId) {
    const req = verifications.get(flowId);
    if (!req) throw new Error(`unknown verification flow ${flowId} (known: ${[...verifications.keys()].join(", ")})`);
    return req;
}

// Wait until `check(req)` is truthy, re-checking on every change of the request.
function waitRequest(req, check, timeoutMs, describe) {
    return new Promise((resolve, reject) => {
        let done = false;
        const finish = (fn, v) => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            clearInterval(poll);
            req.off(VerificationRequestEvent.Change, attempt);
            fn(v);
        };
        const attempt = () => {
            try {
                const v = check(req);
                if (v) finish(resolve, v);
            } catch (e) {
                finish(reject, e);
            }
        };
        const poll = setInterval(attempt, 250);
        const timer = setTimeout(
            () => finish(reject, new Error(`timeout after ${timeoutMs} ms waiting for ${describe} (phase ${phaseName(req.phase)})`)),
            timeoutMs,
        );
        req.on(VerificationRequestEvent.Change, attempt);
        attempt();
    });
}

function requireClient() {
    if (!client) throw new Error("not logged in (send 'login' first)");
    return client;
}

// Poll + event driven waiting: `check()` returns a truthy value when done.
function waitFor(check, timeoutMs, describe) {
    const c = requireClient();
    return new Promise((resolve, reject) => {
        let done = false;
        const events = [ClientEvent.Room, RoomEvent.Timeline, RoomEvent.MyMembership, MatrixEventEvent.Decrypted, ClientEvent.Sync];
        const finish = (fn, val) => {
            if (done) return;
            done = true;
            clearInterval(poll);
            clearTimeout(timer);
            for (const e of events) c.removeListener(e, attempt);
            fn(val);
        };
        const attempt = () => {
            if (done) return;
            Promise.resolve()
                .then(check)
                .then((v) => v && finish(resolve, v), (err) => finish(reject, err));
        };
        const poll = setInterval(attempt, 250);
        const timer = setTimeout(() => {
            finish(reject, new Error(`timeout after ${timeoutMs} ms waiting for ${typeof describe === "function" ? describe() : describe}`));
        }, timeoutMs);
        for (const e of events) c.on(e, attempt);
        attempt();
    });
}

async function waitJoined(roomId, timeoutMs) {
    return waitFor(
        () => {
            const room = client.getRoom(roomId);
            return room && room.getMyMembership() === "join" ? room : null;
        },
        timeoutMs,
        () => `room ${roomId} to be joined (membership: ${client.getRoom(roomId)?.getMyMembership() ?? "unknown room"})`,
    );
}

async function startLoggedInClient(timeoutMs) {
    // In-memory Rust crypto store: no IndexedDB needed.
    await client.initRustCrypto({ useIndexedDB: false });
    const level = (process.env.INTEROP_JS_RUST_LOG || "info").toLowerCase();
    const lvl = { trace: 0, debug: 1, info: 2, warn: 3, error: 4 }[level] ?? 2;
    try {
        new RustCrypto.Tracing(lvl).turnOn();
    } catch (e) {
        log("could not adjust Rust tracing level:", e?.message ?? e);
    }
    // Default DeviceIsolationMode is AllDevicesIsolationMode: room keys are
    // shared with unverified devices, so no verification step is needed.
    let timer;
    const prepared = new Promise((resolve, reject) => {
        const onSync = (state, _prev, data) => {
            if (state === SyncState.Prepared || state === SyncState.Syncing) {
                client.removeListener(ClientEvent.Sync, onSync);
                clearTimeout(timer);
                resolve();
            } else if (state === SyncState.Error) {
                log("sync error (will retry):", data?.error?.message ?? data);
            }
        };
        client.on(ClientEvent.Sync, onSync);
        timer = setTimeout(() => {
            client?.removeListener(ClientEvent.Sync, onSync);
            reject(new Error(`first sync not PREPARED within ${timeoutMs} ms`));
        }, timeoutMs);
    });
    await client.startClient({ initialSyncLimit: 50 });
    await prepared;
}

// ---------------------------------------------------------------------------
// commands
// ---------------------------------------------------------------------------
const handlers = {
    async ping() {
        return { pong: true, logged_in: !!client, node: process.version };
    },

    // {homeserver_url, user_id (full MXID or localpart), password, device_id?, timeout_ms?}
    async login(p) {
        need(p, "homeserver_url", "user_id", "password");
        if (client) throw new Error("already logged in");
        const timeoutMs = p.timeout_ms ?? 60000;
        const tmp = sdk.createClient({ baseUrl: p.homeserver_url });
        const resp = await tmp.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: p.user_id },
            password: p.password,
            initial_device_display_name: "datarooms interop (matrix-js-sdk)",
            ...(p.device_id ? { device_id: p.device_id } : {}),
        });
        homeserverUrl = p.homeserver_url.replace(/\/+$/, "");
        accessToken = resp.access_token;
        client = sdk.createClient({
            baseUrl: homeserverUrl,
            userId: resp.user_id,
            deviceId: resp.device_id,
            accessToken: resp.access_token,
            cryptoCallbacks,
        });
        client.on(CryptoEvent.VerificationRequestReceived, (req) => {
            log(`verification request received: ${req.transactionId} from ${req.otherUserId}`);
            verifications.set(req.transactionId, req);
            incomingVerifications.push(req.transactionId);
        });
        try {
            await startLoggedInClient(timeoutMs);
        } catch (e) {
            try {
                client.stopClient();
            } catch {}
            client = null;
            throw e;
        }
        log(`logged in as ${resp.user_id} device ${resp.device_id}`);
        return { user_id: resp.user_id, device_id: resp.device_id };
    },

    // {room_id, timeout_ms?} -> {room_id}
    async join(p) {
        need(p, "room_id");
        const c = requireClient();
        const room = await c.joinRoom(p.room_id);
        await waitJoined(room?.roomId ?? p.room_id, p.timeout_ms ?? 30000);
        return { room_id: room?.roomId ?? p.room_id };
    },

    // {name?, history_visibility?} -> {room_id}: an encrypted room (history sharing, MSC4268)
    async create_room(p) {
        const c = requireClient();
        const res = await c.createRoom({
            name: p.name ?? "js room",
            initial_state: [
                { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
                { type: "m.room.history_visibility", state_key: "", content: { history_visibility: p.history_visibility ?? "shared" } },
            ],
        });
        await waitJoined(res.room_id, p.timeout_ms ?? 30000);
        // The first event must not go out before the client knows the room is encrypted.
        await waitFor(
            async () => await c.getCrypto().isEncryptionEnabledInRoom(res.room_id),
            p.timeout_ms ?? 30000,
            `encryption enabled in ${res.room_id}`,
        );
        return { room_id: res.room_id };
    },

    // {room_id, user_id} -> {}: matrix-js-sdk's invite, which shares the room's history
    // (a key bundle) first when the visibility is shared/world_readable.
    async invite(p) {
        need(p, "room_id", "user_id");
        const c = requireClient();
        await c.invite(p.room_id, p.user_id);
        return { invited: p.user_id };
    },

    // {room_id, timeout_ms?} -> {room_id}: wait for the invite, then join, as a user
    // accepting it (matrix-js-sdk then imports the inviter's key bundle).
    async accept_invite(p) {
        need(p, "room_id");
        const c = requireClient();
        const timeoutMs = p.timeout_ms ?? 30000;
        await waitFor(
            () => c.getRoom(p.room_id)?.getMyMembership() === "invite",
            timeoutMs,
            () => `an invite to ${p.room_id} (membership: ${c.getRoom(p.room_id)?.getMyMembership() ?? "unknown room"})`,
        );
        await c.joinRoom(p.room_id);
        await waitJoined(p.room_id, timeoutMs);
        return { room_id: p.room_id };
    },

    // {room_id, type, want, timeout_ms?} -> {events: [{event_id, type, content}], failures:
    // [{event_id, reason, message}]}: page back to the room's creation, then wait until
    // `want` events of `type` are decrypted (or time runs out: the failures say why).
    async history(p) {
        need(p, "room_id", "type", "want");
        const c = requireClient();
        const room = await waitJoined(p.room_id, 30000);
        const timeoutMs = p.timeout_ms ?? 60000;
        const deadline = Date.now() + timeoutMs;
        const tl = () => room.getLiveTimeline();
        while (!tl().getEvents().some((e) => e.getType() === "m.room.create") && Date.now() < deadline) {
            const before = tl().getEvents().length;
            await c.scrollback(room, 100);
            if (tl().getEvents().length === before && !tl().getPaginationToken("b")) break;
        }
        const collect = () => {
            const events = [];
            const failures = [];
            for (const ev of tl().getEvents()) {
                if (ev.isDecryptionFailure()) {
                    failures.push({ event_id: ev.getId(), reason: ev.decryptionFailureReason ?? null, message: ev.getContent()?.body ?? null });
                } else if (ev.getType() === p.type) {
                    events.push({ event_id: ev.getId(), type: ev.getType(), content: ev.getContent(), encrypted: ev.isEncrypted() });
                }
            }
            return { events, failures };
        };
        while (Date.now() < deadline) {
            const got = collect();
            if (got.events.length >= p.want) return got;
            await sleep(250);
        }
        return collect();
    },

    // {room_id, type, match?, timeout_ms?} ->
    //   {event_id, sender, type, content, encrypted}
    async wait_event(p) {
        need(p, "room_id", "type");
        const c = requireClient();
        const match = p.match ?? {};
        const timeoutMs = p.timeout_ms ?? 30000;
        let stats = "";
        const check = async () => {
            const room = c.getRoom(p.room_id);
            if (!room) {
                stats = "room not known to the client yet";
                return null;
            }
            const events = room.getLiveTimeline().getEvents();
            let pending = 0;
            let failed = 0;
            const types = new Set();
            for (const ev of events) {
                if (ev.isBeingDecrypted() || ev.shouldAttemptDecryption?.()) {
                    pending += 1;
                    continue;
                }
                if (ev.isDecryptionFailure()) {
                    failed += 1;
                    continue;
                }
                types.add(ev.getType());
                if (ev.getType() !== p.type) continue;
                const content = ev.getContent(); // clear content if it was encrypted
                if (!contains(content, match)) continue;
                return {
                    event_id: ev.getId(),
                    sender: ev.getSender(),
                    type: ev.getType(),
                    content,
                    encrypted: ev.isEncrypted(),
                    origin_server_ts: ev.getTs(),
                };
            }
            stats = `${events.length} timeline events, types seen=${JSON.stringify([...types])}, being decrypted=${pending}, decryption failures=${failed}`;
            return null;
        };
        return waitFor(check, timeoutMs, () => `event type=${p.type} match=${JSON.stringify(match)} in ${p.room_id} (${stats})`);
    },

    // {room_id, type, content, timeout_ms?} -> {event_id, encrypted, recipient_devices}
    // {room_id, type, content, state_key?} -> {event_id}: a state event, as matrix-js-sdk
    // sends it (e.g. a moderation policy rule, m.policy.rule.user).
    async send_state(p) {
        need(p, "room_id", "type", "content");
        const c = requireClient();
        await waitJoined(p.room_id, p.timeout_ms ?? 30000);
        const res = await c.sendStateEvent(p.room_id, p.type, p.content, p.state_key ?? "");
        return { event_id: res.event_id };
    },

    // {name?, room_type?} -> {room_id}: a room that is not encrypted (a policy list:
    // its rules are state, never encrypted, and meant to be shared).
    async create_plain_room(p) {
        const c = requireClient();
        const opts = { name: p.name ?? "js plain room" };
        if (p.room_type) opts.creation_content = { type: p.room_type };
        const res = await c.createRoom(opts);
        await waitJoined(res.room_id, p.timeout_ms ?? 30000);
        return { room_id: res.room_id };
    },
    async send_event(p) {
        need(p, "room_id", "type", "content");
        const c = requireClient();
        const room = await waitJoined(p.room_id, p.timeout_ms ?? 30000);
        const cryptoApi = c.getCrypto();
        const encrypted = await cryptoApi.isEncryptionEnabledInRoom(p.room_id);
        let recipientDevices = null;
        if (encrypted) {
            // Make sure the members' device lists are downloaded before we
            // encrypt. (The RoomEncryptor also tracks members and runs
            // /keys/query + /keys/claim itself when sharing the megolm session,
            // but doing it explicitly here makes failures visible and gives us
            // a device count for debugging.)
            await room.loadMembersIfNeeded();
            const members = (await room.getEncryptionTargetMembers()).map((m) => m.userId);
            const devices = await cryptoApi.getUserDeviceInfo(members, true);
            recipientDevices = {};
            for (const [userId, devs] of devices) recipientDevices[userId] = [...devs.keys()];
            log(`send_event ${p.type} to ${p.room_id}: recipient devices`, JSON.stringify(recipientDevices));
        }
        const resp = await c.sendEvent(p.room_id, p.type, p.content);
        return { event_id: resp.event_id, encrypted, recipient_devices: recipientDevices };
    },

    // {mxc_url?, file: EncryptedFile} -> {plaintext_b64, sha256_ok, ciphertext_sha256}
    async download_decrypt(p) {
        need(p, "file");
        requireClient();
        const file = p.file;
        const { server, mediaId } = parseMxc(p.mxc_url ?? file.url);
        const url = `${homeserverUrl}/_matrix/client/v1/media/download/${encodeURIComponent(server)}/${encodeURIComponent(mediaId)}`;
        const res = await fetch(url, { headers: { Authorization: `Bearer ${accessToken}` } });
        if (!res.ok) throw new Error(`GET ${url} -> HTTP ${res.status}: ${(await res.text()).slice(0, 500)}`);
        const ciphertext = new Uint8Array(await res.arrayBuffer());
        const actual = await sha256b64(ciphertext);
        const expected = file.hashes?.sha256;
        const sha256Ok = expected !== undefined && normB64(expected) === actual;
        if (!file.key?.k) throw new Error("file.key.k missing");
        if (file.key.alg && file.key.alg !== "A256CTR") throw new Error(`unsupported key alg ${file.key.alg}`);
        const rawKey = b64decode(file.key.k);
        const iv = b64decode(file.iv);
        if (rawKey.length !== 32) throw new Error(`key is ${rawKey.length} bytes, expected 32`);
        if (iv.length !== 16) throw new Error(`iv is ${iv.length} bytes, expected 16`);
        const plaintext = await aesCtr("decrypt", rawKey, iv, ciphertext);
        return { plaintext_b64: b64encode(plaintext, { unpadded: false }), sha256_ok: sha256Ok, ciphertext_sha256: actual };
    },

    // {room_id, filename, data_b64, mimetype?, body?} -> {event_id, mxc, file}
    async upload_encrypted(p) {
        need(p, "room_id", "filename", "data_b64");
        const c = requireClient();
        const plaintext = b64decode(p.data_b64);
        const rawKey = crypto.getRandomValues(new Uint8Array(32));
        const iv = new Uint8Array(16);
        crypto.getRandomValues(iv.subarray(0, 8)); // last 8 bytes (counter) stay zero
        const ciphertext = await aesCtr("encrypt", rawKey, iv, plaintext);
        const sha = await sha256b64(ciphertext);
        const upUrl = `${homeserverUrl}/_matrix/media/v3/upload?filename=${encodeURIComponent(p.filename)}`;
        const res = await fetch(upUrl, {
            method: "POST",
            headers: { Authorization: `Bearer ${accessToken}`, "Content-Type": "application/octet-stream" },
            body: ciphertext,
        });
        if (!res.ok) throw new Error(`POST ${upUrl} -> HTTP ${res.status}: ${(await res.text()).slice(0, 500)}`);
        const mxc = (await res.json()).content_uri;
        const file = {
            url: mxc,
            key: { kty: "oct", alg: "A256CTR", key_ops: ["encrypt", "decrypt"], k: b64encode(rawKey, { urlsafe: true }), ext: true },
            iv: b64encode(iv),
            hashes: { sha256: sha },
            v: "v2",
        };
        const content = {
            msgtype: "m.file",
            body: p.body ?? p.filename,
            filename: p.filename,
            info: { mimetype: p.mimetype ?? "application/octet-stream", size: plaintext.length },
            file,
        };
        const sent = await handlers.send_event({ room_id: p.room_id, type: "m.room.message", content, timeout_ms: p.timeout_ms });
        return { event_id: sent.event_id, mxc, file, encrypted: sent.encrypted };
    },

    // {password} -> {master_key}: create and upload cross-signing keys, sign this device
    async bootstrap_cross_signing(p) {
        need(p, "password");
        const c = requireClient();
        const crypto = c.getCrypto();
        await crypto.bootstrapCrossSigning({
            authUploadDeviceSigningKeys: async (makeRequest) => {
                await makeRequest({
                    type: "m.login.password",
                    identifier: { type: "m.id.user", user: c.getUserId() },
                    password: p.password,
                });
            },
        });
        const status = await crypto.getCrossSigningStatus();
        const keys = await crypto.getCrossSigningKeyId();
        return { ready: await crypto.isCrossSigningReady(), status, master_key: keys };
    },

    // {user_id, device_id} -> how matrix-js-sdk sees that device's trust
    async device_status(p) {
        need(p, "user_id", "device_id");
        const c = requireClient();
        const crypto = c.getCrypto();
        await crypto.getUserDeviceInfo([p.user_id], true);
        const st = await crypto.getDeviceVerificationStatus(p.user_id, p.device_id);
        if (!st) return { known: false };
        return {
            known: true,
            signed_by_owner: st.signedByOwner,
            cross_signing_verified: st.crossSigningVerified,
            locally_verified: st.localVerified,
        };
    },

    // {user_id, device_id?, room_id?} -> request description. To-device to one
    // device (device_id), or in-room (room_id: the spec's verification of another user).
    async request_verification(p) {
        need(p, "user_id");
        const crypto = requireClient().getCrypto();
        let req;
        if (p.room_id) {
            await crypto.getUserDeviceInfo([p.user_id], true);
            req = await crypto.requestVerificationDM(p.user_id, p.room_id);
        } else {
            need(p, "device_id");
            await crypto.getUserDeviceInfo([p.user_id], true);
            req = await crypto.requestDeviceVerification(p.user_id, p.device_id);
        }
        verifications.set(req.transactionId, req);
        return describeRequest(req);
    },

    // {timeout_ms?} -> the next incoming request (each returned once)
    async wait_verification_request(p) {
        requireClient();
        const timeoutMs = p.timeout_ms ?? 30000;
        const deadline = Date.now() + timeoutMs;
        while (incomingVerifications.length === 0) {
            if (Date.now() > deadline) throw new Error(`no verification request within ${timeoutMs} ms`);
            await sleep(100);
        }
        return describeRequest(getVerification(incomingVerifications.shift()));
    },

    // {flow_id} -> sends m.key.verification.ready
    async accept_verification(p) {
        need(p, "flow_id");
        const req = getVerification(p.flow_id);
        await req.accept();
        return describeRequest(req);
    },

    // {flow_id} -> sends m.key.verification.start (m.sas.v1)
    async start_verification(p) {
        need(p, "flow_id");
        const req = getVerification(p.flow_id);
        await waitRequest(
            req,
            (r) => {
                if (r.phase === VerificationPhase.Cancelled) throw new Error(`cancelled: ${r.cancellationCode}`);
                return r.phase === VerificationPhase.Ready;
            },
            p.timeout_ms ?? 30000,
            "phase ready",
        );
        await req.startVerification("m.sas.v1");
        return describeRequest(req);
    },

    // {flow_id, timeout_ms?} -> {emoji: [[symbol, name] x7], decimal: [n, n, n]}.
    // Waits for the SAS verifier, calls verify() on it (which accepts an incoming
    // start), and waits until the SAS can be shown.
    async sas(p) {
        need(p, "flow_id");
        const req = getVerification(p.flow_id);
        const timeoutMs = p.timeout_ms ?? 30000;
        const verifier = await waitRequest(
            req,
            (r) => {
                if (r.phase === VerificationPhase.Cancelled) throw new Error(`cancelled: ${r.cancellationCode}`);
                return r.verifier;
            },
            timeoutMs,
            "a verifier (phase started)",
        );
        if (!sasPromises.has(p.flow_id)) {
            const settled = verifier.verify().then(
                () => ({ ok: true }),
                (e) => ({ ok: false, error: String(e?.message ?? e) }),
            );
            sasPromises.set(p.flow_id, settled);
        }
        const callbacks = await new Promise((resolve, reject) => {
            const ready = verifier.getShowSasCallbacks();
            if (ready) return resolve(ready);
            const timer = setTimeout(() => reject(new Error(`no SAS within ${timeoutMs} ms`)), timeoutMs);
            verifier.once(VerifierEvent.ShowSas, (cb) => {
                clearTimeout(timer);
                resolve(cb);
            });
        });
        return { emoji: callbacks.sas.emoji ?? null, decimal: callbacks.sas.decimal ?? null };
    },

    // {flow_id} -> the user says the SAS matches (sends the MAC)
    async sas_confirm(p) {
        need(p, "flow_id");
        const cb = getVerification(p.flow_id).verifier?.getShowSasCallbacks();
        if (!cb) throw new Error("no SAS is shown for this flow (call 'sas' first)");
        await cb.confirm();
        return { confirmed: true };
    },

    // {flow_id} -> the user says the SAS differs (cancels with m.mismatched_sas)
    async sas_mismatch(p) {
        need(p, "flow_id");
        const cb = getVerification(p.flow_id).verifier?.getShowSasCallbacks();
        if (!cb) throw new Error("no SAS is shown for this flow (call 'sas' first)");
        cb.mismatch();
        return { mismatched: true };
    },

    // {flow_id} -> cancels the request (m.user)
    async cancel_verification(p) {
        need(p, "flow_id");
        const req = getVerification(p.flow_id);
        await req.cancel();
        return describeRequest(req);
    },

    // {flow_id, phase: "done"|"cancelled", timeout_ms?} -> request description
    async wait_verification(p) {
        need(p, "flow_id", "phase");
        const req = getVerification(p.flow_id);
        const want = p.phase === "done" ? VerificationPhase.Done : VerificationPhase.Cancelled;
        await waitRequest(
            req,
            (r) => {
                if (r.phase === want) return true;
                if (r.phase === VerificationPhase.Done || r.phase === VerificationPhase.Cancelled) {
                    throw new Error(`flow ended in phase ${phaseName(r.phase)} (code ${r.cancellationCode}), not ${p.phase}`);
                }
                return false;
            },
            p.timeout_ms ?? 30000,
            `phase ${p.phase}`,
        );
        return describeRequest(req);
    },

    // {recovery_key} -> {version, restored: {total, imported}, trust, check, active_version}
    // Unlock secret storage with a recovery key (spec base58 format), load the
    // backup decryption key (m.megolm_backup.v1) from it and restore every room key.
    async restore_backup_with_recovery_key(p) {
        need(p, "recovery_key");
        const crypto = requireClient().getCrypto();
        typedSsssKey = decodeRecoveryKey(p.recovery_key);
        const info = await crypto.getKeyBackupInfo();
        if (!info?.version) throw new Error("no key backup on the server");
        const trust = await crypto.isKeyBackupTrusted(info);
        await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
        const res = await crypto.restoreKeyBackup();
        const check = await crypto.checkKeyBackupAndEnable();
        return {
            version: info.version,
            algorithm: info.algorithm,
            restored: { total: res.total, imported: res.imported },
            trust: { trusted: trust.trusted, matches_decryption_key: trust.matchesDecryptionKey },
            check: check
                ? { version: check.backupInfo?.version ?? null, trusted: check.trustInfo.trusted, matches_decryption_key: check.trustInfo.matchesDecryptionKey }
                : null,
            active_version: await crypto.getActiveSessionBackupVersion(),
        };
    },

    // {} -> {ready, status, device_signed_by_owner, backup_trust}: import the
    // cross-signing keys from secret storage (needs the recovery key first:
    // restore_backup_with_recovery_key), which signs this device, then re-check
    // whether the server's key backup is trusted.
    async cross_signing_from_secret_storage(p) {
        const c = requireClient();
        const crypto = c.getCrypto();
        // bootstrapCrossSigning imports the private keys from secret storage only if they
        // match the public keys this device knows: make sure it has fetched ours first
        // (under load the first key query may still be in flight), and try again once.
        for (let attempt = 1; ; attempt++) {
            await crypto.getUserDeviceInfo([c.getUserId()], true);
            try {
                await crypto.bootstrapCrossSigning({});
                break;
            } catch (err) {
                if (attempt >= 3) throw err;
                await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
            }
        }
        // The device signature goes out with the outgoing requests; our own
        // device list is then re-queried. Wait (a while) until it shows.
        const signed = async () =>
            (await crypto.getDeviceVerificationStatus(c.getUserId(), c.getDeviceId()))?.signedByOwner;
        await waitFor(signed, p.timeout_ms ?? 15000, "this device to be signed by its owner").catch((e) => log(e.message));
        const me = await crypto.getDeviceVerificationStatus(c.getUserId(), c.getDeviceId());
        const info = await crypto.getKeyBackupInfo();
        const trust = info ? await crypto.isKeyBackupTrusted(info) : null;
        return {
            ready: await crypto.isCrossSigningReady(),
            status: await crypto.getCrossSigningStatus(),
            device_signed_by_owner: me?.signedByOwner ?? null,
            backup_trust: trust && { trusted: trust.trusted, matches_decryption_key: trust.matchesDecryptionKey },
        };
    },

    // {timeout_ms?} -> {recovery_key, key_id, version}: new secret storage (a new
    // recovery key) holding the cross-signing keys and a new key backup's key.
    async setup_key_backup(p) {
        const c = requireClient();
        const crypto = c.getCrypto();
        const key = await crypto.createRecoveryKeyFromPassphrase();
        await crypto.bootstrapSecretStorage({ createSecretStorageKey: async () => key, setupNewKeyBackup: true });
        const version = await waitFor(
            async () => await crypto.getActiveSessionBackupVersion(),
            p.timeout_ms ?? 30000,
            "an active key backup",
        );
        return {
            recovery_key: key.encodedPrivateKey,
            key_id: await c.secretStorage.getDefaultKeyId(),
            version,
            ready: await crypto.isSecretStorageReady(),
        };
    },

    // {version, min_sessions, timeout_ms?} -> {sessions: {room_id: [session ids]}}:
    // wait until the server's backup holds at least min_sessions sessions.
    async wait_backup_sessions(p) {
        need(p, "version", "min_sessions");
        requireClient();
        const url = `${homeserverUrl}/_matrix/client/v3/room_keys/keys?version=${encodeURIComponent(p.version)}`;
        let seen = 0;
        return waitFor(
            async () => {
                const res = await fetch(url, { headers: { Authorization: `Bearer ${accessToken}` } });
                if (!res.ok) throw new Error(`GET ${url} -> HTTP ${res.status}: ${(await res.text()).slice(0, 500)}`);
                const rooms = (await res.json()).rooms ?? {};
                const sessions = {};
                seen = 0;
                for (const [roomId, r] of Object.entries(rooms)) {
                    sessions[roomId] = Object.keys(r.sessions ?? {});
                    seen += sessions[roomId].length;
                }
                return seen >= p.min_sessions ? { sessions } : null;
            },
            p.timeout_ms ?? 30000,
            () => `${p.min_sessions} sessions in backup ${p.version} (have ${seen})`,
        );
    },

    // {doc, room_id, want, snapshot_only?, texts?, maps?, timeout_ms?} ->
    //   {state_b64, sv_b64, texts, maps, snapshot_event_id, snapshot_type, updates_applied}
    // A fresh Y.Doc `doc`, caught up the way IXO's MatrixReader does: page back to the
    // room's creation, wait until `want` matrix-crdt events are decrypted, take the newest
    // readable snapshot (inline, or media-backed: downloaded, SHA-256 checked, AES-CTR
    // decrypted, its state vector checked), then apply the updates after its
    // last_event_id. `snapshot_only`: apply the snapshot alone.
    async ydoc_catch_up(p) {
        need(p, "doc", "room_id", "want");
        const c = requireClient();
        const room = await waitJoined(p.room_id, 30000);
        const deadline = Date.now() + (p.timeout_ms ?? 60000);
        const tl = () => room.getLiveTimeline();
        while (!tl().getEvents().some((e) => e.getType() === "m.room.create") && Date.now() < deadline) {
            const before = tl().getEvents().length;
            await c.scrollback(room, 100);
            if (tl().getEvents().length === before && !tl().getPaginationToken("b")) break;
        }
        const crdt = () => tl().getEvents().filter((e) => [CRDT_UPDATE, CRDT_SNAPSHOT, CRDT_SNAPSHOT_V2].includes(e.getType()) && !e.getContent()?.doc);
        while (crdt().length < p.want && Date.now() < deadline) await sleep(200);
        const events = crdt();
        if (events.length < p.want) throw new Error(`only ${events.length} of ${p.want} matrix-crdt events decrypted`);
        const doc = new Y.Doc();
        ydocs.set(p.doc, doc);
        let base = null;
        for (let i = events.length - 1; i >= 0 && !base; i--) {
            const ev = events[i];
            const content = ev.getContent();
            try {
                if (ev.getType() === CRDT_SNAPSHOT) {
                    base = { ev, bytes: b64decode(content.update) };
                } else if (ev.getType() === CRDT_SNAPSHOT_V2) {
                    const file = content.file;
                    const { server, mediaId } = parseMxc(content.mxc_url);
                    const url = `${homeserverUrl}/_matrix/client/v1/media/download/${encodeURIComponent(server)}/${encodeURIComponent(mediaId)}`;
                    const res = await fetch(url, { headers: { Authorization: `Bearer ${accessToken}` } });
                    if (!res.ok) throw new Error(`media download HTTP ${res.status}`);
                    const ciphertext = new Uint8Array(await res.arrayBuffer());
                    if (normB64(file.hashes.sha256) !== (await sha256b64(ciphertext))) throw new Error("sha256 mismatch");
                    const bytes = await aesCtr("decrypt", b64decode(file.key.k), b64decode(file.iv), ciphertext);
                    const sv = Y.decodeStateVector(Y.encodeStateVectorFromUpdate(bytes));
                    const announced = Y.decodeStateVector(b64decode(content.state_vector));
                    const same = sv.size === announced.size && [...sv].every(([k, v]) => announced.get(k) === v);
                    if (!same) throw new Error("state vector mismatch");
                    if (content.size !== undefined && content.size !== bytes.length) throw new Error("size mismatch");
                    base = { ev, bytes };
                }
            } catch (e) {
                log(`snapshot ${ev.getId()} unreadable: ${e}`);
                base = null;
            }
        }
        let applied = 0;
        if (base) Y.applyUpdate(doc, base.bytes, "remote");
        if (!(p.snapshot_only && base)) {
            let after = !base;
            const last = base ? base.ev.getContent().last_event_id : null;
            for (const ev of events) {
                if (!after) {
                    if (ev.getId() === last) after = true;
                    continue;
                }
                if (ev.getType() !== CRDT_UPDATE) continue;
                Y.applyUpdate(doc, b64decode(ev.getContent().update), "remote");
                applied += 1;
            }
        }
        return {
            ...ydocState(doc, p),
            snapshot_event_id: base ? base.ev.getId() : null,
            snapshot_type: base ? base.ev.getType() : null,
            updates_applied: applied,
        };
    },

    // {doc, room_id, edits: [{text, index, insert} | {text, index, delete} | {map, key, value}]}
    //   -> {event_id, update_b64, state_b64, ...}: one Yjs transaction, sent as IXO does.
    async ydoc_edit(p) {
        need(p, "doc", "room_id", "edits");
        const doc = ydocs.get(p.doc);
        if (!doc) throw new Error(`no document ${p.doc}: catch up first`);
        const updates = [];
        const onUpdate = (u, origin) => {
            if (origin !== "remote") updates.push(u);
        };
        doc.on("update", onUpdate);
        doc.transact(() => {
            for (const e of p.edits) {
                if (e.text !== undefined && e.insert !== undefined) doc.getText(e.text).insert(e.index, e.insert);
                else if (e.text !== undefined && e.delete !== undefined) doc.getText(e.text).delete(e.index, e.delete);
                else if (e.map !== undefined) doc.getMap(e.map).set(e.key, e.value);
                else throw new Error(`unknown edit ${JSON.stringify(e)}`);
            }
        }, "local");
        doc.off("update", onUpdate);
        const update = Y.mergeUpdates(updates);
        const sent = await handlers.send_event({ room_id: p.room_id, type: CRDT_UPDATE, content: { update: ixoB64(update) } });
        return { event_id: sent.event_id, encrypted: sent.encrypted, update_b64: ixoB64(update), ...ydocState(doc, p) };
    },

    // {doc, room_id, last_event_id} -> {event_id}: an inline snapshot (IXO's legacy one).
    async ydoc_snapshot(p) {
        need(p, "doc", "room_id", "last_event_id");
        const doc = ydocs.get(p.doc);
        if (!doc) throw new Error(`no document ${p.doc}`);
        const content = { update: ixoB64(Y.encodeStateAsUpdate(doc)), last_event_id: p.last_event_id };
        const sent = await handlers.send_event({ room_id: p.room_id, type: CRDT_SNAPSHOT, content });
        return { event_id: sent.event_id };
    },

    async stop() {
        await shutdown(false);
        return { stopped: true };
    },
};

function ydocState(doc, p) {
    const texts = {};
    for (const t of p.texts ?? []) texts[t] = doc.getText(t).toString();
    const maps = {};
    for (const m of p.maps ?? []) maps[m] = doc.getMap(m).toJSON();
    return { state_b64: ixoB64(Y.encodeStateAsUpdate(doc)), sv_b64: ixoB64(Y.encodeStateVector(doc)), texts, maps };
}

let stopping = false;
async function shutdown(exit) {
    if (!stopping) {
        stopping = true;
        try {
            client?.stopClient();
        } catch (e) {
            log("stopClient failed:", e);
        }
    }
    if (exit) {
        // Let stdout drain, then exit (stopClient leaves timers behind).
        process.stdout.write("", () => process.exit(0));
    }
}

// ---------------------------------------------------------------------------
// main loop
// ---------------------------------------------------------------------------
process.on("unhandledRejection", (err) => log("unhandled rejection:", err));
process.on("uncaughtException", (err) => log("uncaught exception:", err));

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", async (line) => {
    if (!line.trim()) return;
    let req;
    try {
        req = JSON.parse(line);
    } catch (e) {
        send({ id: null, error: `invalid JSON: ${e.message}` });
        return;
    }
    const { id = null, cmd, ...params } = req;
    const handler = Object.hasOwn(handlers, cmd) ? handlers[cmd] : null;
    if (!handler) {
        send({ id, error: `unknown command: ${cmd}` });
        return;
    }
    const t0 = Date.now();
    try {
        const result = await handler(params);
        send({ ...result, id });
        log(`${cmd} (id=${id}) ok in ${Date.now() - t0} ms`);
        if (cmd === "stop") await shutdown(true);
    } catch (e) {
        log(`${cmd} (id=${id}) failed:`, e);
        send({ id, error: e?.message ? String(e.message) : String(e) });
    }
});
rl.on("close", () => {
    log("stdin closed, exiting");
    shutdown(true);
});
send({ id: null, event: "ready", node: process.version });
log("ready");
