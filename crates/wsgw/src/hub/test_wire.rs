//! hub/test_wire.rs (tests only): what a client of a hub socket reads off the wire.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The payloads of the first `want` (short, unmasked) frames the client reads, waiting at most
/// 10 s for each read.
pub(super) async fn read_texts(client: &mut TcpStream, want: usize) -> Vec<String> {
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    while out.len() < want {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("frames stopped coming after {out:?}"))
            .unwrap();
        assert!(n > 0, "closed after {out:?}");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 2 && buf.len() >= 2 + (buf[1] & 0x7f) as usize {
            let len = (buf[1] & 0x7f) as usize;
            out.push(String::from_utf8(buf[2..2 + len].to_vec()).unwrap());
            buf.drain(..2 + len);
        }
    }
    out
}
