// Types for wsgw.js, the wsgw gateway client. Wire contract: docs/protocol.md.

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Connection state. */
export type WsgwState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Error codes of the gateway's `error` frames. */
export type WsgwErrorCode =
  | 'unauthorized'
  | 'token_expired'
  | 'forbidden'
  | 'bad_request'
  | 'too_large'
  | 'rate_limited'
  | 'not_found'
  | 'internal'
  | 'unavailable'
  | 'timeout';

/** Codes the client adds: the socket dropped before the answer, the client was closed, a
 * backend answered `ok: false` without a code, `getToken`/`onTokenExpired` failed, the socket could
 * not be created. A `number` is a close code (on `connect()` rejections). */
export type WsgwClientCode = 'disconnected' | 'closed' | 'backend_error' | 'token' | 'connect';

/** Minimal WebSocket constructor the client needs (browser WebSocket, the `ws` package, …). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
}
/** Typed loosely so that the browser's WebSocket, the `ws` package and undici all fit. */
export type WebSocketConstructor = new (url: string) => any;

export interface BackoffOptions {
  /** First delay, in ms. Default 500. */
  initialMs?: number;
  /** Largest delay, in ms. Default 30000. */
  maxMs?: number;
  /** Growth per failed attempt. Default 2. */
  factor?: number;
  /** Fraction of each delay taken off at random (0..1). Default 0.5. */
  jitter?: number;
}

export interface WsgwClientOptions {
  /** The JWT. One of `token` or `getToken` is required. */
  token?: string;
  /** Called before every connection attempt for a fresh JWT. */
  getToken?: () => Promise<string> | string;
  /** Called on close 4003 (token expired); returns a new JWT, then the client reconnects.
   * Without it (and without `getToken`), 4003 is final. */
  onTokenExpired?: () => Promise<string> | string;
  /** WebSocket implementation. Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect backoff. */
  backoff?: BackoffOptions;
  /** How long a call (subscribe, publish, request, …) waits for its answer. Default 30000. */
  requestTimeoutMs?: number;
  /** Resume this connection id on the first connect (e.g. kept from an earlier page load). */
  connectionId?: string;
  /** Replay events after this id on the first connect. */
  lastEventId?: string;
}

export interface HeartbeatInfo {
  interval_ms: number;
  timeout_ms: number;
}

/** The first frame of every connection. */
export interface WelcomeFrame {
  type: 'welcome';
  connection_id: string;
  user_id: string;
  node: string;
  resumed: boolean;
  recovered: boolean;
  replayed: number;
  heartbeat: HeartbeatInfo;
  session_ttl_ms: number;
  /** Topics restored by a resume; absent when none. */
  channels?: string[];
  /** Restored patterns whose events were not replayed (patterns have no history): `recovered`
   * does not cover the channels reached only through them. Absent when none. */
  not_replayed?: string[];
}

/** An event. `event_id` is absent for ephemeral events. */
export interface EventFrame<T = Json> {
  type: 'event';
  event_id?: string;
  channel: string;
  event: string;
  data: T;
  /** Publish time, ms since the epoch. */
  ts: number;
}

export interface SubscribedFrame {
  type: 'subscribed';
  channel: string;
  request_id?: Json;
  /** `false` when the requested catch-up cannot be complete. */
  recovered: boolean;
  /** Events replayed right after this frame. */
  replayed: number;
}

/** The server cannot prove that this live socket missed no event of these channels and
 * patterns (after an outage, their history no longer held everything published meanwhile).
 * The socket stays open; reload their state from your backend. */
export interface GapFrame {
  type: 'gap';
  /** Channel names and patterns. */
  channels: string[];
  /** Always `false`. */
  recovered: false;
}

export interface UnsubscribedFrame {
  type: 'unsubscribed';
  channel: string;
  request_id?: Json;
  /** Set when the server removed the subscription by itself (e.g. after `refresh`). */
  reason?: string;
}

export interface AckFrame {
  type: 'ack';
  request_id?: Json;
  event_id?: string;
}

export interface ErrorFrame {
  type: 'error';
  code: WsgwErrorCode;
  message: string;
  request_id?: Json;
}

export interface ResponseFrame<T = Json> {
  type: 'response';
  request_id: Json;
  ok: boolean;
  data?: T;
  error?: Json;
  more?: boolean;
}

/** The answer to `history()`. */
export interface HistoryFrame<T = Json> {
  type: 'history';
  channel: string;
  request_id: Json;
  /** In id order, each the event frame a subscriber receives. */
  events: EventFrame<T>[];
  /** `false` when events after `since` may have been lost (trimmed or expired); always `true`
   * without `since`. */
  recovered: boolean;
}

export interface CloseInfo {
  code: number;
  reason: string;
  willReconnect: boolean;
}

export interface SubscribeOptions {
  /** First send the channel's last N events. */
  history?: number;
  /** First replay the channel's events after this id (wins over `history`). */
  lastEventId?: string;
}

export interface HistoryOptions {
  /** The oldest `limit` events after this id; absent: the newest `limit`. */
  since?: string;
  /** Default 100 (the gateway's), capped at the gateway's `max_replay`. */
  limit?: number;
}

export interface PublishOptions {
  /** `false`: this socket does not receive its own event. */
  echo?: boolean;
}

export interface RequestOptions<C = Json> {
  /** Receives each `more: true` chunk's data, in order. */
  onChunk?: (data: C) => void;
  /** Overrides `requestTimeoutMs` (also the wait between chunks). */
  timeoutMs?: number;
}

/** An error with the gateway's or the client's `code`. */
export class WsgwError extends Error {
  constructor(code: string | number, message: string, frame?: object);
  readonly code: WsgwErrorCode | WsgwClientCode | (string & {}) | number;
  /** The frame that caused it (error frame, response frame, or the client frame that failed). */
  readonly frame?: object;
  /** For `ok: false` responses: their `data`, when present. */
  readonly data?: Json;
}

/** Parses `<ms>-<seq>` (bare `<ms>` = `<ms>-0`); null when unreadable. */
export function parseEventId(id: string): [number, number] | null;
/** Numeric comparison on (ms, seq): negative, zero or positive. */
export function compareEventIds(a: string, b: string): number;

export interface WsgwClientEvents {
  state: WsgwState;
  welcome: WelcomeFrame;
  /** Error frames answering no pending call, and client-side failures. */
  error: ErrorFrame | WsgwError;
  close: CloseInfo;
  /** A topic the server removed by itself. */
  unsubscribed: UnsubscribedFrame;
  /** Events of these channels may have been missed; the socket stays open. */
  gap: GapFrame;
}

/**
 * A reconnecting wsgw client. It answers heartbeats, keeps the event cursor and its connection
 * id, resumes after a drop (without repeating events the application already got) and
 * re-subscribes the topics the server did not restore.
 */
export class WsgwClient {
  constructor(url: string, options: WsgwClientOptions);

  readonly state: WsgwState;
  /** The current (or last) connection id. */
  readonly connectionId: string | null;
  /** What the next resume sends as `last_event_id`: the highest event id received (numeric
   * order), or lower while a subscribe catch-up is unfinished. */
  readonly lastEventId: string | null;
  /** The gateway node of the current (or last) connection. */
  readonly node: string | null;
  /** The underlying socket. For tests only. */
  readonly _socket: WebSocketLike | null;

  /** Resolves with the next welcome; rejects (code = close code, or 'closed') when the client gives up. */
  connect(): Promise<WelcomeFrame>;
  /** Closes for good; pending calls reject ('closed', requests 'disconnected'). */
  close(): void;
  /** Subscribes (kept across reconnects). Rejects with WsgwError on refusal. */
  subscribe(channel: string, options?: SubscribeOptions): Promise<SubscribedFrame>;
  unsubscribe(channel: string): Promise<UnsubscribedFrame>;
  /** Resolves with the new event id. */
  publish(channel: string, event: string, data?: Json, options?: PublishOptions): Promise<string>;
  /** Reads a channel's history without subscribing; the cursor and subscriptions stay as they are.
   * Rejects with WsgwError ('forbidden', 'bad_request', …) as a subscribe would. */
  history<T = Json>(channel: string, options?: HistoryOptions): Promise<HistoryFrame<T>>;
  /** Resolves with the final response's data; rejects on `ok: false`, error frames, timeout, drop. */
  request<T = Json, C = Json>(action: string, data?: Json, options?: RequestOptions<C>): Promise<T>;
  /** Replaces the connection's token; resolves with the `ack`. */
  refresh(token: string): Promise<AckFrame>;

  on<K extends keyof WsgwClientEvents>(name: K, handler: (value: WsgwClientEvents[K]) => void): () => void;
  /** A channel, a pattern (`room:*`), `event:<name>` or `*` (every event). */
  on<T = Json>(channelOrEvent: string, handler: (event: EventFrame<T>) => void): () => void;
  off<K extends keyof WsgwClientEvents>(name: K, handler: (value: WsgwClientEvents[K]) => void): void;
  off(channelOrEvent: string, handler: (event: EventFrame<any>) => void): void;
}

export default WsgwClient;
