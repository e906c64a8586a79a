//! hub/prefetch.rs: asks the CPU for the state of the socket `AHEAD` places after the one a
//! fan-out is offering to, so that `Connection::offer`'s first touch of it (its outbox lock,
//! queue and floors) finds it in cache. A hint only: it changes no behaviour. Through
//! `safe_arch`, since `_mm_prefetch` needs `unsafe`, which this crate forbids. Only lines a
//! reference reaches can be asked for: the outbox's first and the one after it, not those
//! inside it.

use std::sync::Arc;

use super::Connection;

/// How many sockets ahead of the one being offered to. One is enough: an offer that writes
/// takes a `send(2)`, microseconds against a memory load's tenth of one, and lines fetched
/// further ahead may be evicted by the kernel's send path before they are used (four ahead
/// measured no better; docs/loadtest.md section 13).
pub(super) const AHEAD: usize = 1;

/// Fetches the cache line holding `r` (a no-op where the CPU has no prefetch we can ask for
/// safely).
#[inline(always)]
pub(super) fn line<T>(r: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    safe_arch::prefetch_t0(r);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = r;
}

/// Offers through `each` every item of `items`, warming the socket `AHEAD` places on first.
/// The first `AHEAD` sockets are not warmed: they are touched at once, so a prefetch of them
/// would come too late to help (a targeted event's one socket is one of them).
#[inline(always)]
pub(super) fn for_each_warmed<'a, K: 'a>(
    items: impl Iterator<Item = (&'a K, &'a Arc<Connection>)> + Clone,
    mut each: impl FnMut(&'a K, &'a Arc<Connection>),
) {
    let mut ahead = items.clone().skip(AHEAD);
    for (k, c) in items {
        if let Some((_, next)) = ahead.next() {
            next.warm();
        }
        each(k, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every socket is offered to once, in the iterator's order, whatever the set's size against
    /// `AHEAD`.
    #[test]
    fn each_socket_once_in_order() {
        for n in 0..(AHEAD as u64 + 4) {
            let conns: Vec<(u64, Arc<Connection>)> = (0..n)
                .map(|k| {
                    (
                        k,
                        Arc::new(Connection::new(Arc::from(format!("c{k}")), Arc::from("u"), 10, &[])),
                    )
                })
                .collect();
            let mut seen = Vec::new();
            for_each_warmed(conns.iter().map(|(k, c)| (k, c)), |k, c| seen.push((*k, c.id.clone())));
            let want: Vec<(u64, Arc<str>)> = conns.iter().map(|(k, c)| (*k, c.id.clone())).collect();
            assert_eq!(seen, want, "{n} sockets");
        }
    }
}
