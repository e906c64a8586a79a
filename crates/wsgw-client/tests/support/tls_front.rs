//! A real nginx TLS terminator in front of a gateway, as scripts/cluster.sh runs it (private
//! prefix, `daemon off`, stopped with SIGQUIT), with certificates made by openssl: a CA, a
//! server certificate it signed for 127.0.0.1 and localhost, and a second, unrelated CA.
//! Shared by crates/wsgw-client/tests/tls.rs and loadtest/tests/tls.rs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TlsFront {
    pub dir: PathBuf,
    pub port: u16,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        let subj = format!("/CN=wsgw test {ca}");
        let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
        openssl(
            dir,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subj, "-keyout", &key, "-out",
                &pem,
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

impl TlsFront {
    /// Certificates, then nginx listening with TLS on a free loopback port, proxying `/ws` and
    /// the rest to `upstream` (the gateway's plain HTTP address).
    pub fn start(upstream: SocketAddr) -> TlsFront {
        let dir = std::env::temp_dir().join(format!("wsgw-tls-front-{}-{}", std::process::id(), free_port()));
        for sub in ["logs", "conf", "temp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        make_certs(&dir);
        let port = free_port();
        let p = dir.display();
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {p}/logs/nginx.pid;
error_log {p}/logs/error.log warn;
worker_shutdown_timeout 5s;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {p}/temp/client_body;
    proxy_temp_path       {p}/temp/proxy;
    fastcgi_temp_path     {p}/temp/fastcgi;
    uwsgi_temp_path       {p}/temp/uwsgi;
    scgi_temp_path        {p}/temp/scgi;
    access_log off;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    upstream wsgw {{
        server {upstream};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate     {p}/server.pem;
        ssl_certificate_key {p}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_http_version 1.1;
        proxy_set_header Host              $host;
        proxy_set_header Upgrade           $http_upgrade;
        proxy_set_header Connection        $connection_upgrade;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_read_timeout 120s;
        proxy_send_timeout 120s;
        location = /ws {{
            proxy_pass http://wsgw;
            proxy_buffering off;
        }}
        location / {{
            proxy_pass http://wsgw;
        }}
    }}
}}
"#
        );
        std::fs::write(dir.join("conf/nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                "conf/nginx.conf",
                "-e",
                "logs/error.log",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx runs (scripts/test.sh installs it)");
        let mut front = TlsFront { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = front.child.try_wait() {
                let log = std::fs::read_to_string(front.dir.join("logs/error.log")).unwrap_or_default();
                panic!("nginx exited ({status}): {log}");
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        front
    }

    pub fn wss_url(&self) -> String {
        format!("wss://127.0.0.1:{}/ws", self.port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        // kill -QUIT: a graceful stop of this nginx master (and its worker) only.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
