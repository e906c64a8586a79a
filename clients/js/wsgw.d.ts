/**
 * Parses an event id `<ms>-<seq>` (a bare `<ms>` means `<ms>-0`).
 * @param {string} id
 * @returns {[number, number] | null} null when unreadable
 */
export function parseEventId(id: string): [number, number] | null;
/**
 * Compares two event ids numerically on (ms, seq), never as strings: `9-5` < `10-0`.
 * Unreadable ids sort before every readable one.
 * @param {string} a
 * @param {string} b
 * @returns {number} negative, zero or positive
 */
export function compareEventIds(a: string, b: string): number;
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
     * order), or lower while a subscribe catch-up is unfinished.
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
     * @param {string} channel
     * @param {SubscribeOptions} [opts] catch up first: the last N events, or the events after an id
     *   (`lastEventId` wins when both are given)
     * @returns {Promise<SubscribedFrame>} the `subscribed` frame; rejects with a WsgwError (`.code`)
     *   on refusal
     */
    subscribe(channel: string, opts?: SubscribeOptions): Promise<SubscribedFrame>;
    /**
     * Leaves a topic or pattern.
     * @param {string} channel
     * @returns {Promise<UnsubscribedFrame>} the `unsubscribed` frame
     */
    unsubscribe(channel: string): Promise<UnsubscribedFrame>;
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
     * Replay events after this id on the first connect.
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
