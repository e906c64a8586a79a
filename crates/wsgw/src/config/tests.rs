//! Unit tests of the configuration layers (defaults, file, env, flags) and their checks.

use super::*;
use clap::{CommandFactory, Parser};
use format::redact_url;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A config file unique to this test run, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "wsgw-config-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn cli_with_file(file: &TempFile) -> Cli {
    Cli {
        config: Some(file.0.clone()),
        ..Cli::default()
    }
}

#[test]
fn with_nothing_set_the_defaults_apply() {
    let c = Config::load(&Cli::default(), &env(&[])).unwrap();
    assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.node_id, "");
    assert!(!c.dev);
    assert!(c.jwt_secret.is_none());
    assert_eq!(c.jwt_leeway_s, 5);
    assert!(c.jwt_require_exp);
    assert!(c.redis_url.is_none());
    assert_eq!(c.redis_prefix, "ws:");
    assert_eq!((c.heartbeat_interval_ms, c.heartbeat_timeout_ms), (30_000, 60_000));
    assert_eq!((c.max_message_bytes, c.max_publish_bytes), (65_536, 1_048_576));
    assert_eq!((c.max_connections, c.max_connections_per_user), (100_000, 0));
    assert_eq!((c.send_queue, c.session_ttl_ms), (1024, 120_000));
    assert_eq!(
        (c.history_size, c.history_ttl_ms, c.max_replay),
        (1000, 3_600_000, 1000)
    );
    assert_eq!(c.max_subscriptions, 128);
    assert_eq!(
        (c.rate_limit_per_s, c.rate_limit_burst, c.rate_limit_strikes),
        (50, 100, 20)
    );
    assert_eq!((c.drain_ms, c.ws_read_buffer_bytes), (5000, 512));
    assert_eq!(c.log, "info");
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.runtime, RuntimeFlavor::MultiThread);
    assert_eq!(c.worker_threads, 0);
}

#[test]
fn env_overrides_the_file_and_the_file_overrides_defaults() {
    let file = TempFile::new(
        "listen = \"127.0.0.1:9000\"\nlog = \"debug\"\nheartbeat_interval_ms = 1000\n\
         heartbeat_timeout_ms = 5000\nlog_format = \"json\"\n",
    );
    let c = Config::load(
        &cli_with_file(&file),
        &env(&[("WSGW_LOG", "warn"), ("WSGW_HEARTBEAT_TIMEOUT_MS", "9000")]),
    )
    .unwrap();
    assert_eq!(c.log, "warn");
    assert_eq!(c.heartbeat_timeout_ms, 9000);
    assert_eq!(c.heartbeat_interval_ms, 1000);
    assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.max_replay, 1000, "keys absent from the file keep their defaults");
}

#[test]
fn flags_override_env() {
    let cli = Cli::try_parse_from([
        "wsgw",
        "--listen",
        "127.0.0.1:1",
        "--log",
        "trace",
        "--log-format",
        "json",
        "--max-connections",
        "7",
        "--worker-threads",
        "2",
        "--node-id",
        "n1",
        "--redis-url",
        "redis://r:6379",
        "--dev",
    ])
    .unwrap();
    let e = env(&[
        ("WSGW_LISTEN", "127.0.0.1:2"),
        ("WSGW_LOG", "warn"),
        ("WSGW_LOG_FORMAT", "text"),
        ("WSGW_MAX_CONNECTIONS", "8"),
        ("WSGW_WORKER_THREADS", "3"),
        ("WSGW_NODE_ID", "n2"),
        ("WSGW_REDIS_URL", "redis://other:6379"),
        ("WSGW_DEV", "no"),
        ("WSGW_SEND_QUEUE", "16"),
    ]);
    let c = Config::load(&cli, &e).unwrap();
    assert_eq!(c.listen, "127.0.0.1:1".parse().unwrap());
    assert_eq!(c.log, "trace");
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.max_connections, 7);
    assert_eq!(c.worker_threads, 2);
    assert_eq!(c.node_id, "n1");
    assert_eq!(
        c.redis_url.as_ref().map(ExposeSecret::expose_secret),
        Some("redis://r:6379")
    );
    assert!(c.dev);
    assert_eq!(c.send_queue, 16, "env still applies where no flag was given");

    // Absent flags leave env alone.
    let c = Config::load(&Cli::default(), &e).unwrap();
    assert_eq!((c.log.as_str(), c.max_connections, c.dev), ("warn", 8, false));
}

#[test]
fn dev_listens_on_loopback_unless_a_layer_names_the_address() {
    let dev = Cli {
        dev: true,
        ..Cli::default()
    };
    let loopback: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(Config::load(&dev, &env(&[])).unwrap().listen, loopback);
    let c = Config::load(&Cli::default(), &env(&[("WSGW_DEV", "true")])).unwrap();
    assert_eq!(c.listen, loopback, "WSGW_DEV too");
    // Without dev mode the default stays.
    assert_eq!(
        Config::load(&Cli::default(), &env(&[])).unwrap().listen,
        "0.0.0.0:8080".parse().unwrap()
    );
    // Any layer that names the address wins, even when it names the non-dev default.
    let e = env(&[("WSGW_LISTEN", "0.0.0.0:8080")]);
    assert_eq!(Config::load(&dev, &e).unwrap().listen, "0.0.0.0:8080".parse().unwrap());
    let flag = Cli {
        dev: true,
        listen: Some("0.0.0.0:9001".parse().unwrap()),
        ..Cli::default()
    };
    assert_eq!(
        Config::load(&flag, &env(&[])).unwrap().listen,
        "0.0.0.0:9001".parse().unwrap()
    );
    let file = TempFile::new("listen = \"0.0.0.0:9002\"\n");
    assert_eq!(
        Config::load(
            &Cli {
                dev: true,
                ..cli_with_file(&file)
            },
            &env(&[])
        )
        .unwrap()
        .listen,
        "0.0.0.0:9002".parse().unwrap()
    );
    let file = TempFile::new("dev = true\n");
    assert_eq!(Config::load(&cli_with_file(&file), &env(&[])).unwrap().listen, loopback);
}

#[test]
fn a_bad_number_names_the_variable_and_what_was_expected() {
    let err = Config::load(&Cli::default(), &env(&[("WSGW_HEARTBEAT_INTERVAL_MS", "abc")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "WSGW_HEARTBEAT_INTERVAL_MS=abc: expected a whole number of milliseconds"
    );
    let err = Config::load(&Cli::default(), &env(&[("WSGW_RATE_LIMIT_PER_S", "-1")])).unwrap_err();
    assert!(
        err.to_string().starts_with("WSGW_RATE_LIMIT_PER_S=-1: expected"),
        "{err}"
    );
}

#[test]
fn a_bad_log_format_names_the_choices() {
    let err = Config::load(&Cli::default(), &env(&[("WSGW_LOG_FORMAT", "xml")])).unwrap_err();
    assert_eq!(err.to_string(), "WSGW_LOG_FORMAT=xml: expected text or json");
    // Case does not matter for enum values from env.
    let c = Config::load(&Cli::default(), &env(&[("WSGW_LOG_FORMAT", "JSON")])).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    // The flag is checked by clap.
    assert!(Cli::try_parse_from(["wsgw", "--log-format", "xml"]).is_err());
}

#[test]
fn an_unknown_toml_key_is_an_error_naming_the_key_and_file() {
    let file = TempFile::new("listen = \"127.0.0.1:9000\"\nheartbeat_intervl_ms = 10\n");
    let err = Config::load(&cli_with_file(&file), &env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("heartbeat_intervl_ms"), "{msg}");
    assert!(msg.contains(&file.0.display().to_string()), "{msg}");
}

#[test]
fn a_heartbeat_timeout_not_above_the_interval_is_rejected() {
    let e = env(&[("WSGW_HEARTBEAT_INTERVAL_MS", "60000")]);
    let err = Config::load(&Cli::default(), &e).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                key: "heartbeat_timeout_ms",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("heartbeat_interval_ms"), "{err}");

    let mut c = Config::default();
    c.heartbeat_timeout_ms = c.heartbeat_interval_ms + 1;
    c.validate().unwrap();
}

#[test]
fn other_cross_field_checks() {
    let bad = |f: fn(&mut Config), key: &str| {
        let mut c = Config::default();
        f(&mut c);
        match c.validate() {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
            other => panic!("expected {key} to be rejected, got {other:?}"),
        }
    };
    bad(|c| c.max_message_bytes = 0, "max_message_bytes");
    bad(|c| c.send_queue = 0, "send_queue");
    bad(|c| c.rate_limit_burst = 0, "rate_limit_burst");
    bad(|c| c.hook_timeout_ms = 0, "hook_timeout_ms");
    bad(
        |c| c.hook_publish_url = Some("ftp://app/hook".into()),
        "hook_publish_url",
    );
    bad(
        |c| {
            c.jwt_secret = Some("s".into());
            c.jwt_public_key_file = Some("k.pem".into());
        },
        "jwt_secret",
    );
    bad(|c| c.api_key = Some(String::new().into()), "api_key");
    bad(|c| c.jwt_secret = Some(REDACTED.into()), "jwt_secret");
    bad(
        |c| c.jwt_secret = Some("31-bytes-0123456789abcdefghijkl".into()),
        "jwt_secret",
    );
    bad(|c| c.allowed_origins = vec!["example.org".into()], "allowed_origins");
    bad(|c| c.jwt_jwks_url = Some("ftp://idp/jwks.json".into()), "jwt_jwks_url");
    bad(
        |c| {
            c.jwt_jwks_url = Some("https://idp/jwks.json".into());
            c.jwt_jwks_file = Some("jwks.json".into());
        },
        "jwt_jwks_url",
    );
    bad(|c| c.jwt_jwks_refresh_s = 0, "jwt_jwks_refresh_s");
    bad(|c| c.redis_prefix = "app{3}".into(), "redis_prefix");
    bad(|c| c.write_delay_ms = 1001, "write_delay_ms");
    bad(|c| c.write_pace_ms = 1001, "write_pace_ms");
    // The pace is on by default: a short Redis timeout cuts it instead of refusing to start.
    let short = Config {
        redis_timeout_ms: 20,
        ..Config::default()
    };
    short.validate().unwrap();
    assert_eq!(short.effective_write_pace_ms(), 20);
    assert_eq!(Config::default().effective_write_pace_ms(), 50);
    bad(
        |c| {
            c.redis_cluster = Some("redis://127.0.0.1:7000".into());
            c.write_delay_ms = 20;
        },
        "write_delay_ms",
    );
    bad(
        |c| {
            c.redis_timeout_ms = 200;
            c.write_delay_ms = 201;
        },
        "write_delay_ms",
    );
    Config {
        write_delay_ms: 1000,
        ..Config::default()
    }
    .validate()
    .unwrap();
    Config {
        redis_prefix: "{app}:".into(),
        ..Config::default()
    }
    .validate()
    .unwrap();
    // --dev accepts a short secret; 32 bytes pass everywhere.
    Config {
        dev: true,
        jwt_secret: Some("short".into()),
        ..Config::default()
    }
    .validate()
    .unwrap();
    Config {
        jwt_secret: Some("32-bytes-0123456789abcdefghijklm".into()),
        ..Config::default()
    }
    .validate()
    .unwrap();
    bad(
        |c| {
            c.runtime = RuntimeFlavor::CurrentThread;
            c.worker_threads = 2;
        },
        "worker_threads",
    );
    // Rate limiting off makes a zero burst irrelevant.
    let c = Config {
        rate_limit_per_s: 0,
        rate_limit_burst: 0,
        ..Config::default()
    };
    c.validate().unwrap();
}

#[test]
fn sentinel_settings_are_checked_and_their_passwords_redacted() {
    let both = env(&[
        ("WSGW_REDIS_URL", "redis://r:6379"),
        ("WSGW_REDIS_SENTINELS", "s1:26379"),
        ("WSGW_REDIS_SENTINEL_MASTER", "m"),
    ]);
    let err = Config::load(&Cli::default(), &both).unwrap_err().to_string();
    assert!(err.contains("either redis_url or redis_sentinels"), "{err}");
    let no_master = env(&[("WSGW_REDIS_SENTINELS", "s1:26379")]);
    let err = Config::load(&Cli::default(), &no_master).unwrap_err().to_string();
    assert!(err.contains("redis_sentinel_master"), "{err}");
    let bad = env(&[("WSGW_REDIS_SENTINELS", "s1"), ("WSGW_REDIS_SENTINEL_MASTER", "m")]);
    let err = Config::load(&Cli::default(), &bad).unwrap_err().to_string();
    assert!(err.contains("\"s1\" is not host:port"), "{err}");
    let ok = env(&[
        ("WSGW_REDIS_SENTINELS", " s1:26379, s2:26380 ,"),
        ("WSGW_REDIS_SENTINEL_MASTER", "m"),
        ("WSGW_REDIS_PASSWORD", "hunter2-primary"),
        ("WSGW_REDIS_SENTINEL_PASSWORD", "hunter2-sentinel"),
    ]);
    let c = Config::load(&Cli::default(), &ok).unwrap();
    assert_eq!(c.redis_sentinels, ["s1:26379", "s2:26380"]);
    let out = c.to_redacted_toml();
    assert!(
        !out.contains("hunter2") && !format!("{c:?}").contains("hunter2"),
        "{out}"
    );
    assert!(out.contains("redis_password = \"<redacted>\""), "{out}");
}

#[test]
fn redacted_toml_hides_secrets_and_loads_back() {
    let e = env(&[
        ("WSGW_JWT_SECRET", "hunter2-jwt-0123456789abcdef0123456789"),
        ("WSGW_API_KEY", "hunter2-api"),
        ("WSGW_REDIS_URL", "redis://app:hunter2-redis@redis.internal:6379/0"),
        ("WSGW_JWT_AUDIENCE", "clients"),
    ]);
    let c = Config::load(&Cli::default(), &e).unwrap();
    let out = c.to_redacted_toml();
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("jwt_secret = \"<redacted>\""), "{out}");
    assert!(out.contains("redis://app:<redacted>@redis.internal:6379/0"), "{out}");
    assert!(out.contains("jwt_audience = \"clients\""), "{out}");
    assert!(out.contains("runtime = \"multi_thread\""), "{out}");
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "Debug must not leak secrets either"
    );

    // Apart from the secrets, the output is a valid config file.
    let back: Config = toml::from_str(&out).unwrap();
    assert_eq!(back.listen, c.listen);
    assert_eq!(back.jwt_audience, c.jwt_audience);
    assert_eq!(back.runtime, c.runtime);
    assert!(
        back.validate().is_err(),
        "placeholder secrets must not pass as real ones"
    );
}

#[test]
fn redis_url_redaction_covers_the_common_shapes() {
    assert_eq!(redact_url("redis://localhost:6379"), "redis://localhost:6379");
    assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:<redacted>@h:6379");
    assert_eq!(redact_url("rediss://u:p:w@h/1"), "rediss://u:<redacted>@h/1");
    assert_eq!(redact_url("redis://pw@h"), "redis://<redacted>@h");
    assert_eq!(
        redact_url("redis+unix:///run/redis.sock?db=1&pass=pw"),
        "redis+unix:///run/redis.sock?db=1&pass=<redacted>"
    );
    assert_eq!(redact_url("not a url"), REDACTED);
}

#[test]
fn wsgw_config_picks_the_file_unless_a_flag_names_another() {
    let from_env = TempFile::new("node_id = \"from-env-file\"\n");
    let from_flag = TempFile::new("node_id = \"from-flag-file\"\n");
    let e = env(&[("WSGW_CONFIG", from_env.0.to_str().unwrap())]);
    assert_eq!(Config::load(&Cli::default(), &e).unwrap().node_id, "from-env-file");
    assert_eq!(
        Config::load(&cli_with_file(&from_flag), &e).unwrap().node_id,
        "from-flag-file"
    );
}

#[test]
fn a_missing_file_names_its_path() {
    let path = std::env::temp_dir().join("wsgw-config-test-does-not-exist.toml");
    let e = env(&[("WSGW_CONFIG", path.to_str().unwrap())]);
    let err = Config::load(&Cli::default(), &e).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains("wsgw-config-test-does-not-exist.toml"),
        "{err}"
    );
}

#[test]
fn empty_env_values_count_as_unset_and_booleans_accept_common_spellings() {
    let c = Config::load(
        &Cli::default(),
        &env(&[("WSGW_LOG", ""), ("WSGW_MAX_REPLAY", " "), ("WSGW_JWT_SECRET", "")]),
    )
    .unwrap();
    assert_eq!(
        (c.log.as_str(), c.max_replay, c.jwt_secret.is_none()),
        ("info", 1000, true)
    );

    for (value, want) in [
        ("true", true),
        ("1", true),
        ("YES", true),
        ("false", false),
        ("0", false),
        ("no", false),
    ] {
        let c = Config::load(&Cli::default(), &env(&[("WSGW_JWT_REQUIRE_EXP", value)])).unwrap();
        assert_eq!(c.jwt_require_exp, want, "{value}");
    }
    let err = Config::load(&Cli::default(), &env(&[("WSGW_DEV", "maybe")])).unwrap_err();
    assert_eq!(err.to_string(), "WSGW_DEV=maybe: expected true, false, 1, 0, yes or no");
}

#[test]
fn runtime_flavor_from_env() {
    let e = env(&[("WSGW_RUNTIME", "current-thread")]);
    assert_eq!(
        Config::load(&Cli::default(), &e).unwrap().runtime,
        RuntimeFlavor::CurrentThread
    );
    let e = env(&[("WSGW_RUNTIME", "per_core"), ("WSGW_WORKER_THREADS", "3")]);
    let c = Config::load(&Cli::default(), &e).unwrap();
    assert_eq!((c.runtime, c.worker_threads), (RuntimeFlavor::PerCore, 3));
    let err = Config::load(&Cli::default(), &env(&[("WSGW_RUNTIME", "tokio")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "WSGW_RUNTIME=tokio: expected multi_thread, current_thread or per_core"
    );
}

#[test]
fn trusted_proxies_are_parsed_where_they_are_read_and_a_bad_entry_is_named() {
    let e = env(&[("WSGW_TRUSTED_PROXIES", " 127.0.0.1, 10.0.0.0/8 ,, fd00::/8")]);
    let c = Config::load(&Cli::default(), &e).unwrap();
    let want: Vec<ipnet::IpNet> = ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(c.trusted_proxies, want);
    assert!(
        c.to_redacted_toml()
            .contains(r#"trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "fd00::/8"]"#),
        "{}",
        c.to_redacted_toml()
    );

    let message = r#"invalid configuration: trusted_proxies: "nginx" is not an IP address or CIDR"#;
    let err = Config::load(&Cli::default(), &env(&[("WSGW_TRUSTED_PROXIES", "127.0.0.1,nginx")])).unwrap_err();
    assert_eq!(err.to_string(), message);
    let file = TempFile::new("trusted_proxies = [\"127.0.0.1\", \"nginx\"]\n");
    let err = Config::load(&cli_with_file(&file), &env(&[])).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                key: "trusted_proxies",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), message);
    let file = TempFile::new("trusted_proxies = [\"10.0.0.0/33\"]\n");
    let err = Config::load(&cli_with_file(&file), &env(&[])).unwrap_err();
    assert!(
        err.to_string()
            .ends_with(r#""10.0.0.0/33" is not an IP address or CIDR"#),
        "{err}"
    );
    // A wrong type is still a file error.
    let file = TempFile::new("trusted_proxies = \"127.0.0.1\"\n");
    let err = Config::load(&cli_with_file(&file), &env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
}

#[test]
fn the_settings_table_has_one_entry_per_field_and_env_var() {
    let mut keys: Vec<_> = SETTINGS.iter().map(|s| s.key).collect();
    let mut vars: Vec<_> = SETTINGS.iter().map(|s| s.env).collect();
    keys.sort_unstable();
    keys.dedup();
    vars.sort_unstable();
    vars.dedup();
    assert_eq!((keys.len(), vars.len()), (SETTINGS.len(), SETTINGS.len()));
    for s in SETTINGS {
        assert_eq!(s.env, format!("WSGW_{}", s.key.to_ascii_uppercase()), "{s:?}");
    }
    // Every flag of a setting names a setting (the others only steer the process).
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        if !["config", "print_config", "help", "version"].contains(&id) {
            assert!(SETTINGS.iter().any(|s| s.key == id), "flag --{id} sets no setting");
        }
    }
}

#[test]
fn the_cli_definition_is_consistent() {
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from(["wsgw", "--config", "x.toml", "--print-config"]).unwrap();
    assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
    assert!(cli.print_config && !cli.dev && cli.listen.is_none());
}
