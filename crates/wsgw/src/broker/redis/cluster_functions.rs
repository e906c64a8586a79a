//! broker/redis/cluster_functions.rs: keeps the `wsgw` Function library on every primary of a
//! Redis Cluster (`wsgw functions`). A cluster does not copy Functions to a primary that joins
//! later (replicas get them through replication, a new primary does not), so backends
//! publishing into its slots would get `ERR Function not found`. One pass asks a seed for the
//! cluster's primaries (`CLUSTER NODES`) and loads the library where it is missing or differs;
//! a watcher repeats that pass on a timer.

use std::time::Duration;

use super::link::redis_client;
use super::{BrokerError, FUNCTIONS, RedisTls, timed, unavailable};

/// What one pass found on one primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryOutcome {
    /// The library was there, with this build's code.
    Present,
    /// It was missing or different, and is now loaded.
    Loaded,
    /// The primary could not be reached or refused the load.
    Failed(String),
}

/// One primary and what a pass did there.
#[derive(Debug, Clone)]
pub struct PrimaryReport {
    /// `host:port` as the cluster names it.
    pub addr: String,
    /// What happened.
    pub outcome: PrimaryOutcome,
}

/// A primary of the cluster, from one line of `CLUSTER NODES`: `host:port`, when it is a
/// healthy primary that serves slots (a primary without slots gets the library once it has
/// some: no backend call can reach it before).
fn primary_with_slots(line: &str) -> Option<String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let flags = *fields.get(2)?;
    let healthy = flags
        .split(',')
        .all(|f| !matches!(f, "fail" | "fail?" | "handshake" | "noaddr"));
    if !flags.split(',').any(|f| f == "master") || !healthy || fields.len() < 9 {
        return None;
    }
    // `ip:port@cport[,hostname]`
    let addr = fields[1].split(['@', ',']).next()?;
    let (host, port) = addr.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    Some(addr.to_string())
}

/// The URL of node `addr` (`host:port`) with the seed's scheme and credentials.
fn node_url(seed: &str, addr: &str) -> String {
    let (scheme, rest) = seed.split_once("://").unwrap_or(("redis", seed));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let userinfo = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "6379"));
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("{scheme}://{userinfo}{host}:{port}")
}

async fn connect(
    url: &str,
    tls: &RedisTls,
    timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, BrokerError> {
    let client = redis_client(url, tls)?;
    timed(timeout, async {
        client.get_multiplexed_async_connection().await.map_err(unavailable)
    })
    .await
}

/// The primaries serving slots, as the first seed that answers names them.
async fn primaries(seeds: &[String], tls: &RedisTls, timeout: Duration) -> Result<Vec<String>, BrokerError> {
    let mut last = BrokerError::Unavailable("no seed URL given".into());
    for seed in seeds {
        let nodes = async {
            let mut c = connect(seed, tls, timeout).await?;
            timed(timeout, async {
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async::<String>(&mut c)
                    .await
                    .map_err(unavailable)
            })
            .await
        };
        match nodes.await {
            Ok(text) => {
                let mut found: Vec<String> = text.lines().filter_map(primary_with_slots).collect();
                found.sort();
                return Ok(found);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Whether the library on `c` is this build's; loads it when not.
async fn ensure(c: &mut redis::aio::MultiplexedConnection, timeout: Duration) -> Result<PrimaryOutcome, BrokerError> {
    let listed: redis::Value = timed(timeout, async {
        redis::cmd("FUNCTION")
            .arg("LIST")
            .arg("LIBRARYNAME")
            .arg("wsgw")
            .arg("WITHCODE")
            .query_async(c)
            .await
            .map_err(unavailable)
    })
    .await?;
    if library_code(&listed).as_deref() == Some(FUNCTIONS) {
        return Ok(PrimaryOutcome::Present);
    }
    timed(timeout, async {
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(FUNCTIONS)
            .query_async::<String>(c)
            .await
            .map_err(|e| BrokerError::Internal(e.to_string()))
    })
    .await?;
    Ok(PrimaryOutcome::Loaded)
}

/// The `library_code` of the `wsgw` library in a `FUNCTION LIST ... WITHCODE` answer (RESP2:
/// each library a flat list of name, value pairs; RESP3: a map).
fn library_code(listed: &redis::Value) -> Option<String> {
    use redis::Value;
    let libraries = match listed {
        Value::Array(items) => items,
        _ => return None,
    };
    for lib in libraries {
        let pairs: Vec<(&Value, &Value)> = match lib {
            Value::Array(kv) => kv.chunks(2).filter_map(|p| Some((p.first()?, p.get(1)?))).collect(),
            Value::Map(kv) => kv.iter().map(|(k, v)| (k, v)).collect(),
            _ => continue,
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
            _ => None,
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| text(k).as_deref() == Some(name))
                .and_then(|(_, v)| text(v))
        };
        if field("library_name").as_deref() == Some("wsgw") {
            return field("library_code");
        }
    }
    None
}

/// One pass: every primary that serves slots gets this build's library. Fails only when no
/// seed answered; a primary that failed is in the report.
pub async fn sync_functions(
    seeds: &[String],
    tls: &RedisTls,
    timeout: Duration,
) -> Result<Vec<PrimaryReport>, BrokerError> {
    let seed = seeds.first().cloned().unwrap_or_default();
    let mut reports = Vec::new();
    for addr in primaries(seeds, tls, timeout).await? {
        let url = node_url(&seed, &addr);
        let outcome = match connect(&url, tls, timeout).await {
            Ok(mut c) => ensure(&mut c, timeout)
                .await
                .unwrap_or_else(|e| PrimaryOutcome::Failed(e.to_string())),
            Err(e) => PrimaryOutcome::Failed(e.to_string()),
        };
        reports.push(PrimaryReport { addr, outcome });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_primaries_that_serve_slots_from_cluster_nodes() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461-10922 12000
c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected
d4 127.0.0.1:7003@17003 master - 0 0 4 connected
e5 127.0.0.1:7004@17004 master,fail - 0 0 5 disconnected 10923-11999
f6 ::1:7005@17005 master - 0 0 6 connected 12001-16383
";
        let found: Vec<String> = text.lines().filter_map(primary_with_slots).collect();
        assert_eq!(found, ["127.0.0.1:7000", "127.0.0.1:7001", "::1:7005"]);
    }

    #[test]
    fn a_nodes_url_keeps_the_seeds_scheme_and_credentials() {
        assert_eq!(
            node_url("redis://127.0.0.1:7000", "10.0.0.2:7001"),
            "redis://10.0.0.2:7001"
        );
        assert_eq!(
            node_url("rediss://app:s3cret@seed.example:7000/0", "10.0.0.2:7001"),
            "rediss://app:s3cret@10.0.0.2:7001"
        );
        assert_eq!(node_url("redis://:pw@[::1]:7000", "::1:7005"), "redis://:pw@[::1]:7005");
    }
}
