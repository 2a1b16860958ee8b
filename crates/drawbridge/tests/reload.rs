//! Live reload and graceful shutdown: valid changes apply without dropping requests, invalid
//! ones leave the old configuration serving, SIGTERM drains what is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use http::StatusCode;

fn two_routes(up: &str, second: &str) -> Config {
    config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{up}\"]\n\n\
         [[routes]]\nname = \"old\"\nprefix = \"/old\"\nstrip_prefix = true\nupstream = \"app\"\npublic = true\n\n{second}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_reload_under_load_drops_nothing() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&two_routes(&up.url(), "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, bad, url) = (stop.clone(), ok.clone(), bad.clone(), h.url("/old/x"));
        workers.push(tokio::spawn(async move {
            let client = h1_client();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(&url)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                match client.request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => bad.lock().expect("lock").push(r.status().to_string()),
                    Err(e) => bad.lock().expect("lock").push(e.to_string()),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..10 {
        let second = format!(
            "[[routes]]\nname = \"new{i}\"\nprefix = \"/new{i}\"\nupstream = \"app\"\npublic = true\n"
        );
        std::fs::write(h.config_path(), two_routes(&up.url(), &second).text()).expect("write");
        h.proxy.reload().expect("valid reload");
        assert_eq!(
            get(&h.url(&format!("/new{i}"))).await.status,
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    assert!(
        bad.lock().expect("lock").is_empty(),
        "requests failed during reload: {:?}",
        bad.lock().expect("lock")
    );
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    // The last config no longer has /new0.
    assert_eq!(get(&h.url("/new0")).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_reload_keeps_the_old_config_serving() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&two_routes(&up.url(), "")).await;
    let version = h.proxy.version();
    let broken = two_routes(
        &up.url(),
        "[[routes]]\nname = \"broken\"\nprefix = \"/new\"\nupstream = \"missing\"\npublic = true\n",
    )
    .text();
    std::fs::write(h.config_path(), &broken).expect("write");
    let err = h.proxy.reload().expect_err("must refuse");
    let text = err.to_string();
    let at = format!(
        "drawbridge.toml:{}:12",
        line_of(&broken, "upstream = \"missing\"")
    );
    assert!(text.contains(&at), "{text}\nexpected {at}");
    assert!(text.contains("routes[1].upstream"), "{text}");
    assert_eq!(h.proxy.version(), version);
    assert_eq!(get(&h.url("/old")).await.status, StatusCode::OK);
    assert_eq!(get(&h.url("/new")).await.status, StatusCode::NOT_FOUND);

    std::fs::write(
        h.config_path(),
        two_routes(&up.url(), "")
            .listener("address", "127.0.0.1:1")
            .text(),
    )
    .expect("write");
    assert!(matches!(
        h.proxy.reload(),
        Err(drawbridge_proxy::ReloadError::ListenersChanged)
    ));
    assert_eq!(get(&h.url("/old")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn requests_in_flight_finish_on_their_snapshot() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&two_routes(&up.url(), "")).await;
    let started = std::time::Instant::now();
    let slow = tokio::spawn(get_owned(h.url("/old/__upstream/sleep/500")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The new config removes the route the slow request is on.
    std::fs::write(
        h.config_path(),
        two_routes(&up.url(), "")
            .set("routes.0.prefix", "/other")
            .text(),
    )
    .expect("write");
    h.proxy.reload().expect("valid");
    assert_eq!(slow.await.expect("join").status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the slow request was not slow"
    );
    assert_eq!(get(&h.url("/old")).await.status, StatusCode::NOT_FOUND);
}

async fn get_owned(url: String) -> Reply {
    get(&url).await
}

#[tokio::test]
async fn the_binary_reloads_on_file_change_and_sighup_and_drains_on_sigterm() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Kubernetes-style: the config is a symlink into a data directory that is swapped.
    let data1 = dir.path().join("data-1");
    std::fs::create_dir(&data1).expect("mkdir");
    let cfg = |second: &str| two_routes(&up.url(), second).server("watch", true).text();
    std::fs::write(data1.join("drawbridge.toml"), cfg("")).expect("write");
    std::os::unix::fs::symlink("data-1", dir.path().join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/drawbridge.toml", dir.path().join("drawbridge.toml"))
        .expect("symlink");
    let bin = Binary::serve(&dir.path().join("drawbridge.toml"));
    assert_eq!(get(&bin.url("/old")).await.status, StatusCode::OK);

    // Swap the data directory atomically, as the kubelet does.
    let data2 = dir.path().join("data-2");
    std::fs::create_dir(&data2).expect("mkdir");
    std::fs::write(data2.join("drawbridge.toml"), cfg("[[routes]]\nname = \"watched\"\nprefix = \"/watched\"\nupstream = \"app\"\npublic = true\n")).expect("write");
    std::os::unix::fs::symlink("data-2", dir.path().join("..data_tmp")).expect("symlink");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap");
    let url = bin.url("/watched");
    assert!(
        eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move { get(&url).await.status == StatusCode::OK }
        })
        .await,
        "file change not applied:\n{}",
        bin.log()
    );

    // An invalid file is refused; the old routes keep serving.
    std::fs::write(data2.join("drawbridge.toml"), "[[routes]\n").expect("write");
    assert!(
        eventually(Duration::from_secs(10), || async {
            bin.log().contains("reload refused")
        })
        .await,
        "{}",
        bin.log()
    );
    assert!(bin.log().contains("drawbridge.toml:1:"), "{}", bin.log());
    assert_eq!(get(&bin.url("/watched")).await.status, StatusCode::OK);

    // SIGHUP reloads too.
    std::fs::write(
        data2.join("drawbridge.toml"),
        cfg("[[routes]]\nname = \"hup\"\nprefix = \"/hup\"\nupstream = \"app\"\npublic = true\n"),
    )
    .expect("write");
    bin.signal("HUP");
    let url = bin.url("/hup");
    assert!(
        eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move { get(&url).await.status == StatusCode::OK }
        })
        .await,
        "{}",
        bin.log()
    );

    // SIGTERM: the slow request in flight completes, then the process exits cleanly.
    let started = std::time::Instant::now();
    let slow = tokio::spawn(get_owned(bin.url("/old/__upstream/sleep/800")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    bin.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(bin.addr).await.is_err(),
        "still accepting while draining"
    );
    assert_eq!(
        slow.await.expect("join").status,
        StatusCode::OK,
        "{}",
        bin.log()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "the slow request was not slow"
    );
    let mut bin = bin;
    let status = tokio::task::spawn_blocking(move || {
        let s = bin.child.wait().expect("wait");
        (s, bin)
    })
    .await
    .expect("join");
    assert!(
        status.0.success(),
        "exit status {:?}\n{}",
        status.0,
        status.1.log()
    );
    assert!(
        tokio::net::TcpStream::connect(status.1.addr).await.is_err(),
        "still accepting after shutdown"
    );
}

/// Only the files the configuration is made of trigger a reload: an access log written
/// beside the config recompiles nothing. A refused file is reported once per distinct
/// refusal, not at every touch.
#[tokio::test]
async fn only_the_configs_own_files_reload_and_a_refusal_is_said_once() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    let cfg = two_routes(&up.url(), "")
        .server("watch", true)
        .server("access_log", "access.jsonl")
        .text();
    std::fs::write(&path, &cfg).expect("write");
    let bin = Binary::serve_logging(&path, "info,drawbridge_proxy::reload=debug");
    let reloads = |log: &str| log.matches("cause=\"file change\"").count();
    for _ in 0..20 {
        assert_eq!(get(&bin.url("/old")).await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(dir.path().join("access.jsonl"))
                .is_ok_and(|l| l.lines().count() >= 20)
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        reloads(&bin.log()),
        0,
        "the access log reloaded:\n{}",
        bin.log()
    );

    // A broken edit is refused once, however often the same file is touched again.
    std::fs::write(&path, "[[routes]\n").expect("write");
    assert!(
        eventually(Duration::from_secs(10), || async {
            bin.log().contains("reload refused;")
        })
        .await,
        "{}",
        bin.log()
    );
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        std::fs::write(&path, "[[routes]\n").expect("write");
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            bin.log().matches("refused again").count() >= 3
        })
        .await,
        "{}",
        bin.log()
    );
    assert_eq!(
        bin.log().matches("reload refused;").count(),
        1,
        "{}",
        bin.log()
    );
    // Another mistake is another report.
    std::fs::write(&path, "[server]\nnope = 1\n").expect("write");
    assert!(
        eventually(Duration::from_secs(10), || async {
            bin.log().matches("reload refused;").count() == 2
        })
        .await,
        "{}",
        bin.log()
    );
    assert_eq!(get(&bin.url("/old")).await.status, StatusCode::OK);
}

/// Opens a connection and has one request answered on it; `None` if not served in time.
/// `max_connections` is applied by a reload (it was read once per listener and a changed
/// value silently ignored): raised, more requests are served at once; lowered, the new cap
/// holds once enough connections closed. The connections hold requests in flight (idle
/// ones would be closed to make room).
#[tokio::test]
async fn a_reload_applies_a_new_connection_cap() {
    let up = RecordingUpstream::start().await;
    let cfg = |cap: usize| two_routes(&up.url(), "").limits("max_connections", cap as i64);
    let h = Harness::start(&cfg(2)).await;
    let busy = || in_flight(h.addr, "/old/x");
    let a = busy().await.expect("first");
    let b = busy().await.expect("second");
    assert!(busy().await.is_none(), "admitted past the cap of 2");
    std::fs::write(h.config_path(), cfg(4).text()).expect("write");
    h.proxy.reload().expect("reload");
    let c = busy().await.expect("admitted under the cap of 4");
    let d = busy().await;
    assert!(d.is_some(), "the fourth slot");
    assert!(busy().await.is_none(), "admitted past the cap of 4");
    // Lowered to 1 with 4 open: nothing new until three have closed.
    std::fs::write(h.config_path(), cfg(1).text()).expect("write");
    h.proxy.reload().expect("reload");
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(busy().await.is_none(), "admitted past the lowered cap");
    drop((c, d));
    let e = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(s) = busy().await {
                return s;
            }
        }
    })
    .await
    .expect("admitted once every connection over the cap closed");
    assert!(busy().await.is_none(), "one at a time");
    drop(e);
}

/// The signals the binary answers are answered from the moment it listens: a SIGHUP sent as
/// soon as it says so does not end it (its default action would), and a SIGTERM right after
/// drains it: it exits on its own, having said so, not killed.
/// Repeated, because a process that registers its signals late loses this race only now
/// and then.
#[tokio::test]
async fn signals_sent_as_soon_as_it_listens_are_answered() {
    use std::os::unix::process::ExitStatusExt;
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    std::fs::write(&path, two_routes(&up.url(), "").text()).expect("write");
    for round in 0..10 {
        let bin = Binary::serve(&path);
        for sig in ["HUP", "TERM"] {
            bin.signal(sig);
        }
        let (status, log) = bin.exited().await;
        assert_eq!(
            status.signal(),
            None,
            "round {round}: killed by a signal\n{log}"
        );
        assert!(status.success(), "round {round}: {status}\n{log}");
        assert!(log.contains("stopped"), "round {round}: {log}");
    }
}
