// wsgw-client/react: `useChannel`, a React hook over a WsgwClient's Subscription. It owns one
// subscription per mounted (client, channel) and never connects or closes the client: the
// application does (one client per page). React (>= 18) is an optional peer dependency.
import React from 'react';

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
export function useChannel(client, channel, opts = {}) {
  const { history, max = 100, presence = false } = opts;
  const [state, setState] = React.useState(initialState);
  React.useEffect(() => {
    if (!client || !channel) return undefined;
    setState(initialState());
    let live = true;
    /** @param {(s: ChannelState<T>) => ChannelState<T>} f */
    const update = (f) => { if (live) setState(f); };
    /** @type {import('./wsgw.js').Subscription<T>} */
    const sub = client.subscribe(channel, history === undefined ? {} : { history });
    const offs = [
      sub.on('event', (e) => update((s) => ({ ...s, events: [...s.events, e].slice(-Math.max(1, max)) }))),
      sub.on('subscribed', () => {
        update((s) => ({ ...s, status: 'subscribed' }));
        if (presence) {
          // Errors also reach the `error` handler below.
          sub.presence().then((p) => update((s) => ({ ...s, members: p.clients })), () => {});
        }
      }),
      sub.on('error', (err) => update((s) => ({ ...s, error: err, status: sub.active ? s.status : 'refused' }))),
      sub.on('unsubscribed', () => update((s) => ({ ...s, status: 'removed' }))),
    ];
    if (presence) {
      offs.push(
        sub.on('join', (j) => update((s) => (s.members.some((m) => m.connection_id === j.connection_id) ? s
          : { ...s, members: [...s.members, { user_id: j.user_id, connection_id: j.connection_id, node: '' }] }))),
        sub.on('leave', (l) => update((s) => ({ ...s, members: s.members.filter((m) => m.connection_id !== l.connection_id) }))),
      );
    }
    return () => {
      live = false;
      for (const off of offs) off();
      sub.unsubscribe().catch(() => { /* the socket is gone: nothing to leave */ });
    };
  }, [client, channel, history, max, presence]);
  return state;
}

/**
 * @template T
 * @returns {ChannelState<T>}
 */
function initialState() {
  return { events: [], status: 'subscribing', error: null, members: [] };
}

export default useChannel;
