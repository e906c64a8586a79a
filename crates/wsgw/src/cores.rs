//! cores.rs: `WSGW_RUNTIME=per_core`. The extra single-threaded runtimes (one thread each,
//! beside the one the node starts on) and the `SO_REUSEPORT` listeners they accept on. The
//! kernel spreads new connections over the listeners; a socket then lives on the runtime that
//! accepted it, so its reads, writes and wake-ups stay on one thread. The hub, the broker and
//! the tick stay shared.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::affinity::Pinning;

thread_local! {
    /// The index of the per-core runtime this thread runs (`per_core` only).
    static CORE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the per-core runtime running on this thread: 0 for the one the node started
/// on, 1.. for the extra ones; `None` outside `WSGW_RUNTIME=per_core`.
pub fn current() -> Option<usize> {
    CORE.with(|c| c.get())
}

/// Marks this thread as running per-core runtime `index`.
pub fn set_current(index: usize) {
    CORE.with(|c| c.set(Some(index)));
}

/// The extra runtimes, each on a thread of its own, running until this is dropped.
pub struct CoreRuntimes {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl CoreRuntimes {
    /// Starts `extra` single-threaded runtimes on threads named `wsgw-core-1` and up, each
    /// pinned to a CPU of its own by `pinning` if given (affinity.rs).
    pub fn start(extra: usize, pinning: Option<Arc<Pinning>>) -> io::Result<Self> {
        let mut cores = Self {
            handles: Vec::with_capacity(extra),
            stops: Vec::with_capacity(extra),
            threads: Vec::with_capacity(extra),
        };
        for i in 1..=extra {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            let pinning = pinning.clone();
            cores.handles.push(runtime.handle().clone());
            cores.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("wsgw-core-{i}"))
                .spawn(move || {
                    set_current(i);
                    if let Some(p) = &pinning {
                        p.pin_current_once();
                    }
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            cores.threads.push(thread);
        }
        Ok(cores)
    }

    /// The runtimes' handles, to spawn their listeners' tasks on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for CoreRuntimes {
    /// Stops every runtime (dropping whatever tasks are left on it) and joins its thread.
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The first of a node's `SO_REUSEPORT` listeners: refused with `AddrInUse` when any other
/// socket listens on `addr`, even one with `SO_REUSEPORT` (another `wsgw` started by mistake on
/// the same port would otherwise share its connects instead of failing). It binds `addr` once
/// without `SO_REUSEPORT` to find out, then again with it, on the port that bind found (so port
/// 0 works too).
pub fn first_reuseport_listener(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if let Err(e) = probe.bind(&addr.into()) {
        return Err(if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is in use by another socket (per_core shares the port only among its own runtimes)"),
            )
        } else {
            e
        });
    }
    let found = probe.local_addr()?.as_socket().unwrap_or(addr);
    drop(probe);
    reuseport_listener(found, backlog)
}

/// A listener on `addr` with `SO_REUSEPORT`, so that one per runtime can share the port,
/// unregistered (a runtime registers it with `TcpListener::from_std` on its own thread).
pub fn reuseport_listener(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.clamp(1, i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_runtime_runs_on_its_own_named_thread_and_stops_when_dropped() {
        let cores = CoreRuntimes::start(2, None).unwrap();
        let names: Vec<(String, Option<usize>)> = cores
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move {
                    let name = std::thread::current().name().unwrap_or_default().to_owned();
                    let _ = tx.send((name, current()));
                });
                rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [("wsgw-core-1".to_owned(), Some(1)), ("wsgw-core-2".to_owned(), Some(2))]
        );
        assert_eq!(current(), None, "the test's own thread runs no per-core runtime");
        drop(cores);
    }

    #[test]
    fn two_reuseport_listeners_share_one_port_and_a_plain_bind_is_refused() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let b = reuseport_listener(addr, 16).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        assert!(
            std::net::TcpListener::bind(addr).is_err(),
            "a listener without SO_REUSEPORT"
        );
    }

    #[test]
    fn a_node_refuses_a_port_another_socket_listens_on_even_with_so_reuseport() {
        let first = first_reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = first.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        // The node's own runtimes still share it.
        let own = reuseport_listener(addr, 16).unwrap();
        // A second node (its first listener) does not.
        let err = first_reuseport_listener(addr, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("in use by another socket"), "{err}");
        // Nor beside a plain listener.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = first_reuseport_listener(plain.local_addr().unwrap(), 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        // Once the first node is gone the port is free again.
        drop((first, own));
        assert_eq!(first_reuseport_listener(addr, 16).unwrap().local_addr().unwrap(), addr);
    }
}
