//! Where the sidecar listens (DESIGN §4, §6; issue #11 item 11): both
//! loopback addresses by default, a list from the config or the
//! environment, and IPv4 loopback clients reaching a `[::]` listener.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use crate::common::*;

/// Whether this machine can bind IPv6 sockets at all.
fn ipv6_available(addr: &str) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

/// Bound to `[::]`, the sidecar sees IPv4 clients as `::ffff:127.0.0.1`:
/// loopback peers, which get tokens.
#[tokio::test]
async fn a_wildcard_ipv6_listener_serves_ipv4_loopback_clients() {
    // The rule itself holds whatever this machine offers.
    assert!(authproxy::serve::is_loopback_peer(
        "::ffff:127.0.0.1".parse().unwrap()
    ));
    if !ipv6_available("[::]:0") {
        eprintln!(
            "IPv6 UNAVAILABLE: only the loopback rule was checked here \
             (and in caller.rs's unit test), not a real [::] listener"
        );
        return;
    }
    let s = spawn_sidecar(Options {
        bind: "[::]:0",
        ..Options::default()
    })
    .await;
    // spawn_sidecar's url for a wildcard is http://127.0.0.1:PORT: IPv4.
    assert!(s.url.starts_with("http://127.0.0.1:"), "{}", s.url);
    let (status, body) =
        request_token(&s.token_url(), &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 200, "{body}");
}

/// `AUTHPROXY__SERVER__LISTEN` is a comma-separated list (DESIGN §6); the
/// daemon binds every address and serves them all.
#[tokio::test]
async fn the_daemon_binds_every_listed_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let both = [("AUTHPROXY__SERVER__LISTEN", "127.0.0.1:0,[::1]:0")];
    if !ipv6_available("[::1]:0") {
        // An address given explicitly that cannot be bound is an error,
        // never silently skipped.
        let mut d = std::process::Command::new(env!("CARGO_BIN_EXE_authproxy"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .envs(both)
            .output()
            .unwrap();
        d.stderr.extend_from_slice(&d.stdout);
        let out = String::from_utf8_lossy(&d.stderr);
        assert!(!d.status.success(), "{out}");
        assert!(out.contains("[::1]:0"), "{out}");
        eprintln!("IPv6 UNAVAILABLE: checked that an explicit [::1] fails to start");
        return;
    }
    let d = Daemon::start_with(&cfg, "text", "info", &both);
    let second = d.wait_log("sidecar listening");
    let v4 = d.url.clone();
    let v6 = format!("http://{}", logged_addr(&second));
    assert!(v4.starts_with("http://127.0.0.1:"), "{v4}");
    assert!(v6.starts_with("http://[::1]:"), "{v6}");
    for base in [&v4, &v6] {
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(5),
            request_token(
                &format!("{base}/oauth2/token"),
                &[("grant_type", "client_credentials")],
            ),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{base}: {body}");
    }
}
