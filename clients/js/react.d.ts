/**
 * @typedef {import('./wsgw.js').Json} Json
 * @typedef {import('./wsgw.js').WsgwClient} WsgwClient
 * @typedef {import('./wsgw.js').WsgwError} WsgwError
 * @typedef {import('./wsgw.js').PresenceClient} PresenceClient
 * @typedef {import('./wsgw.js').HistoryFrame} HistoryFrame
 */
/**
 * @template [T=Json]
 * @typedef {import('./wsgw.js').EventFrame<T>} EventFrame
 */
/**
 * What `useChannel` renders from.
 * @template [T=Json]
 * @typedef {object} ChannelState
 * @property {EventFrame<T>[]} events The channel's events received since the component mounted
 *   (with the `history` catch-up first), oldest first, at most `max`.
 * @property {'subscribing' | 'subscribed' | 'refused' | 'removed'} status `refused`: the gateway
 *   refused the subscribe (see `error`); `removed`: it removed the subscription by itself.
 * @property {WsgwError | null} error The last error about this channel.
 * @property {PresenceClient[]} members Who is subscribed (with `presence: true`): the
 *   `presence()` list, kept current by `join` and `leave`.
 */
/**
 * @typedef {object} UseChannelOptions
 * @property {number} [history] First deliver the channel's last N events.
 * @property {number} [max] Keep at most this many events (the newest). Default 100.
 * @property {boolean} [presence] Track who is subscribed (`members`). Default false.
 */
/**
 * Subscribes `client` to `channel` while the component is mounted, and renders its events.
 * A change of `client`, `channel` or an option subscribes afresh; unmounting unsubscribes (the
 * channel is left when no other subscription of the client follows it). A null `client` or
 * `channel` subscribes to nothing.
 * @template [T=Json]
 * @param {WsgwClient | null | undefined} client a client the application connects
 * @param {string | null | undefined} channel
 * @param {UseChannelOptions} [opts]
 * @returns {ChannelState<T>}
 */
export function useChannel<T = import("./wsgw.js").Json>(client: WsgwClient | null | undefined, channel: string | null | undefined, opts?: UseChannelOptions): ChannelState<T>;
export default useChannel;
export type Json = import("./wsgw.js").Json;
export type WsgwClient = import("./wsgw.js").WsgwClient;
export type WsgwError = import("./wsgw.js").WsgwError;
export type PresenceClient = import("./wsgw.js").PresenceClient;
export type HistoryFrame = import("./wsgw.js").HistoryFrame;
export type EventFrame<T = import("./wsgw.js").Json> = import("./wsgw.js").EventFrame<T>;
/**
 * What `useChannel` renders from.
 */
export type ChannelState<T = import("./wsgw.js").Json> = {
    /**
     * The channel's events received since the component mounted
     * (with the `history` catch-up first), oldest first, at most `max`.
     */
    events: EventFrame<T>[];
    /**
     * `refused`: the gateway
     * refused the subscribe (see `error`); `removed`: it removed the subscription by itself.
     */
    status: "subscribing" | "subscribed" | "refused" | "removed";
    /**
     * The last error about this channel.
     */
    error: WsgwError | null;
    /**
     * Who is subscribed (with `presence: true`): the
     * `presence()` list, kept current by `join` and `leave`.
     */
    members: PresenceClient[];
};
export type UseChannelOptions = {
    /**
     * First deliver the channel's last N events.
     */
    history?: number;
    /**
     * Keep at most this many events (the newest). Default 100.
     */
    max?: number;
    /**
     * Track who is subscribed (`members`). Default false.
     */
    presence?: boolean;
};
