// wsgw browser client: a dependency-free ES module for the wsgw WebSocket gateway.
// Wire contract: docs/protocol.md. Works in browsers, and in Node >= 20 when a WebSocket
// implementation (e.g. the `ws` package) is passed as `options.WebSocket`.

// ---- Types (tsc emits wsgw.d.ts from these: `npm run build:types`) ----

/**
 * Any JSON value.
 * @typedef {null | boolean | number | string | JsonArray | JsonObject} Json
 */

/**
 * A JSON array.
 * @typedef {Json[]} JsonArray
 */

/**
 * A JSON object.
 * @typedef {{ [key: string]: Json }} JsonObject
 */

/**
 * Connection state.
 * @typedef {'connecting' | 'open' | 'reconnecting' | 'closed'} WsgwState
 */

/**
 * Error codes of the gateway's `error` frames.
 * @typedef {'unauthorized' | 'token_expired' | 'forbidden' | 'bad_request' | 'too_large' | 'rate_limited'
 *   | 'not_found' | 'internal' | 'unavailable' | 'timeout'} WsgwErrorCode
 */

/**
 * Codes the client adds: the socket dropped before the answer, the client was closed, a backend
 * answered `ok: false` without a code, `getToken`/`onTokenExpired` failed, the socket could not be
 * created. A `number` is a close code (on `connect()` rejections).
 * @typedef {'disconnected' | 'closed' | 'backend_error' | 'token' | 'connect'} WsgwClientCode
 */

/**
 * Minimal WebSocket the client needs (browser WebSocket, the `ws` package, …).
 * @typedef {object} WebSocketLike
 * @property {number} readyState
 * @property {(data: string) => void} send
 * @property {(code?: number, reason?: string) => void} close
 * @property {((ev: { data: any }) => void) | null} onmessage
 * @property {((ev: { code: number, reason: string }) => void) | null} onclose
 * @property {((ev: any) => void) | null} onerror
 */

/**
 * A WebSocket constructor. Typed loosely so that the browser's WebSocket, the `ws` package and
 * undici all fit. The client passes the subprotocols `['wsgw.v1', 'bearer.<jwt>']`.
 * @typedef {new (url: string, protocols?: string | string[]) => any} WebSocketConstructor
 */

/**
 * @typedef {object} BackoffOptions
 * @property {number} [initialMs] First delay, in ms. Default 500.
 * @property {number} [maxMs] Largest delay, in ms. Default 30000.
 * @property {number} [factor] Growth per failed attempt. Default 2.
 * @property {number} [jitter] Fraction of each delay taken off at random (0..1). Default 0.5.
 */

/**
 * @typedef {object} WsgwClientOptions
 * @property {string} [token] The JWT. One of `token` or `getToken` is required.
 * @property {() => Promise<string> | string} [getToken] Called for a JWT before the first connection
 *   attempt, and again only when the kept one expires within a minute (its `exp`) or was refused
 *   (4001, 4003).
 * @property {() => Promise<string> | string} [onTokenExpired] Called on close 4003 (token expired);
 *   returns a new JWT, then the client reconnects. Without it (and without `getToken`), 4003 is final.
 * @property {WebSocketConstructor} [WebSocket] WebSocket implementation. Default `globalThis.WebSocket`.
 * @property {BackoffOptions} [backoff] Reconnect backoff.
 * @property {number} [requestTimeoutMs] How long a call (subscribe, publish, request, …) waits for
 *   its answer. Default 30000.
 * @property {string} [connectionId] Resume this connection id on the first connect (e.g. kept from
 *   an earlier page load).
 * @property {string} [lastEventId] Replay events after this id on the first connect (a saved
 *   `lastEventId`: in a Redis Cluster deployment one id per shard, joined with `,`).
 */

/**
 * @typedef {object} HeartbeatInfo
 * @property {number} interval_ms
 * @property {number} timeout_ms
 */

/**
 * The first frame of every connection.
 * @typedef {object} WelcomeFrame
 * @property {'welcome'} type
 * @property {string} connection_id
 * @property {string} user_id
 * @property {string} node
 * @property {boolean} resumed
 * @property {boolean} recovered
 * @property {number} replayed
 * @property {HeartbeatInfo} heartbeat
 * @property {number} session_ttl_ms
 * @property {string[]} [channels] Topics restored by a resume; absent when none.
 * @property {string[]} [not_replayed] Restored patterns whose events were not replayed (patterns
 *   have no history): `recovered` does not cover the channels reached only through them. Absent
 *   when none.
 */

/**
 * An event. `event_id` is absent for ephemeral events.
 * @template [T=Json]
 * @typedef {object} EventFrame
 * @property {'event'} type
 * @property {string} [event_id]
 * @property {string} channel
 * @property {string} event
 * @property {T} data
 * @property {number} ts Publish time, ms since the epoch.
 */

/**
 * @typedef {object} SubscribedFrame
 * @property {'subscribed'} type
 * @property {string} channel
 * @property {Json} [request_id]
 * @property {boolean} recovered `false` when the requested catch-up cannot be complete.
 * @property {number} replayed Events replayed right after this frame.
 */

/**
 * The server cannot prove that this live socket missed no event of these channels and patterns
 * (after an outage, their history no longer held everything published meanwhile). The socket
 * stays open; reload their state from your backend.
 * @typedef {object} GapFrame
 * @property {'gap'} type
 * @property {string[]} channels Channel names and patterns.
 * @property {false} recovered Always `false`.
 */

/**
 * @typedef {object} UnsubscribedFrame
 * @property {'unsubscribed'} type
 * @property {string} channel
 * @property {Json} [request_id]
 * @property {string} [reason] Set when the server removed the subscription by itself (e.g. after
 *   `refresh`).
 */

/**
 * @typedef {object} AckFrame
 * @property {'ack'} type
 * @property {Json} [request_id]
 * @property {string} [event_id]
 */

/**
 * @typedef {object} ErrorFrame
 * @property {'error'} type
 * @property {WsgwErrorCode} code
 * @property {string} message
 * @property {Json} [request_id]
 */

/**
 * @template [T=Json]
 * @typedef {object} ResponseFrame
 * @property {'response'} type
 * @property {Json} request_id
 * @property {boolean} ok
 * @property {T} [data]
 * @property {Json} [error]
 * @property {boolean} [more]
 */

/**
 * The answer to `history()`.
 * @template [T=Json]
 * @typedef {object} HistoryFrame
 * @property {'history'} type
 * @property {string} channel
 * @property {Json} request_id
 * @property {EventFrame<T>[]} events In id order, each the event frame a subscriber receives.
 * @property {boolean} recovered `false` when events after `since` may have been lost (trimmed or
 *   expired); always `true` without `since`.
 */

/**
 * A socket in a presence list.
 * @typedef {object} PresenceClient
 * @property {string} user_id
 * @property {string} connection_id
 * @property {string} node The gateway node holding the socket.
 */

/**
 * The answer to `presence()`: who is subscribed to a channel, cluster-wide.
 * @typedef {object} PresenceFrame
 * @property {'presence'} type
 * @property {string} channel
 * @property {Json} request_id
 * @property {PresenceClient[]} clients
 */

/**
 * A socket subscribed to (`join`) or left (`leave`: unsubscribed, disconnected, or its node died)
 * a channel whose presence the gateway tracks. Ephemeral: never in history, never replayed.
 * @typedef {object} PresenceChangeFrame
 * @property {'join' | 'leave'} type
 * @property {string} channel
 * @property {string} user_id
 * @property {string} connection_id
 */

/**
 * A subscription's events and what their handlers receive.
 * @template [T=Json]
 * @typedef {object} SubscriptionEvents
 * @property {EventFrame<T>} event An event of the channel (or of a channel the pattern matches).
 * @property {PresenceChangeFrame} join A socket subscribed to the channel.
 * @property {PresenceChangeFrame} leave A socket left the channel.
 * @property {WsgwError} error The gateway refused something about this subscription: the
 *   subscribe (also a subscribe again after a reconnect), or a `history()`/`presence()` call (which
 *   also rejects). `.code` is the gateway's code (`forbidden`, `bad_request`, …), `.frame` the
 *   error frame.
 * @property {SubscribedFrame} subscribed The gateway confirmed the subscription (again after a
 *   reconnect that did not restore it).
 * @property {UnsubscribedFrame} unsubscribed The gateway removed the subscription by itself
 *   (e.g. after `refresh`); no more events come.
 * @property {GapFrame} gap Events of this channel may have been missed; reload its state.
 */

/**
 * @typedef {object} CloseInfo
 * @property {number} code
 * @property {string} reason
 * @property {boolean} willReconnect
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {number} [history] First send the channel's last N events.
 * @property {string} [lastEventId] First replay the channel's events after this id (wins over
 *   `history`).
 */

/**
 * @typedef {object} HistoryOptions
 * @property {string} [since] The oldest `limit` events after this id; absent: the newest `limit`.
 * @property {number} [limit] Default 100 (the gateway's), capped at the gateway's `max_replay`.
 */

/**
 * @typedef {object} PublishOptions
 * @property {boolean} [echo] `false`: this socket does not receive its own event.
 */

/**
 * @template [C=Json]
 * @typedef {object} RequestOptions
 * @property {(data: C) => void} [onChunk] Receives each `more: true` chunk's data, in order.
 * @property {number} [timeoutMs] Overrides `requestTimeoutMs` (also the wait between chunks).
 */

/**
 * The client's own events and what their handlers receive.
 * @typedef {object} WsgwClientEvents
 * @property {WsgwState} state
 * @property {WelcomeFrame} welcome
 * @property {ErrorFrame | WsgwError} error Error frames answering no pending call, and client-side
 *   failures.
 * @property {CloseInfo} close
 * @property {UnsubscribedFrame} unsubscribed A topic the server removed by itself.
 * @property {GapFrame} gap Events of these channels may have been missed; the socket stays open.
 */

/** Close codes after which the client never reconnects by itself. */
const FINAL = new Set([1000, 4001, 4004]);
/** Close codes after which the client reconnects at once, with jitter: "server going away", and
 * "taken over" (4010, a newer socket resumed this connection id: this client starts afresh). */
const AT_ONCE = new Set([1001, 1012, 4010]);
/** Close code for a socket whose connection id a newer socket resumed (docs/protocol.md). */
const REPLACED = 4010;
/** Names of the client's own events; any other `on()` name is a channel. */
const BUILTIN = new Set(['state', 'welcome', 'error', 'close', 'unsubscribed', 'gap']);
/** The subprotocol offered with the token item (docs/protocol.md, "The token"). */
const SUBPROTOCOL = 'wsgw.v1';
/** `getToken` is asked again when the token expires within this many ms. */
const TOKEN_MARGIN_MS = 60000;

/**
 * The `exp` claim of a JWT, in ms since the epoch; null when the token has none or is unreadable
 * (it is not verified: the gateway does that).
 * @param {string} token
 * @returns {number | null}
 */
function tokenExpiry(token) {
  try {
    const part = String(token).split('.')[1];
    if (!part) return null;
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const exp = JSON.parse(new TextDecoder().decode(bytes))?.exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : null;
  } catch {
    return null;
  }
}

/** An error carrying the gateway's `code` (e.g. `forbidden`, `unavailable`, `disconnected`). */
export class WsgwError extends Error {
  /**
   * @param {string|number} code error frame code, close code, or a client code
   * @param {string} message
   * @param {object} [frame] the frame that caused it, when there is one
   */
  constructor(code, message, frame) {
    super(message);
    this.name = 'WsgwError';
    /**
     * A gateway error code, a client code, or a close code.
     * @readonly
     * @type {WsgwErrorCode | WsgwClientCode | (string & {}) | number}
     */
    this.code = code;
    /**
     * The frame that caused it (error frame, response frame, or the client frame that failed).
     * @readonly
     * @type {object | undefined}
     */
    this.frame;
    if (frame !== undefined) /** @type {{frame: object}} */ (this).frame = frame;
    /**
     * For `ok: false` responses: their `data`, when present.
     * @readonly
     * @type {Json | undefined}
     */
    this.data;
  }
}

/**
 * Parses an event id `<ms>-<seq>` (a bare `<ms>` means `<ms>-0`).
 * @param {string} id
 * @returns {[number, number] | null} null when unreadable
 */
export function parseEventId(id) {
  const m = /^(\d+)(?:-(\d+))?$/.exec(String(id));
  return m ? [Number(m[1]), Number(m[2] ?? 0)] : null;
}

/**
 * The id-shard an event id names: `'6'` for `6~1732240000123-5` (Redis Cluster), `''` for a
 * single-primary id.
 * @param {string} id
 * @returns {string}
 */
function idShard(id) {
  const s = String(id);
  const i = s.indexOf('~');
  return i < 0 ? '' : s.slice(0, i);
}

/**
 * Compares two event ids numerically on (ms, seq), never as strings: `9-5` < `10-0`.
 * Unreadable ids sort before every readable one. Ids of a Redis Cluster deployment
 * (`<shard>~<ms>-<seq>`) compare within their shard only: each shard has its own sequence.
 * @param {string} a
 * @param {string} b
 * @returns {number} negative, zero or positive
 * @throws {RangeError} when the ids name different shards (or one names a shard and the other
 *   does not): they are not ordered
 */
export function compareEventIds(a, b) {
  const sa = idShard(a);
  const sb = idShard(b);
  if (sa !== sb) throw new RangeError(`wsgw: event ids of different shards are not ordered: ${a}, ${b}`);
  const x = parseEventId(sa ? String(a).slice(sa.length + 1) : a) ?? [-1, -1];
  const y = parseEventId(sb ? String(b).slice(sb.length + 1) : b) ?? [-1, -1];
  return x[0] - y[0] || x[1] - y[1];
}

/** How many id-shards a Redis Cluster deployment spreads channels over (a constant of the id format). */
const ID_SHARDS = 16;

/** CRC-32 table (IEEE 802.3, reflected, as zlib's `crc32`): browsers have no crc32 of their own. */
const CRC_TABLE = /* @__PURE__ */ (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xEDB88320 : c >>> 1;
    table[i] = c;
  }
  return table;
})();

/**
 * The id-shard of a channel in a Redis Cluster deployment: the CRC-32 (IEEE, as zlib's `crc32`)
 * of its UTF-8 name, modulo 16. Every event id of the channel names this shard
 * (`6~1732240000123-5` for `user:42`).
 * @param {string} channel
 * @returns {number} 0..15
 */
export function shardOf(channel) {
  let c = 0xFFFFFFFF;
  for (const b of new TextEncoder().encode(channel)) c = (c >>> 8) ^ CRC_TABLE[(c ^ b) & 0xFF];
  return ((c ^ 0xFFFFFFFF) >>> 0) % ID_SHARDS;
}

/**
 * The one id a `subscribe` sends as `last_event_id` (the gateway takes one id there): given a
 * joined cursor, the part naming the channel's shard, else its first part (an id of another shard
 * replays nothing; the gateway answers `recovered` for the channel as it can prove it).
 * @param {string} channel
 * @param {string} id
 */
function subscribeId(channel, id) {
  if (!id.includes(',')) return id;
  const parts = id.split(',');
  const own = `${shardOf(channel)}~`;
  return parts.find((p) => p.startsWith(own)) ?? parts[0];
}

/** `a` (an id) is above `b` (an id, or null: below every id). */
const above = (a, b) => b === null || compareEventIds(a, b) > 0;
/** The higher of two ids, either of which may be null. */
const maxId = (a, b) => (a === null ? b : b === null ? a : above(a, b) ? a : b);

/**
 * The cursor of one id-shard (docs/protocol.md, "The cursor a client keeps"): what a resume sends
 * as `last_event_id` for that shard, and which of its events after it the application already
 * has. A single-primary deployment has one shard (`''`); `Cursor` below keeps one per shard.
 *
 * - `highest`: the highest event id received.
 * - A `subscribed` with `replayed: N > 0` starts a catch-up of its channel: the next N durable
 *   events there are older ones. `last`: the last catch-up id received, at first the subscribe's
 *   `last_event_id` (null for `history`).
 * - A lost socket turns the unfinished catch-ups into `filter.behind` (channel -> the id up to
 *   which the application has that channel's events). The resume sends the lowest of those and
 *   `highest`; after the welcome, events at or below `filter.old` (the old highest) are dropped,
 *   except those of a `behind` channel above its id, and those of channels the application
 *   subscribes to meanwhile (`filter.new`); the first event above `filter.old` ends it.
 * - Subscribe kinds: 'new' (the application subscribes to a channel it did not follow), 'again'
 *   (the client subscribes again to a topic a resume did not restore), 'same' (the channel is
 *   subscribed on the socket already: nothing is replayed).
 */
class ShardCursor {
  /** @type {string|null} */
  highest;
  /** channel -> {remaining, last}: unfinished catch-ups on the current socket. */
  catchups = new Map();
  /** request id -> {channel, from, kind}: subscribes sent on the current socket, not answered. */
  pending = new Map();
  /** {old, behind: Map<channel, id>, new: Set<channel>} after a lost socket cut a catch-up short. */
  filter = null;

  constructor(highest) { this.highest = highest ?? null; }

  /** What the next resume sends as `last_event_id`. */
  resumeId() {
    let min = null;
    for (const id of this.#behind().values()) if (min === null || above(min, id)) min = id;
    return min ?? this.highest;
  }

  /** The `last_event_id` for subscribing to a topic again that a resume did not restore. */
  resubscribeFrom(channel) { return this.filter?.behind.get(channel) ?? this.highest; }

  /** A durable event arrived; returns false when the application already has it. */
  event(channel, id) {
    const c = this.catchups.get(channel);
    if (c) {
      c.last = maxId(c.last, id);
      if (--c.remaining <= 0) this.catchups.delete(channel);
    }
    if (this.filter && !this.filter.new.has(channel)) {
      if (above(id, this.filter.old)) {
        this.filter = null; // the replay has passed the old cursor: nothing older repeats
      } else {
        const b = this.filter.behind.get(channel);
        if (b === undefined || !above(id, b)) return false;
        this.filter.behind.set(channel, id);
      }
    }
    if (above(id, this.highest)) this.highest = id;
    return true;
  }

  /** `kind`: 'new', 'again' or 'same' (see above). */
  subscribeSent(rid, channel, from, kind) { this.pending.set(rid, { channel, from: from ?? null, kind }); }

  subscribed(rid, channel, replayed) {
    const p = this.pending.get(rid);
    this.pending.delete(rid);
    // A new channel's catch-up may be older than the old cursor: the filter must not take it.
    if (this.filter && p?.kind === 'new') this.filter.new.add(channel);
    if (replayed > 0 && !channel.includes('*')) {
      this.catchups.set(channel, { remaining: replayed, last: p?.from ?? null });
    }
  }

  refused(rid) { this.pending.delete(rid); }

  unsubscribed(channel) {
    this.catchups.delete(channel);
    for (const [rid, p] of this.pending) if (p.channel === channel) this.pending.delete(rid);
    // The filter stays: repeats of other channels may still be on their way.
    this.filter?.new.delete(channel);
    this.filter?.behind.delete(channel);
  }

  /** The socket is gone (again: no change). */
  disconnected() {
    const behind = this.#behind();
    this.catchups.clear();
    this.pending.clear();
    this.filter = behind.size > 0 ? { old: this.highest, behind, new: new Set() } : null;
  }

  /** A new socket was welcomed: nothing sent before it is in flight any more. */
  connected() { this.pending.clear(); }

  /** Channels the application has only up to an id below `highest`, and that id. */
  #behind() {
    const out = new Map(this.filter?.behind ?? []);
    const starts = [...this.catchups].map(([ch, c]) => [ch, c.last, Boolean(this.filter?.new.has(ch))]);
    for (const p of this.pending.values()) {
      // A subscribe in flight: a catch-up may have started and delivered nothing yet.
      if (p.kind !== 'same' && !this.catchups.has(p.channel)) starts.push([p.channel, p.from, p.kind === 'new']);
    }
    for (const [channel, start, isNew] of starts) {
      if (start === null) continue; // a `history` preview cut before its first event is not repeated
      // What the application had of the channel apart from this catch-up.
      const base = this.filter && !isNew ? (this.filter.behind.get(channel) ?? this.filter.old) : null;
      const have = maxId(base, start);
      if (this.highest === null || above(this.highest, have)) out.set(channel, have);
      else out.delete(channel);
    }
    return out;
  }
}

/**
 * The client's cursor: one `ShardCursor` per id-shard. In a Redis Cluster deployment every id
 * names its shard (`<shard>~<ms>-<seq>`), ids of different shards are not ordered, and a channel
 * lives in one shard (`shardOf`), so every rule of the cursor holds within each shard on its own:
 * an event goes to its id's shard, a subscribe and its answers to its channel's shard. The resume
 * sends each shard's id, joined with `,` in ascending shard order. Single-primary ids
 * (`<ms>-<seq>`) have the one shard `''`, whose id is sent as it is.
 *
 * Which kind of ids the deployment issues is learnt from the ids it sends (and the initial
 * cursor); before any, channels go to `''`. The first id of the other kind (the first event of a
 * cluster deployment, or a deployment moved to or from a cluster) starts the positions afresh: an
 * id of one kind means nothing in the other's sequences. Subscribes in flight and catch-ups carry
 * over to their channel's shard, without a position.
 */
class Cursor {
  /** shard ('' for single-primary ids) -> its ShardCursor */
  #shards = new Map();
  /** Whether ids name their shard; null until an id has told. */
  #sharded = null;

  /** @param {string} [initial] an id, or a cluster cursor (`3~…,7~…`) */
  constructor(initial) {
    if (initial === undefined || initial === null) return;
    if (!String(initial).includes('~')) {
      this.#sharded = false;
      this.#shards.set('', new ShardCursor(initial));
      return;
    }
    this.#sharded = true;
    for (const id of String(initial).split(',')) {
      const shard = idShard(id);
      if (!shard) continue; // not a cluster id: no position in any shard
      const s = this.#at(shard);
      s.highest = maxId(s.highest, id);
    }
  }

  /** What the next resume sends as `last_event_id`. */
  resumeId() {
    if (!this.#sharded) return this.#shards.get('')?.resumeId() ?? null;
    const ids = [...this.#shards]
      .sort(([a], [b]) => Number(a) - Number(b) || (a < b ? -1 : a > b ? 1 : 0))
      .map(([, s]) => s.resumeId())
      .filter((id) => id !== null);
    return ids.length > 0 ? ids.join(',') : null;
  }

  /** The `last_event_id` for subscribing to a topic again that a resume did not restore: its
   * shard's. */
  resubscribeFrom(channel) { return this.#shards.get(this.#shardOf(channel))?.resubscribeFrom(channel) ?? null; }

  /** A durable event arrived; returns false when the application already has it. */
  event(channel, id) {
    this.#learn(id);
    return this.#at(idShard(id)).event(channel, id);
  }

  subscribeSent(rid, channel, from, kind) {
    if (from !== undefined && from !== null && this.#sharded === null) this.#learn(from);
    this.#at(this.#shardOf(channel)).subscribeSent(rid, channel, this.#position(channel, from), kind);
  }

  subscribed(rid, channel, replayed) { this.#at(this.#shardOf(channel)).subscribed(rid, channel, replayed); }

  refused(rid) { for (const s of this.#shards.values()) s.refused(rid); }

  unsubscribed(channel) { this.#shards.get(this.#shardOf(channel))?.unsubscribed(channel); }

  disconnected() { for (const s of this.#shards.values()) s.disconnected(); }

  connected() { for (const s of this.#shards.values()) s.connected(); }

  /** The shard `channel`'s ids name. */
  #shardOf(channel) { return this.#sharded ? String(shardOf(channel)) : ''; }

  /** @returns {ShardCursor} */
  #at(shard) {
    let s = this.#shards.get(shard);
    if (!s) this.#shards.set(shard, (s = new ShardCursor()));
    return s;
  }

  /** A subscribe's `last_event_id` as a position in `channel`'s shard: the part naming that shard
   * of a cluster cursor; null when it names none, or is of the other kind. */
  #position(channel, from) {
    if (from === undefined || from === null) return null;
    if (!this.#sharded) return String(from).includes('~') ? null : from;
    const shard = this.#shardOf(channel);
    return String(from).split(',').find((id) => idShard(id) === shard) ?? null;
  }

  /** Notes the kind of `id`; on a change, starts the positions afresh (see above). */
  #learn(id) {
    const sharded = idShard(id) !== '';
    if (this.#sharded === sharded) return;
    const was = this.#sharded;
    this.#sharded = sharded;
    if (was === null && !sharded) return; // before any id, channels went to '': their home already
    const old = [...this.#shards.values()];
    this.#shards = new Map();
    for (const s of old) {
      for (const [rid, p] of s.pending) this.#at(this.#shardOf(p.channel)).pending.set(rid, { ...p, from: null });
      for (const [ch, c] of s.catchups) this.#at(this.#shardOf(ch)).catchups.set(ch, { ...c, last: null });
    }
  }
}

/** Pending map key for a request_id (the gateway echoes any JSON value). */
const keyOf = (rid) => (typeof rid === 'string' ? rid : JSON.stringify(rid));

/** Glob match where `*` matches any run of characters, as in subscription patterns. */
function globMatch(pattern, name) {
  const re = new RegExp('^' + pattern.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$');
  return re.test(name);
}

/**
 * Handlers by name, for a client and its subscriptions (internal). A throwing handler does not
 * stop the others: its error is rethrown in a microtask.
 */
class Listeners {
  /** @type {Map<string, Set<(value: any) => void>>} */
  #map = new Map();

  /**
   * @param {string} name
   * @param {(value: any) => void} handler
   */
  add(name, handler) {
    if (!this.#map.has(name)) this.#map.set(name, new Set());
    this.#map.get(name).add(handler);
  }

  /**
   * @param {string} name
   * @param {(value: any) => void} handler
   */
  remove(name, handler) {
    const set = this.#map.get(name);
    if (set && set.delete(handler) && set.size === 0) this.#map.delete(name);
  }

  /**
   * @param {string} name
   * @param {any} value
   */
  emit(name, value) {
    for (const h of [...(this.#map.get(name) ?? [])]) {
      try { h(value); } catch (err) { queueMicrotask(() => { throw err; }); }
    }
  }

  /** @returns {IterableIterator<string>} the names with at least one handler */
  names() {
    return this.#map.keys();
  }
}

/**
 * One `subscribe()` of a channel or pattern, with its own handlers: `event`, `join`, `leave`,
 * `error`, `subscribed`, `unsubscribed`, `gap` (see {@link SubscriptionEvents}). `T` types the
 * events' `data`.
 *
 * It is also a promise of the `subscribed` frame (`await client.subscribe(…)` works as before),
 * rejected when the gateway refuses the subscribe; the refusal goes to `error` handlers too.
 * Made by `WsgwClient.subscribe`, not by hand.
 * @template [T=Json]
 * @implements {PromiseLike<SubscribedFrame>}
 */
export class Subscription {
  /** @type {Promise<SubscribedFrame>} */
  #ready;
  /** @type {SubscriptionLink} */
  #link;
  #listeners = new Listeners();
  #active = true;

  /**
   * @param {string} channel
   * @param {SubscriptionLink} link what the client lends the subscription (internal)
   */
  constructor(channel, link) {
    /**
     * The channel or pattern.
     * @readonly
     * @type {string}
     */
    this.channel = channel;
    this.#link = link;
    this.#ready = link.attach(this, (name, value) => this.#emit(name, value), () => { this.#active = false; });
    // A refusal nobody awaits is reported to `error` handlers, not as an unhandled rejection.
    this.#ready.catch(() => {});
  }

  /** Whether events still come: false after `unsubscribe()`, `client.unsubscribe(channel)`, or a
   * refusal or removal by the gateway.
   * @returns {boolean} */
  get active() { return this.#active; }

  /**
   * The `subscribed` frame (as a promise).
   * @template [R1=SubscribedFrame]
   * @template [R2=never]
   * @param {((value: SubscribedFrame) => R1 | PromiseLike<R1>) | null} [onFulfilled]
   * @param {((reason: any) => R2 | PromiseLike<R2>) | null} [onRejected]
   * @returns {Promise<R1 | R2>}
   */
  then(onFulfilled, onRejected) { return this.#ready.then(onFulfilled, onRejected); }

  /**
   * @template [R=never]
   * @param {((reason: any) => R | PromiseLike<R>) | null} [onRejected]
   * @returns {Promise<SubscribedFrame | R>}
   */
  catch(onRejected) { return this.#ready.catch(onRejected); }

  /**
   * @param {(() => void) | null} [onFinally]
   * @returns {Promise<SubscribedFrame>}
   */
  finally(onFinally) { return this.#ready.finally(onFinally); }

  /**
   * Adds a handler.
   * @template {keyof SubscriptionEvents<T>} K
   * @param {K} name `event`, `join`, `leave`, `error`, `subscribed`, `unsubscribed` or `gap`
   * @param {(value: SubscriptionEvents<T>[K]) => void} handler
   * @returns {() => void} a function that removes the handler
   */
  on(name, handler) {
    this.#listeners.add(name, handler);
    return () => this.off(name, handler);
  }

  /**
   * Removes a handler added with `on`.
   * @template {keyof SubscriptionEvents<T>} K
   * @param {K} name
   * @param {(value: SubscriptionEvents<T>[K]) => void} handler
   * @returns {void}
   */
  off(name, handler) {
    this.#listeners.remove(name, handler);
  }

  /**
   * Who is subscribed to the channel, cluster-wide (channels whose presence the gateway tracks).
   * @returns {Promise<PresenceFrame>} the `presence` frame; rejects with a WsgwError (`.code`
   *   'forbidden', 'bad_request', 'timeout', 'disconnected', …), also given to `error` handlers
   */
  presence() { return this.#link.presence(); }

  /**
   * Reads the channel's history (see `WsgwClient.history`).
   * @param {HistoryOptions} [opts]
   * @returns {Promise<HistoryFrame<T>>} rejects with a WsgwError, also given to `error` handlers
   */
  history(opts) { return this.#link.history(opts ?? {}); }

  /**
   * Stops this subscription's handlers. The channel is left (an `unsubscribe` frame) when no
   * other active subscription of the client follows it.
   * @returns {Promise<UnsubscribedFrame | null>} the `unsubscribed` frame, or null when nothing
   *   was sent (other subscriptions remain, or it was not active)
   */
  unsubscribe() {
    if (!this.#active) return Promise.resolve(null);
    this.#active = false;
    return this.#link.release();
  }

  /**
   * @param {string} name
   * @param {any} value
   */
  #emit(name, value) {
    if (!this.#active && name !== 'error' && name !== 'unsubscribed') return;
    this.#listeners.emit(name, value);
  }
}

/**
 * What a client lends a Subscription (internal).
 * @typedef {object} SubscriptionLink
 * @property {(sub: Subscription<any>, emit: (name: string, value: any) => void, end: () => void)
 *   => Promise<SubscribedFrame>} attach registers it; the subscribe's answer
 * @property {() => Promise<PresenceFrame>} presence
 * @property {(opts: HistoryOptions) => Promise<HistoryFrame<any>>} history
 * @property {() => Promise<UnsubscribedFrame | null>} release
 */

/**
 * A reconnecting client for the wsgw gateway.
 *
 * Events (`on(name, handler)`):
 * - a channel name (or a pattern containing `*`, other than `*` alone): its events;
 * - `event:<name>`: events with that event name, on any channel;
 * - `*`: every event;
 * - `state` (s: 'connecting'|'open'|'reconnecting'|'closed'), `welcome` (the welcome frame),
 *   `error` (error frames that answer no pending call, or WsgwError for client-side failures),
 *   `close` ({code, reason, willReconnect}), `unsubscribed` (a topic removed by the server),
 *   `gap` (the `gap` frame: the server cannot prove this socket missed nothing on those channels).
 * Event handlers receive the event frame `{type:'event', event_id?, channel, event, data, ts}`.
 */
export class WsgwClient {
  #url; #opts; #WS; #backoff; #timeoutMs; #token;
  /** The token was refused (4001/4003): `getToken` must supply another. */
  #tokenStale = false;
  /** The current socket's token came from `getToken` for that very attempt. */
  #tokenFresh = false;
  #ws = null;
  #gen = 0;
  #want = false;
  #attempt = 0;
  #retryTimer = null;
  #watchdog = null;
  #welcome = null;
  #waiters = [];
  #listeners = new Listeners();
  /** Topics the application wants: channel -> {history?, lastEventId?}. */
  #topics = new Map();
  /** Subscription objects: channel or pattern -> Map<Subscription, {emit, end}>. */
  #subs = new Map();
  /** Calls awaiting an answer: key -> {frame, resolve, reject, timer, sent, onChunk?, map?}. */
  #pending = new Map();
  #seq = 0;
  /** @type {WsgwState} */
  #state = 'closed';
  #connectionId = null;
  /** The cursor: what a resume sends as `last_event_id`. */
  #cursor;
  #node = null;

  /**
   * @param {string} url the gateway's `/ws` address, e.g. `wss://example.com/ws` (http(s) works too)
   * @param {WsgwClientOptions} options
   */
  constructor(url, options) {
    if (!options?.token && !options?.getToken) throw new TypeError('wsgw: options.token or options.getToken is required');
    this.#WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WS !== 'function') throw new TypeError('wsgw: no WebSocket implementation; pass options.WebSocket');
    this.#url = url;
    this.#opts = options;
    this.#token = options.token ?? null;
    this.#backoff = { initialMs: 500, maxMs: 30000, factor: 2, jitter: 0.5, ...options.backoff };
    this.#timeoutMs = options.requestTimeoutMs ?? 30000;
    this.#connectionId = options.connectionId ?? null;
    this.#cursor = new Cursor(options.lastEventId);
  }

  /** @returns {WsgwState} */
  get state() { return this.#state; }
  /** The current (or last) connection id, used to resume the session.
   * @returns {string | null} */
  get connectionId() { return this.#connectionId; }
  /** What the next resume sends as `last_event_id`: the highest event id received (numeric
   * order), or lower while a subscribe catch-up is unfinished. In a Redis Cluster deployment
   * (ids `<shard>~<ms>-<seq>`): that id for each shard, joined with `,` in shard order.
   * @returns {string | null} */
  get lastEventId() { return this.#cursor.resumeId(); }
  /** The gateway node of the current (or last) connection.
   * @returns {string | null} */
  get node() { return this.#node; }
  /** The underlying WebSocket. For tests only: closing it simulates a network drop.
   * @returns {WebSocketLike | null} */
  get _socket() { return this.#ws; }

  /**
   * Opens the connection (and keeps it open, reconnecting as needed, until `close()`).
   * @returns {Promise<WelcomeFrame>} resolves with the next welcome frame; rejects with a WsgwError whose
   *   `code` is the close code when the client gives up (4001, 4004, …) or 'closed' after `close()`.
   */
  connect() {
    if (this.#state === 'open' && this.#welcome) return Promise.resolve(this.#welcome);
    const p = new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
    if (!this.#want) {
      this.#want = true;
      this.#attempt = 0;
      this.#setState('connecting');
      this.#open();
    }
    return p;
  }

  /** Closes the connection for good (no reconnect). Pending calls reject with code 'closed'.
   * @returns {void} */
  close() {
    this.#want = false;
    this.#gen++;
    clearTimeout(this.#retryTimer);
    const ws = this.#ws;
    this.#detach();
    this.#cursor.disconnected();
    if (ws) {
      try { ws.close(1000); } catch { /* already closed */ }
      this.#emit('close', { code: 1000, reason: 'closed by the client', willReconnect: false });
    }
    this.#giveUp(new WsgwError('closed', 'wsgw: client closed'));
  }

  /**
   * Subscribes to a topic or pattern. The subscription is kept across reconnects.
   *
   * Returns a {@link Subscription} with its own handlers (`event`, `join`, `leave`, `error`, …)
   * and `presence()`, `history()`, `unsubscribe()`; it is also a promise of the `subscribed` frame,
   * so `await client.subscribe(channel)` gives that frame as before.
   * @template [T=Json]
   * @param {string} channel
   * @param {SubscribeOptions} [opts] catch up first: the last N events, or the events after an id
   *   (`lastEventId` wins when both are given)
   * @returns {Subscription<T>} awaited: the `subscribed` frame; rejects with a WsgwError (`.code`)
   *   on refusal
   */
  subscribe(channel, opts = {}) {
    /** @type {{emit: (name: string, value: any) => void, end: () => void}} */
    let hook;
    /** @type {Subscription<T>} */
    let self;
    const errorTo = (/** @type {WsgwError} */ err) => hook.emit('error', err);
    return (self = new Subscription(channel, {
      attach: (sub, emit, end) => {
        hook = { emit, end };
        if (!this.#subs.has(channel)) this.#subs.set(channel, new Map());
        this.#subs.get(channel).set(sub, hook);
        const kind = this.#topics.has(channel) ? 'same' : 'new';
        this.#topics.set(channel, opts);
        return this.#call(this.#subscribeFrame(channel, opts), { kind }).then((f) => {
          emit('subscribed', f);
          return f;
        }, (err) => {
          if (err.code !== 'disconnected') {
            if (this.#topics.get(channel) === opts) this.#topics.delete(channel);
            this.#dropSub(channel, sub);
          }
          // The gateway's refusal, told once the subscription has ended (`active` is false).
          if (err.frame?.type === 'error') emit('error', err);
          throw err;
        });
      },
      presence: () => this.#call({ type: 'presence', channel }, { errorTo }),
      history: (o) => this.#call(this.#historyFrame(channel, o), { errorTo }),
      release: () => {
        this.#dropSub(channel, self);
        if (this.#subs.has(channel) || !this.#topics.has(channel)) return Promise.resolve(null);
        // Leaving after close() or on a lost socket: nothing more to do, the topic is forgotten.
        return this.unsubscribe(channel).catch((err) => {
          if (err.code === 'closed' || err.code === 'disconnected') return null;
          throw err;
        });
      },
    }));
  }

  /**
   * Leaves a topic or pattern (at once for all of its Subscription objects).
   * @param {string} channel
   * @returns {Promise<UnsubscribedFrame>} the `unsubscribed` frame
   */
  unsubscribe(channel) {
    this.#topics.delete(channel);
    this.#cursor.unsubscribed(channel);
    for (const h of this.#subs.get(channel)?.values() ?? []) h.end();
    this.#subs.delete(channel);
    return this.#call({ type: 'unsubscribe', channel });
  }

  /**
   * Who is subscribed to a channel, cluster-wide (channels whose presence the gateway tracks;
   * the same permission as subscribe).
   * @param {string} channel
   * @returns {Promise<PresenceFrame>} the `presence` frame; rejects with a WsgwError (`.code`:
   *   'forbidden', 'bad_request', 'timeout', 'disconnected', …)
   */
  presence(channel) {
    return this.#call({ type: 'presence', channel });
  }

  /**
   * Publishes a durable event (the token's `publish` claim must allow the channel).
   * @param {string} channel
   * @param {string} event
   * @param {Json} [data]
   * @param {PublishOptions} [opts] `echo: false`: this socket does not receive its own event
   * @returns {Promise<string>} the event id
   */
  publish(channel, event, data, opts = {}) {
    const { echo } = opts;
    const frame = { type: 'publish', channel, event, data: data ?? null };
    if (echo !== undefined) frame.echo = echo;
    return this.#call(frame, { map: (f) => f.event_id });
  }

  /**
   * Reads a channel's history without subscribing (a read: the cursor and the subscriptions stay
   * as they are, and no event handler is called). Without `since`: the newest `limit` events;
   * with it: the oldest `limit` after that id (page forward with the last event's id).
   * @template [T=Json]
   * @param {string} channel
   * @param {HistoryOptions} [opts] `limit` defaults to the gateway's 100 and is capped at its
   *   `max_replay`
   * @returns {Promise<HistoryFrame<T>>} the `history` frame (`events` in id order, `recovered`);
   *   rejects with a WsgwError (`.code`: 'forbidden', 'bad_request', 'unavailable', 'timeout',
   *   'disconnected')
   */
  history(channel, opts = {}) {
    return this.#call(this.#historyFrame(channel, opts));
  }

  /**
   * Sends a request to the backends. Chunks (`more: true`) go to `onChunk` in order.
   * @template [T=Json]
   * @template [C=Json]
   * @param {string} action
   * @param {Json} [data]
   * @param {RequestOptions<C>} [opts]
   * @returns {Promise<T>} the final response's data; rejects when `ok` is false, on an error
   *   frame (e.g. code 'unavailable'), on timeout ('timeout') or when the socket drops ('disconnected')
   */
  request(action, data, opts = {}) {
    const { onChunk, timeoutMs } = opts;
    return this.#call({ type: 'request', action, data: data ?? null }, { onChunk, timeoutMs });
  }

  /**
   * Replaces the connection's token (e.g. before it expires); also used for later reconnects.
   * @param {string} token
   * @returns {Promise<AckFrame>} the `ack` frame
   */
  refresh(token) {
    this.#token = token;
    this.#tokenStale = false;
    return this.#call({ type: 'refresh', token });
  }

  /**
   * Adds a handler for one of the client's events.
   * @template {keyof WsgwClientEvents} K
   * @overload
   * @param {K} name `state`, `welcome`, `error`, `close`, `unsubscribed` or `gap`
   * @param {(value: WsgwClientEvents[K]) => void} handler
   * @returns {() => void} a function that removes the handler
   */
  /**
   * Adds a handler for events: `channelOrEvent` is a channel, a pattern (`room:*`),
   * `event:<name>` or `*` (every event).
   * @template [T=Json]
   * @overload
   * @param {string} channelOrEvent
   * @param {(event: EventFrame<T>) => void} handler
   * @returns {() => void} a function that removes the handler
   */
  /**
   * @param {string} name
   * @param {(value: any) => void} handler
   * @returns {() => void}
   */
  on(name, handler) {
    this.#listeners.add(name, handler);
    return () => this.off(name, handler);
  }

  /**
   * Removes a handler added with `on`.
   * @template {keyof WsgwClientEvents} K
   * @overload
   * @param {K} name
   * @param {(value: WsgwClientEvents[K]) => void} handler
   * @returns {void}
   */
  /**
   * Removes a handler added with `on`.
   * @overload
   * @param {string} channelOrEvent
   * @param {(event: EventFrame<any>) => void} handler
   * @returns {void}
   */
  /**
   * @param {string} name
   * @param {(value: any) => void} handler
   * @returns {void}
   */
  off(name, handler) {
    this.#listeners.remove(name, handler);
  }

  // ---- internals ----

  #emit(name, value) {
    this.#listeners.emit(name, value);
  }

  #setState(s) {
    if (this.#state === s) return;
    this.#state = s;
    this.#emit('state', s);
  }

  async #open() {
    const gen = ++this.#gen;
    let fresh = false;
    try {
      if (this.#opts.getToken && this.#needsToken()) {
        const token = await this.#opts.getToken();
        if (gen !== this.#gen) return;
        this.#token = token;
        this.#tokenStale = false;
        fresh = true;
      }
    } catch (err) {
      if (gen !== this.#gen) return;
      this.#emit('error', new WsgwError('token', `wsgw: getToken failed: ${err?.message ?? err}`));
      return this.#schedule(this.#delay(false));
    }
    if (gen !== this.#gen || !this.#want) return;
    this.#tokenFresh = fresh;
    // The token travels in the Sec-WebSocket-Protocol header, never in the URL (logs keep URLs).
    const u = new URL(this.#url, globalThis.location?.href);
    u.protocol = u.protocol.replace(/^http/, 'ws');
    if (this.#connectionId) u.searchParams.set('connection_id', this.#connectionId);
    const last = this.#cursor.resumeId();
    if (last) u.searchParams.set('last_event_id', last);
    let ws;
    try {
      ws = new this.#WS(u.toString(), [SUBPROTOCOL, `bearer.${this.#token}`]);
    } catch (err) {
      this.#emit('error', new WsgwError('connect', `wsgw: cannot open socket: ${err?.message ?? err}`));
      return this.#lost(1006, 'cannot open socket', false);
    }
    this.#ws = ws;
    ws.onmessage = (e) => { if (this.#ws === ws) this.#onMessage(e.data); };
    ws.onclose = (e) => { if (this.#ws === ws) this.#lost(e.code, e.reason ?? '', this.#welcome !== null); };
    ws.onerror = () => { /* a close event follows */ };
  }

  /** Whether `getToken` must be asked: no token yet, one refused, or one expiring within a minute. */
  #needsToken() {
    if (this.#token === null || this.#tokenStale) return true;
    const exp = tokenExpiry(this.#token);
    return exp !== null && exp - Date.now() < TOKEN_MARGIN_MS;
  }

  /** Stops listening to the current socket. */
  #detach() {
    clearTimeout(this.#watchdog);
    const ws = this.#ws;
    this.#ws = null;
    this.#welcome = null;
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
  }

  /** The socket is gone: reject what it carried, then reconnect or give up. */
  async #lost(code, reason, wasOpen) {
    const ws = this.#ws;
    this.#detach();
    this.#cursor.disconnected();
    if (ws && ws.readyState < 2) try { ws.close(); } catch { /* ignore */ }
    for (const [k, e] of this.#pending) {
      if (!e.sent) continue;
      this.#pending.delete(k);
      clearTimeout(e.timer);
      e.reject(new WsgwError('disconnected', 'wsgw: the connection was lost before the answer', e.frame));
    }
    if (code === 4001 || code === 4003) this.#tokenStale = true;
    // Taken over: a newer socket (e.g. a duplicated tab that copied this id) resumed this
    // connection id. Resuming it again would take it back and start a tug of war: start a fresh
    // session instead; the topics are subscribed again from the cursor, so no event is lost.
    if (code === REPLACED) this.#connectionId = null;
    let retry = this.#want && !FINAL.has(code);
    // A kept token refused (e.g. signed with a rotated key): one more try with a token from
    // getToken. A token fetched for this very attempt and refused is final.
    if (this.#want && code === 4001 && this.#opts.getToken && !this.#tokenFresh) retry = true;
    if (retry && code === 4003) {
      // A new token from onTokenExpired; with getToken alone, the next attempt fetches one.
      const hook = this.#opts.onTokenExpired;
      retry = Boolean(hook || this.#opts.getToken);
      this.#emit('close', { code, reason, willReconnect: retry });
      if (!retry) return this.#giveUp(new WsgwError(code, 'wsgw: token expired'));
      this.#setState('reconnecting');
      const gen = this.#gen;
      try {
        const token = hook ? await hook() : this.#token;
        if (gen !== this.#gen || !this.#want) return;
        this.#token = token;
        if (hook) this.#tokenStale = false;
      } catch (err) {
        if (gen !== this.#gen) return;
        this.#emit('error', new WsgwError('token', `wsgw: token refresh failed: ${err?.message ?? err}`));
        return this.#giveUp(new WsgwError(code, 'wsgw: token expired and could not be refreshed'));
      }
      return this.#schedule(this.#delay(false));
    }
    this.#emit('close', { code, reason, willReconnect: retry });
    if (!retry) return this.#giveUp(new WsgwError(code, `wsgw: connection closed (${code}${reason ? ` ${reason}` : ''})`));
    this.#setState('reconnecting');
    this.#schedule(this.#delay(wasOpen && AT_ONCE.has(code)));
  }

  /** Milliseconds before the next attempt: capped exponential backoff with jitter. */
  #delay(atOnce) {
    const { initialMs, maxMs, factor, jitter } = this.#backoff;
    if (atOnce) return Math.random() * initialMs;
    const base = Math.min(maxMs, initialMs * factor ** this.#attempt++);
    return base * (1 - jitter * Math.random());
  }

  #schedule(ms) {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#open(), ms);
  }

  #giveUp(err) {
    this.#want = false;
    for (const [k, e] of this.#pending) {
      this.#pending.delete(k);
      clearTimeout(e.timer);
      e.reject(new WsgwError(e.frame.type === 'request' ? 'disconnected' : err.code, err.message, e.frame));
    }
    for (const w of this.#waiters.splice(0)) w.reject(err);
    this.#setState('closed');
  }

  /** Closes a socket that has been silent past the heartbeat timeout. */
  #armWatchdog() {
    clearTimeout(this.#watchdog);
    const hb = this.#welcome?.heartbeat;
    if (!hb) return;
    this.#watchdog = setTimeout(() => this.#lost(4000, 'no frame from the server', true), hb.interval_ms + hb.timeout_ms);
  }

  #send(frame) {
    try { this.#ws.send(JSON.stringify(frame)); return true; } catch { return false; }
  }

  /** Sends a pending call's frame; the cursor learns of every subscribe that went out. */
  #sendEntry(entry) {
    entry.sent = this.#send(entry.frame);
    const f = entry.frame;
    if (entry.sent && f.type === 'subscribe') {
      this.#cursor.subscribeSent(f.request_id, f.channel, f.last_event_id, entry.kind);
    }
  }

  /**
   * @param {string} channel
   * @param {HistoryOptions} opts
   */
  #historyFrame(channel, opts) {
    const { since, limit } = opts;
    const frame = { type: 'history', channel };
    if (since !== undefined && since !== null) frame.since = since;
    if (limit !== undefined && limit !== null) frame.limit = limit;
    return frame;
  }

  /** Forgets one Subscription object (no frame is sent). */
  #dropSub(channel, sub) {
    const subs = this.#subs.get(channel);
    const hook = subs?.get(sub);
    if (!hook) return;
    hook.end();
    subs.delete(sub);
    if (subs.size === 0) this.#subs.delete(channel);
  }

  /**
   * The Subscription objects a frame of `channel` concerns: those of the channel, and of the
   * patterns matching it (`exact`: the channel's own only).
   * @param {string} channel
   * @param {boolean} [exact]
   */
  #subsFor(channel, exact = false) {
    const out = [];
    for (const [key, subs] of this.#subs) {
      if (key === channel || (!exact && key.includes('*') && globMatch(key, channel))) out.push(...subs.values());
    }
    return out;
  }

  #subscribeFrame(channel, opts) {
    const frame = { type: 'subscribe', channel };
    if (opts.lastEventId) frame.last_event_id = subscribeId(channel, opts.lastEventId);
    else if (opts.history !== undefined) frame.history = opts.history;
    return frame;
  }

  /** Sends a frame with a fresh request_id (now, or once the socket is open) and awaits its answer. */
  /**
   * @param {any} frame
   * @param {{map?: (f: any) => any, onChunk?: (data: any) => void, timeoutMs?: number, kind?: string,
   *   errorTo?: (err: WsgwError) => void}} [o] `errorTo`: also told of an error frame answering it
   * @returns {Promise<any>}
   */
  #call(frame, o = {}) {
    const { map, onChunk, timeoutMs, kind, errorTo } = o;
    if (!this.#want) return Promise.reject(new WsgwError('closed', 'wsgw: not connected; call connect() first', frame));
    const rid = `c${++this.#seq}`;
    frame.request_id = rid;
    return new Promise((resolve, reject) => {
      const entry = { frame, map, onChunk, kind, errorTo, resolve, reject, sent: false, timeoutMs: timeoutMs ?? this.#timeoutMs };
      entry.timer = setTimeout(() => {
        this.#pending.delete(rid);
        reject(new WsgwError('timeout', `wsgw: no answer to ${frame.type} in time`, frame));
      }, entry.timeoutMs);
      this.#pending.set(rid, entry);
      if (this.#state === 'open') this.#sendEntry(entry);
    });
  }

  #settle(key, entry, err, value) {
    this.#pending.delete(key);
    clearTimeout(entry.timer);
    if (err) entry.reject(err);
    else entry.resolve(entry.map ? entry.map(value) : value);
  }

  #onMessage(raw) {
    let f;
    try { f = JSON.parse(raw); } catch { return; }
    if (!f || typeof f !== 'object') return;
    this.#armWatchdog();
    switch (f.type) {
      case 'ping': this.#send({ type: 'pong' }); break;
      case 'welcome': this.#onWelcome(f); break;
      case 'event': this.#onEvent(f); break;
      case 'subscribed':
        this.#cursor.subscribed(f.request_id, f.channel, f.replayed ?? 0);
        this.#onReply(f); break;
      case 'error':
        this.#cursor.refused(f.request_id);
        this.#onReply(f); break;
      case 'unsubscribed': case 'ack': case 'response': case 'history': case 'presence':
        this.#onReply(f); break;
      case 'join': case 'leave':
        if (typeof f.channel === 'string') for (const h of this.#subsFor(f.channel)) h.emit(f.type, f);
        break;
      case 'gap': {
        this.#emit('gap', f);
        const told = new Set();
        for (const ch of Array.isArray(f.channels) ? f.channels : []) {
          for (const h of this.#subsFor(ch, true)) if (!told.has(h)) { told.add(h); h.emit('gap', f); }
        }
        break;
      }
      default: break; // pong, unknown types
    }
  }

  #onWelcome(f) {
    this.#welcome = f;
    this.#connectionId = f.connection_id;
    this.#node = f.node;
    this.#attempt = 0;
    this.#armWatchdog();
    this.#cursor.connected();
    // Topics the server did not restore (new session, expired or failed resume): subscribe
    // again, catching up from where the application's events of the topic end (the highest id
    // received, or where a catch-up cut short by the lost socket stopped).
    const restored = new Set(f.channels ?? []);
    const queued = new Set([...this.#pending.values()]
      .filter((e) => !e.sent && e.frame.type === 'subscribe').map((e) => e.frame.channel));
    for (const [channel, opts] of this.#topics) {
      if (restored.has(channel) || queued.has(channel)) continue;
      const from = this.#cursor.resubscribeFrom(channel);
      const o = from ? { lastEventId: from } : opts;
      this.#call(this.#subscribeFrame(channel, o), { kind: 'again' }).then((sf) => {
        for (const h of this.#subsFor(channel, true)) h.emit('subscribed', sf);
      }, (err) => {
        if (err.code === 'disconnected' || err.code === 'closed') return;
        const told = this.#subsFor(channel, true);
        if (this.#topics.get(channel) === opts) {
          this.#topics.delete(channel);
          for (const sub of [...this.#subs.get(channel)?.keys() ?? []]) this.#dropSub(channel, sub);
        }
        // Told once the subscriptions have ended, as for a first subscribe refused.
        if (err.frame?.type === 'error') for (const h of told) h.emit('error', err);
        this.#emit('error', err);
      });
    }
    // Those, and the calls made while disconnected.
    for (const e of this.#pending.values()) if (!e.sent) this.#sendEntry(e);
    this.#setState('open');
    this.#emit('welcome', f);
    for (const w of this.#waiters.splice(0)) w.resolve(f);
  }

  #onEvent(f) {
    // false: the application has it already (a resume's replay after a cut catch-up).
    if (f.event_id && !this.#cursor.event(f.channel, f.event_id)) return;
    for (const name of [...this.#listeners.names()]) {
      if ((name === f.channel && !BUILTIN.has(name)) || name === '*' || name === `event:${f.event}` ||
            (name.includes('*') && !name.startsWith('event:') && globMatch(name, f.channel))) {
        this.#emit(name, f);
      }
    }
    for (const h of this.#subsFor(f.channel)) h.emit('event', f);
  }

  #onReply(f) {
    const key = f.request_id === undefined ? undefined : keyOf(f.request_id);
    const entry = key === undefined ? undefined : this.#pending.get(key);
    if (!entry) {
      if (f.type === 'error') {
        this.#emit('error', f);
        if (typeof f.channel === 'string') {
          const err = new WsgwError(f.code, f.message, f);
          for (const h of this.#subsFor(f.channel, true)) h.emit('error', err);
        }
      }
      if (f.type === 'unsubscribed' && f.reason) {
        this.#topics.delete(f.channel);
        this.#cursor.unsubscribed(f.channel);
        this.#emit('unsubscribed', f);
        for (const [sub, h] of [...this.#subs.get(f.channel) ?? []]) {
          h.emit('unsubscribed', f);
          this.#dropSub(f.channel, sub);
        }
      }
      return;
    }
    if (f.type === 'error') {
      const err = new WsgwError(f.code, f.message, f);
      try { entry.errorTo?.(err); } catch (e) { queueMicrotask(() => { throw e; }); }
      return this.#settle(key, entry, err);
    }
    if (f.type !== 'response') return this.#settle(key, entry, null, f);
    if (f.ok && f.more) {
      clearTimeout(entry.timer); // a streamed answer is alive: wait afresh for the next chunk
      entry.timer = setTimeout(() => this.#settle(key, entry,
        new WsgwError('timeout', 'wsgw: no further chunk in time', entry.frame)), entry.timeoutMs);
      try { entry.onChunk?.(f.data); } catch (err) { queueMicrotask(() => { throw err; }); }
      return;
    }
    if (f.ok) return this.#settle(key, entry, null, f.data);
    const e = f.error;
    const code = (e && typeof e === 'object' && e.code) || 'backend_error';
    const message = typeof e === 'string' ? e : (e?.message ?? `wsgw: request ${entry.frame.action} failed`);
    const err = new WsgwError(code, message, f);
    if (f.data !== undefined) /** @type {{data: Json}} */ (err).data = f.data;
    this.#settle(key, entry, err);
  }
}

export default WsgwClient;
