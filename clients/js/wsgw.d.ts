/**
 * Parses an event id `<ms>-<seq>` (a bare `<ms>` means `<ms>-0`).
 * @param {string} id
 * @returns {[number, number] | null} null when unreadable
 */
export function parseEventId(id: string): [number, number] | null;
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
export function compareEventIds(a: string, b: string): number;
/**
 * The id-shard of a channel in a Redis Cluster deployment: the CRC-32 (IEEE, as zlib's `crc32`)
 * of its UTF-8 name, modulo 16. Every event id of the channel names this shard
 * (`6~1732240000123-5` for `user:42`).
 * @param {string} channel
 * @returns {number} 0..15
 */
export function shardOf(channel: string): number;
/** An error carrying the gateway's `code` (e.g. `forbidden`, `unavailable`, `disconnected`). */
export class WsgwError extends Error {
    /**
     * @param {string|number} code error frame code, close code, or a client code
     * @param {string} message
     * @param {object} [frame] the frame that caused it, when there is one
     */
    constructor(code: string | number, message: string, frame?: object);
    /**
     * A gateway error code, a client code, or a close code.
     * @readonly
     * @type {WsgwErrorCode | WsgwClientCode | (string & {}) | number}
     */
    readonly code: WsgwErrorCode | WsgwClientCode | (string & {}) | number;
    /**
     * The frame that caused it (error frame, response frame, or the client frame that failed).
     * @readonly
     * @type {object | undefined}
     */
    readonly frame: object | undefined;
    /**
     * For `ok: false` responses: their `data`, when present.
     * @readonly
     * @type {Json | undefined}
     */
    readonly data: Json | undefined;
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
export class Subscription<T = Json> implements PromiseLike<SubscribedFrame> {
    /**
     * @param {string} channel
     * @param {SubscriptionLink} link what the client lends the subscription (internal)
     */
    constructor(channel: string, link: SubscriptionLink);
    /**
     * The channel or pattern.
     * @readonly
     * @type {string}
     */
    readonly channel: string;
    /** Whether events still come: false after `unsubscribe()`, `client.unsubscribe(channel)`, or a
     * refusal or removal by the gateway.
     * @returns {boolean} */
    get active(): boolean;
    /**
     * The `subscribed` frame (as a promise).
     * @template [R1=SubscribedFrame]
     * @template [R2=never]
     * @param {((value: SubscribedFrame) => R1 | PromiseLike<R1>) | null} [onFulfilled]
     * @param {((reason: any) => R2 | PromiseLike<R2>) | null} [onRejected]
     * @returns {Promise<R1 | R2>}
     */
    then<R1 = SubscribedFrame, R2 = never>(onFulfilled?: ((value: SubscribedFrame) => R1 | PromiseLike<R1>) | null, onRejected?: ((reason: any) => R2 | PromiseLike<R2>) | null): Promise<R1 | R2>;
    /**
     * @template [R=never]
     * @param {((reason: any) => R | PromiseLike<R>) | null} [onRejected]
     * @returns {Promise<SubscribedFrame | R>}
     */
    catch<R = never>(onRejected?: ((reason: any) => R | PromiseLike<R>) | null): Promise<SubscribedFrame | R>;
    /**
     * @param {(() => void) | null} [onFinally]
     * @returns {Promise<SubscribedFrame>}
     */
    finally(onFinally?: (() => void) | null): Promise<SubscribedFrame>;
    /**
     * Adds a handler.
     * @template {keyof SubscriptionEvents<T>} K
     * @param {K} name `event`, `join`, `leave`, `error`, `subscribed`, `unsubscribed` or `gap`
     * @param {(value: SubscriptionEvents<T>[K]) => void} handler
     * @returns {() => void} a function that removes the handler
     */
    on<K extends keyof SubscriptionEvents<T>>(name: K, handler: (value: SubscriptionEvents<T>[K]) => void): () => void;
    /**
     * Removes a handler added with `on`.
     * @template {keyof SubscriptionEvents<T>} K
     * @param {K} name
     * @param {(value: SubscriptionEvents<T>[K]) => void} handler
     * @returns {void}
     */
    off<K extends keyof SubscriptionEvents<T>>(name: K, handler: (value: SubscriptionEvents<T>[K]) => void): void;
    /**
     * Who is subscribed to the channel, cluster-wide (channels whose presence the gateway tracks).
     * @returns {Promise<PresenceFrame>} the `presence` frame; rejects with a WsgwError (`.code`
     *   'forbidden', 'bad_request', 'timeout', 'disconnected', …), also given to `error` handlers
     */
    presence(): Promise<PresenceFrame>;
    /**
     * Reads the channel's history (see `WsgwClient.history`).
     * @param {HistoryOptions} [opts]
     * @returns {Promise<HistoryFrame<T>>} rejects with a WsgwError, also given to `error` handlers
     */
    history(opts?: HistoryOptions): Promise<HistoryFrame<T>>;
    /**
     * Stops this subscription's handlers. The channel is left (an `unsubscribe` frame) when no
     * other active subscription of the client follows it.
     * @returns {Promise<UnsubscribedFrame | null>} the `unsubscribed` frame, or null when nothing
     *   was sent (other subscriptions remain, or it was not active)
     */
    unsubscribe(): Promise<UnsubscribedFrame | null>;
    #private;
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
    /**
     * @param {string} url the gateway's `/ws` address, e.g. `wss://example.com/ws` (http(s) works too)
     * @param {WsgwClientOptions} options
     */
    constructor(url: string, options: WsgwClientOptions);
    /** @returns {WsgwState} */
    get state(): WsgwState;
    /** The current (or last) connection id, used to resume the session.
     * @returns {string | null} */
    get connectionId(): string | null;
    /** What the next resume sends as `last_event_id`: the highest event id received (numeric
     * order), or lower while a subscribe catch-up is unfinished. In a Redis Cluster deployment
     * (ids `<shard>~<ms>-<seq>`): that id for each shard, joined with `,` in shard order.
     * @returns {string | null} */
    get lastEventId(): string | null;
    /** The gateway node of the current (or last) connection.
     * @returns {string | null} */
    get node(): string | null;
    /** The underlying WebSocket. For tests only: closing it simulates a network drop.
     * @returns {WebSocketLike | null} */
    get _socket(): WebSocketLike | null;
    /**
     * Opens the connection (and keeps it open, reconnecting as needed, until `close()`).
     * @returns {Promise<WelcomeFrame>} resolves with the next welcome frame; rejects with a WsgwError whose
     *   `code` is the close code when the client gives up (4001, 4004, …) or 'closed' after `close()`.
     */
    connect(): Promise<WelcomeFrame>;
    /** Closes the connection for good (no reconnect). Pending calls reject with code 'closed'.
     * @returns {void} */
    close(): void;
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
    subscribe<T = Json>(channel: string, opts?: SubscribeOptions): Subscription<T>;
    /**
     * Leaves a topic or pattern (at once for all of its Subscription objects).
     * @param {string} channel
     * @returns {Promise<UnsubscribedFrame>} the `unsubscribed` frame
     */
    unsubscribe(channel: string): Promise<UnsubscribedFrame>;
    /**
     * Who is subscribed to a channel, cluster-wide (channels whose presence the gateway tracks;
     * the same permission as subscribe).
     * @param {string} channel
     * @returns {Promise<PresenceFrame>} the `presence` frame; rejects with a WsgwError (`.code`:
     *   'forbidden', 'bad_request', 'timeout', 'disconnected', …)
     */
    presence(channel: string): Promise<PresenceFrame>;
    /**
     * Publishes a durable event (the token's `publish` claim must allow the channel).
     * @param {string} channel
     * @param {string} event
     * @param {Json} [data]
     * @param {PublishOptions} [opts] `echo: false`: this socket does not receive its own event
     * @returns {Promise<string>} the event id
     */
    publish(channel: string, event: string, data?: Json, opts?: PublishOptions): Promise<string>;
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
    history<T = Json>(channel: string, opts?: HistoryOptions): Promise<HistoryFrame<T>>;
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
    request<T = Json, C = Json>(action: string, data?: Json, opts?: RequestOptions<C>): Promise<T>;
    /**
     * Replaces the connection's token (e.g. before it expires); also used for later reconnects.
     * @param {string} token
     * @returns {Promise<AckFrame>} the `ack` frame
     */
    refresh(token: string): Promise<AckFrame>;
    /**
     * Adds a handler for one of the client's events.
     * @template {keyof WsgwClientEvents} K
     * @overload
     * @param {K} name `state`, `welcome`, `error`, `close`, `unsubscribed` or `gap`
     * @param {(value: WsgwClientEvents[K]) => void} handler
     * @returns {() => void} a function that removes the handler
     */
    on<K extends keyof WsgwClientEvents>(name: K, handler: (value: WsgwClientEvents[K]) => void): () => void;
    /**
     * Adds a handler for events: `channelOrEvent` is a channel, a pattern (`room:*`),
     * `event:<name>` or `*` (every event).
     * @template [T=Json]
     * @overload
     * @param {string} channelOrEvent
     * @param {(event: EventFrame<T>) => void} handler
     * @returns {() => void} a function that removes the handler
     */
    on<T = Json>(channelOrEvent: string, handler: (event: EventFrame<T>) => void): () => void;
    /**
     * Removes a handler added with `on`.
     * @template {keyof WsgwClientEvents} K
     * @overload
     * @param {K} name
     * @param {(value: WsgwClientEvents[K]) => void} handler
     * @returns {void}
     */
    off<K extends keyof WsgwClientEvents>(name: K, handler: (value: WsgwClientEvents[K]) => void): void;
    /**
     * Removes a handler added with `on`.
     * @overload
     * @param {string} channelOrEvent
     * @param {(event: EventFrame<any>) => void} handler
     * @returns {void}
     */
    off(channelOrEvent: string, handler: (event: EventFrame<any>) => void): void;
    #private;
}
export default WsgwClient;
/**
 * Any JSON value.
 */
export type Json = null | boolean | number | string | JsonArray | JsonObject;
/**
 * A JSON array.
 */
export type JsonArray = Json[];
/**
 * A JSON object.
 */
export type JsonObject = {
    [key: string]: Json;
};
/**
 * Connection state.
 */
export type WsgwState = "connecting" | "open" | "reconnecting" | "closed";
/**
 * Error codes of the gateway's `error` frames.
 */
export type WsgwErrorCode = "unauthorized" | "token_expired" | "forbidden" | "bad_request" | "too_large" | "rate_limited" | "not_found" | "internal" | "unavailable" | "timeout";
/**
 * Codes the client adds: the socket dropped before the answer, the client was closed, a backend
 * answered `ok: false` without a code, `getToken`/`onTokenExpired` failed, the socket could not be
 * created. A `number` is a close code (on `connect()` rejections).
 */
export type WsgwClientCode = "disconnected" | "closed" | "backend_error" | "token" | "connect";
/**
 * Minimal WebSocket the client needs (browser WebSocket, the `ws` package, …).
 */
export type WebSocketLike = {
    readyState: number;
    send: (data: string) => void;
    close: (code?: number, reason?: string) => void;
    onmessage: ((ev: {
        data: any;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
    onerror: ((ev: any) => void) | null;
};
/**
 * A WebSocket constructor. Typed loosely so that the browser's WebSocket, the `ws` package and
 * undici all fit. The client passes the subprotocols `['wsgw.v1', 'bearer.<jwt>']`.
 */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => any;
export type BackoffOptions = {
    /**
     * First delay, in ms. Default 500.
     */
    initialMs?: number;
    /**
     * Largest delay, in ms. Default 30000.
     */
    maxMs?: number;
    /**
     * Growth per failed attempt. Default 2.
     */
    factor?: number;
    /**
     * Fraction of each delay taken off at random (0..1). Default 0.5.
     */
    jitter?: number;
};
export type WsgwClientOptions = {
    /**
     * The JWT. One of `token` or `getToken` is required.
     */
    token?: string;
    /**
     * Called for a JWT before the first connection
     * attempt, and again only when the kept one expires within a minute (its `exp`) or was refused
     * (4001, 4003).
     */
    getToken?: () => Promise<string> | string;
    /**
     * Called on close 4003 (token expired);
     * returns a new JWT, then the client reconnects. Without it (and without `getToken`), 4003 is final.
     */
    onTokenExpired?: () => Promise<string> | string;
    /**
     * WebSocket implementation. Default `globalThis.WebSocket`.
     */
    WebSocket?: WebSocketConstructor;
    /**
     * Reconnect backoff.
     */
    backoff?: BackoffOptions;
    /**
     * How long a call (subscribe, publish, request, …) waits for
     * its answer. Default 30000.
     */
    requestTimeoutMs?: number;
    /**
     * Resume this connection id on the first connect (e.g. kept from
     * an earlier page load).
     */
    connectionId?: string;
    /**
     * Replay events after this id on the first connect (a saved
     * `lastEventId`: in a Redis Cluster deployment one id per shard, joined with `,`).
     */
    lastEventId?: string;
};
export type HeartbeatInfo = {
    interval_ms: number;
    timeout_ms: number;
};
/**
 * The first frame of every connection.
 */
export type WelcomeFrame = {
    type: "welcome";
    connection_id: string;
    user_id: string;
    node: string;
    resumed: boolean;
    recovered: boolean;
    replayed: number;
    heartbeat: HeartbeatInfo;
    session_ttl_ms: number;
    /**
     * Topics restored by a resume; absent when none.
     */
    channels?: string[];
    /**
     * Restored patterns whose events were not replayed (patterns
     * have no history): `recovered` does not cover the channels reached only through them. Absent
     * when none.
     */
    not_replayed?: string[];
};
/**
 * An event. `event_id` is absent for ephemeral events.
 */
export type EventFrame<T = Json> = {
    type: "event";
    event_id?: string;
    channel: string;
    event: string;
    data: T;
    /**
     * Publish time, ms since the epoch.
     */
    ts: number;
};
export type SubscribedFrame = {
    type: "subscribed";
    channel: string;
    request_id?: Json;
    /**
     * `false` when the requested catch-up cannot be complete.
     */
    recovered: boolean;
    /**
     * Events replayed right after this frame.
     */
    replayed: number;
};
/**
 * The server cannot prove that this live socket missed no event of these channels and patterns
 * (after an outage, their history no longer held everything published meanwhile). The socket
 * stays open; reload their state from your backend.
 */
export type GapFrame = {
    type: "gap";
    /**
     * Channel names and patterns.
     */
    channels: string[];
    /**
     * Always `false`.
     */
    recovered: false;
};
export type UnsubscribedFrame = {
    type: "unsubscribed";
    channel: string;
    request_id?: Json;
    /**
     * Set when the server removed the subscription by itself (e.g. after
     * `refresh`).
     */
    reason?: string;
};
export type AckFrame = {
    type: "ack";
    request_id?: Json;
    event_id?: string;
};
export type ErrorFrame = {
    type: "error";
    code: WsgwErrorCode;
    message: string;
    request_id?: Json;
};
export type ResponseFrame<T = Json> = {
    type: "response";
    request_id: Json;
    ok: boolean;
    data?: T;
    error?: Json;
    more?: boolean;
};
/**
 * The answer to `history()`.
 */
export type HistoryFrame<T = Json> = {
    type: "history";
    channel: string;
    request_id: Json;
    /**
     * In id order, each the event frame a subscriber receives.
     */
    events: EventFrame<T>[];
    /**
     * `false` when events after `since` may have been lost (trimmed or
     * expired); always `true` without `since`.
     */
    recovered: boolean;
};
/**
 * A socket in a presence list.
 */
export type PresenceClient = {
    user_id: string;
    connection_id: string;
    /**
     * The gateway node holding the socket.
     */
    node: string;
};
/**
 * The answer to `presence()`: who is subscribed to a channel, cluster-wide.
 */
export type PresenceFrame = {
    type: "presence";
    channel: string;
    request_id: Json;
    clients: PresenceClient[];
};
/**
 * A socket subscribed to (`join`) or left (`leave`: unsubscribed, disconnected, or its node died)
 * a channel whose presence the gateway tracks. Ephemeral: never in history, never replayed.
 */
export type PresenceChangeFrame = {
    type: "join" | "leave";
    channel: string;
    user_id: string;
    connection_id: string;
};
/**
 * A subscription's events and what their handlers receive.
 */
export type SubscriptionEvents<T = Json> = {
    /**
     * An event of the channel (or of a channel the pattern matches).
     */
    event: EventFrame<T>;
    /**
     * A socket subscribed to the channel.
     */
    join: PresenceChangeFrame;
    /**
     * A socket left the channel.
     */
    leave: PresenceChangeFrame;
    /**
     * The gateway refused something about this subscription: the
     * subscribe (also a subscribe again after a reconnect), or a `history()`/`presence()` call (which
     * also rejects). `.code` is the gateway's code (`forbidden`, `bad_request`, …), `.frame` the
     * error frame.
     */
    error: WsgwError;
    /**
     * The gateway confirmed the subscription (again after a
     * reconnect that did not restore it).
     */
    subscribed: SubscribedFrame;
    /**
     * The gateway removed the subscription by itself
     * (e.g. after `refresh`); no more events come.
     */
    unsubscribed: UnsubscribedFrame;
    /**
     * Events of this channel may have been missed; reload its state.
     */
    gap: GapFrame;
};
export type CloseInfo = {
    code: number;
    reason: string;
    willReconnect: boolean;
};
export type SubscribeOptions = {
    /**
     * First send the channel's last N events.
     */
    history?: number;
    /**
     * First replay the channel's events after this id (wins over
     * `history`).
     */
    lastEventId?: string;
};
export type HistoryOptions = {
    /**
     * The oldest `limit` events after this id; absent: the newest `limit`.
     */
    since?: string;
    /**
     * Default 100 (the gateway's), capped at the gateway's `max_replay`.
     */
    limit?: number;
};
export type PublishOptions = {
    /**
     * `false`: this socket does not receive its own event.
     */
    echo?: boolean;
};
export type RequestOptions<C = Json> = {
    /**
     * Receives each `more: true` chunk's data, in order.
     */
    onChunk?: (data: C) => void;
    /**
     * Overrides `requestTimeoutMs` (also the wait between chunks).
     */
    timeoutMs?: number;
};
/**
 * The client's own events and what their handlers receive.
 */
export type WsgwClientEvents = {
    state: WsgwState;
    welcome: WelcomeFrame;
    /**
     * Error frames answering no pending call, and client-side
     * failures.
     */
    error: ErrorFrame | WsgwError;
    close: CloseInfo;
    /**
     * A topic the server removed by itself.
     */
    unsubscribed: UnsubscribedFrame;
    /**
     * Events of these channels may have been missed; the socket stays open.
     */
    gap: GapFrame;
};
/**
 * What a client lends a Subscription (internal).
 */
export type SubscriptionLink = {
    /**
     * registers it; the subscribe's answer
     */
    attach: (sub: Subscription<any>, emit: (name: string, value: any) => void, end: () => void) => Promise<SubscribedFrame>;
    presence: () => Promise<PresenceFrame>;
    history: (opts: HistoryOptions) => Promise<HistoryFrame<any>>;
    release: () => Promise<UnsubscribedFrame | null>;
};
