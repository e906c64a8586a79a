//! ws/socket.rs: one socket's read side and its own writes outside the hub's queue (the close
//! handshake, refusals before a connection is registered). Reads go into a buffer shared by
//! every socket of the thread; a socket keeps only what a frame it has not finished sending
//! needs (see decode.rs).

use std::cell::RefCell;
use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::decode::{Decoder, Incoming, ProtocolError};
use super::frame::{self, OP_CLOSE, OP_PONG};

/// Size of each thread's read buffer.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// Reads what the socket holds into `buf`. A read that did not fill `buf` took everything
/// there was, so it also clears the socket's readiness, as tokio's own `poll_read` does on
/// epoll: the next wait is for new data, with no `recv` answering "nothing" first (one
/// syscall per client frame instead of two; a peer's close stays visible, since tokio keeps
/// its closed bit).
fn read_drained(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    let r = stream.try_io(Interest::READABLE, || {
        let n = (&*SockRef::from(stream)).read(buf)?;
        got = n;
        if n > 0 && n < buf.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

/// Why reading ended.
#[derive(Debug)]
pub enum ReadError {
    /// The client broke the protocol: close with this code.
    Protocol(ProtocolError),
    /// The connection is gone (EOF or an I/O error).
    Gone,
}

/// A WebSocket over a TCP stream shared with the hub connection that writes to it.
pub struct WsSocket {
    stream: Arc<TcpStream>,
    decoder: Decoder,
}

impl WsSocket {
    /// A socket on `stream`, with `leftover` bytes already read, accepting messages up to
    /// `max_message` bytes.
    pub fn new(stream: Arc<TcpStream>, leftover: Bytes, max_message: usize) -> Self {
        let mut decoder = Decoder::new(max_message);
        decoder.feed(&leftover);
        Self { stream, decoder }
    }

    /// Accepts compressed messages from the client (permessage-deflate was negotiated).
    pub fn with_deflate(mut self, on: bool) -> Self {
        self.decoder = std::mem::replace(&mut self.decoder, Decoder::new(0)).with_deflate(on);
        self
    }

    /// The stream (shared with the writer).
    pub fn stream(&self) -> &Arc<TcpStream> {
        &self.stream
    }

    /// The next message from the client.
    pub async fn recv(&mut self) -> Result<Incoming, ReadError> {
        loop {
            match self.decoder.next_message() {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Protocol(e)),
            }
            if self.stream.readable().await.is_err() {
                return Err(ReadError::Gone);
            }
            let read = READ_BUF.with(|b| {
                let mut b = b.borrow_mut();
                let r = read_drained(&self.stream, &mut b);
                if let Ok(n) = r {
                    self.decoder.feed(&b[..n]);
                }
                r
            });
            match read {
                Ok(0) => return Err(ReadError::Gone),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(ReadError::Gone),
            }
        }
    }

    /// Writes `data` whole, waiting for the socket as needed. Only for frames nothing else
    /// can be writing at the same time (before the hub connection is attached, or after its
    /// queue is done).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends a close frame.
    pub async fn send_close(&self, code: u16, reason: &str) -> io::Result<()> {
        self.write_all(&frame::encode(OP_CLOSE, &frame::close_payload(code, reason)))
            .await
    }

    /// The pong answering a ping's payload.
    pub fn pong(payload: &[u8]) -> Bytes {
        frame::encode(OP_PONG, payload)
    }

    /// Ends the TCP connection from this side (after a close handshake).
    pub fn shutdown(&self) {
        let _ = socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write);
    }
}
