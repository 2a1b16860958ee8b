//! A real Redis server for store tests: Debian's `redis-server` (installed by
//! `scripts/test.sh`) on a free loopback port, nothing persisted, stopped when dropped.

use std::time::Duration;

/// A running Redis server.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<std::process::Child>,
    /// With TLS only: the directory of its certificate and key.
    tls: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut s = RedisServer {
            port,
            child: None,
            tls: None,
        };
        s.restart();
        s
    }

    /// Starts one that speaks TLS only, with this certificate (for 127.0.0.1) and key.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("redis.crt"), cert_pem).expect("cert");
        std::fs::write(dir.path().join("redis.key"), key_pem).expect("key");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut s = RedisServer {
            port,
            child: None,
            tls: Some(dir),
        };
        s.restart();
        s
    }

    /// `redis://127.0.0.1:<port>/0`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Stops it (the port stays reserved for [`RedisServer::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let mut cmd = std::process::Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some(dir) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(dir.path().join("redis.crt"))
                .arg("--tls-key-file")
                .arg(dir.path().join("redis.key")),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
