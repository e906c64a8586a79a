//! connect.rs: one connection attempt (TCP from an optional source address, the WebSocket
//! handshake with the token, the welcome).

use super::*;

impl Client {
    /// One connection attempt: TCP, handshake, welcome. On success the socket is live and the
    /// topics the welcome did not restore are being subscribed again.
    pub(crate) async fn attempt(&mut self) -> Result<Welcome, Failure> {
        let token_gen = self.token_gen;
        let timeout = self.cfg.connect_timeout;
        let (ws, welcome) = match tokio::time::timeout(timeout, self.open()).await {
            Ok(r) => r?,
            Err(_) => return Err(Failure::new(FailKind::Timeout, "connect timed out")),
        };
        self.ws = Some(ws);
        self.token_used = token_gen;
        self.attempt = 0;
        self.reconnect_at = None;
        self.connection_id.clone_from(&welcome.connection_id);
        self.node.clone_from(&welcome.node);
        self.silence = Some(Silence::new(Duration::from_millis(
            welcome
                .heartbeat
                .interval_ms
                .saturating_add(welcome.heartbeat.timeout_ms),
        )));
        self.resubscribing.clear();
        self.cursor.connected();
        let missing: Vec<Topic> = self
            .topics
            .iter()
            .filter(|t| !welcome.channels.contains(&t.channel))
            .cloned()
            .collect();
        for t in missing {
            let rid = self.rid();
            // From where the application's events of the topic end (the cursor, or the catch-up
            // position of a topic whose catch-up the lost socket cut short).
            let from = self.cursor.resubscribe_from(&t.channel).or(t.last_event_id);
            let frame = ClientFrame::Subscribe {
                channel: t.channel.clone(),
                request_id: Some(rid.into()),
                last_event_id: from,
                history: if from.is_some() { None } else { t.history },
            };
            if self.send(frame).await.is_err() {
                break; // `Closed` is queued; `next` reports it after the welcome.
            }
            self.cursor.subscribe_sent(rid, &t.channel, from, Subscribe::Again);
            self.resubscribing.push((rid, t.channel));
        }
        Ok(welcome)
    }

    pub(crate) async fn open(&self) -> Result<(Ws, Welcome), Failure> {
        let mut url = self.url().to_owned();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if !self.connection_id.is_empty() {
            url.push(sep);
            url.push_str("connection_id=");
            url.push_str(&self.connection_id);
            sep = '&';
        }
        if let Some(id) = self.cursor.resume_id() {
            url.push(sep);
            url.push_str(&format!("last_event_id={id}"));
        }
        let connect_err = |e: &dyn std::fmt::Display| Failure::new(FailKind::Connect, e.to_string());
        let mut request = url.as_str().into_client_request().map_err(|e| connect_err(&e))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.cfg.token)).map_err(|e| connect_err(&e))?;
        request.headers_mut().insert(AUTHORIZATION, bearer);
        let uri = request.uri();
        let (port, tls) = match uri.scheme_str() {
            Some("ws") => (uri.port_u16().unwrap_or(80), false),
            Some("wss") => (uri.port_u16().unwrap_or(443), true),
            Some(other) => {
                return Err(connect_err(&format!(
                    "unsupported scheme {other}: (use ws:// or wss://)"
                )));
            }
            None => return Err(connect_err(&"url has no scheme")),
        };
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tcp = tcp_connect(host, port, self.cfg.local_addr).await?;
        let stream = if tls {
            tls::handshake(tcp, host, self.cfg.ca_file.as_deref(), self.cfg.insecure)
                .await
                .map_err(|e| connect_err(&e))?
        } else {
            tls::Stream::Plain(tcp)
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(self.cfg.read_buffer_bytes)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => connect_err(&format!("handshake refused: HTTP {}", resp.status())),
                other => connect_err(&format!("handshake failed: {other}")),
            })?;
        let mut error = None;
        loop {
            match read_frame(&mut ws, None).await {
                Ok(Frame::Event(_)) => {}
                Ok(Frame::Other(f)) => match f["type"].as_str() {
                    Some("welcome") => {
                        let welcome: Welcome = serde_json::from_value(f)
                            .map_err(|e| Failure::new(FailKind::Protocol, format!("unreadable welcome: {e}")))?;
                        return Ok((ws, welcome));
                    }
                    Some("error") => {
                        error = Some((
                            f["code"].as_str().unwrap_or("unknown").to_owned(),
                            f["message"].as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                    Some("ping") => {
                        let _ = ws.send(Message::text(ClientFrame::Pong {}.to_json())).await;
                    }
                    _ => {}
                },
                Err((code, reason)) => {
                    return Err(Failure {
                        kind: FailKind::Closed,
                        close_code: code,
                        reason,
                        error,
                    });
                }
            }
        }
    }
}

/// The `Refused` error for an `error` answer (or `Protocol` for anything else).
pub(crate) fn refusal(reply: &Value) -> ClientError {
    match reply["type"].as_str() {
        Some("error") => ClientError::Refused {
            code: reply["code"].as_str().unwrap_or("unknown").to_owned(),
            message: reply["message"].as_str().unwrap_or_default().to_owned(),
        },
        _ => ClientError::Protocol(format!("unexpected answer: {reply}")),
    }
}

/// Resolves `host` and connects, from `local` when given (only addresses of its family).
pub(crate) async fn tcp_connect(host: &str, port: u16, local: Option<IpAddr>) -> Result<TcpStream, Failure> {
    let fail = |e: String| Failure::new(FailKind::Connect, e);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?;
    let mut last = format!("no usable address for {host}");
    for addr in addrs {
        if local.is_some_and(|l| l.is_ipv4() != addr.is_ipv4()) {
            continue;
        }
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let result = async {
            let socket = socket?;
            if let Some(ip) = local {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.connect(addr).await
        }
        .await;
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(fail(last))
}
