//! Upgrades without refused connections: SIGUSR2 hands the listening sockets to a new
//! process of the binary, which serves from them while the old one drains and exits; a
//! successor that cannot start leaves the old process serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    drawbridge_testkit::reserved_port()
}

#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    failed: AtomicUsize,
    stop: AtomicBool,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock() {
            e.push(why);
        }
    }
}

/// One request on a new connection, as a client that does not keep connections: each must
/// be accepted and answered by one process or the other.
async fn one(addr: SocketAddr) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET /item HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .map_err(|_| "no reply in 10 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let reply = String::from_utf8_lossy(&reply);
    if reply.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "reply: {}",
            reply.lines().next().unwrap_or("(nothing)")
        ))
    }
}

fn start_load(addr: SocketAddr, clients: usize) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let tasks = (0..clients)
        .map(|_| {
            let load = load.clone();
            tokio::spawn(async move {
                while !load.stop.load(Ordering::Relaxed) {
                    match one(addr).await {
                        Ok(()) => {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => load.fail(e),
                    }
                }
            })
        })
        .collect();
    (load, tasks)
}

fn alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Stops a process this test did not start itself (the successor) however the test ends.
struct Stop(u32);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Waits up to `within` for `child` to exit; its status.
fn exited(child: &mut std::process::Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_the_sockets_over_under_load_without_a_failed_request() {
    let upstream = RecordingUpstream::start().await;
    let (port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    let good = format!(
        "[server]\naccess_log = \"off\"\nwatch = false\nshutdown_timeout = \"5s\"\n\n\
         [admin]\naddress = \"127.0.0.1:{admin_port}\"\n\n\
         [[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:{port}\"\n\n{}",
        upstream_and_route("app", &upstream.url())
    );
    std::fs::write(&path, &good).expect("config");
    let mut bin = Binary::serve(&path);
    let addr = bin.addr;
    assert_eq!(addr.port(), port);
    let old_pid = bin.child.id();

    let (load, tasks) = start_load(addr, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. A successor that cannot start (its configuration no longer loads) changes nothing.
    let broken = Config::parse(&good).set("routes.0.bogus", 1).text();
    std::fs::write(&path, broken).expect("write");
    bin.signal("USR2");
    assert!(
        eventually(Duration::from_secs(20), || async {
            bin.log().contains("upgrade failed; still serving")
        })
        .await,
        "{}",
        bin.log()
    );
    assert!(
        bin.child.try_wait().expect("wait").is_none(),
        "the old process stays"
    );
    let before = load.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(load.ok.load(Ordering::Relaxed) > before, "still serving");

    // 2. A successor that starts takes over; the old process drains and exits.
    std::fs::write(&path, &good).expect("write");
    bin.signal("USR2");
    let status = tokio::task::block_in_place(|| exited(&mut bin.child, Duration::from_secs(30)))
        .unwrap_or_else(|| panic!("the old process did not exit:\n{}", bin.log()));
    assert!(status.success(), "{status:?}\n{}", bin.log());
    let log = bin.log();
    let successor: u32 = log
        .lines()
        .find(|l| l.contains("the new process serves"))
        .and_then(|l| l.split("successor=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no successor pid in the log:\n{log}"));
    let _stop = Stop(successor);
    assert_ne!(successor, old_pid);
    assert!(alive(successor));
    assert!(
        log.contains("listening socket handed over; not binding"),
        "the successor took the sockets instead of binding:\n{log}"
    );
    // The successor alone serves now, on the same sockets, admin listener included.
    let after_exit = load.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let served = load.ok.load(Ordering::Relaxed);
    assert!(served > after_exit, "the successor serves");
    let health = get(&format!("http://127.0.0.1:{admin_port}/healthz")).await;
    assert_eq!(health.status, 200);

    let failed = load.failed.load(Ordering::Relaxed);
    let errors = load.errors.lock().map(|e| e.clone()).unwrap_or_default();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the upgrade: {:?}",
        served + failed,
        &errors[..errors.len().min(5)]
    );
    assert!(served > 200, "load ran: {served} requests");
    // Upstream saw every answered request.
    assert!(upstream.count() >= served);

    // The successor stops as any Drawbridge does.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &successor.to_string()])
        .status();
    let gone = eventually(Duration::from_secs(15), || async { !alive(successor) }).await;
    assert!(gone, "the successor did not stop");
}

/// A connection accepted just before the drain, whose request had not arrived yet, is
/// answered, not reset: in an upgrade its client connected to a socket that never closed.
#[tokio::test]
async fn a_connection_accepted_before_the_drain_gets_its_first_request_answered() {
    let upstream = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &upstream.url()))).await;
    let mut early = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    // Accepted (the connection's task runs), no request yet.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let proxy = h.proxy.clone();
    let drain = tokio::spawn(async move { proxy.shutdown().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    early
        .write_all(b"GET /late HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), early.read_to_end(&mut reply))
        .await
        .expect("answered in time")
        .expect("not reset");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // And the connection closed after it (`read_to_end` returned): the drain goes on.
    assert_eq!(upstream.last().expect("forwarded").target, "/late");
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("the drain ends")
        .expect("drain task");
}
