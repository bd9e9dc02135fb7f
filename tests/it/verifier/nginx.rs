//! A real nginx (Debian's package; `.ci/run` installs it) running the
//! shipped `examples/verifier/nginx.conf`, ports substituted, in front of
//! the example Python upstream, asking a verifier that trusts a real
//! sidecar. Needs `nginx` and `python3`: without them the test fails, it
//! never skips.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::*;

/// A child process killed (and reaped) on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `examples/verifier/upstream.py` on 127.0.0.1:0; returns it and its address.
fn start_upstream() -> (Process, String) {
    let mut child = Command::new("python3")
        .arg(Path::new(EXAMPLES).join("upstream.py"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the example upstream");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("upstream listening on ")
        .unwrap_or_else(|| panic!("upstream said {line:?}"))
        .to_owned();
    (Process(child), addr)
}

/// nginx with the shipped config, its addresses replaced, in `dir`.
/// nginx cannot be told to listen on port 0 and report the port, so this is
/// the one place a port is picked by binding and releasing it.
fn start_nginx(dir: &Path, verifier: &str, upstream: &str) -> (Process, String) {
    let shipped = std::fs::read_to_string(Path::new(EXAMPLES).join("nginx.conf")).unwrap();
    let listen = closed_addr().to_string();
    for placeholder in ["127.0.0.1:8500", "127.0.0.1:8300", "listen 127.0.0.1:8080;"] {
        assert!(
            shipped.contains(placeholder),
            "nginx.conf lost {placeholder}"
        );
    }
    let conf = shipped
        .replace("127.0.0.1:8500", verifier)
        .replace("127.0.0.1:8300", upstream)
        .replace("listen 127.0.0.1:8080;", &format!("listen {listen};"));
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    // Debian installs it in /usr/sbin, which a non-root PATH may lack.
    let program = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nginx");
    let mut child = Command::new(program)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-e", "stderr"])
        // One process (no workers to outlive it if the test dies), which
        // also spares the `user` directive when the tests run as root.
        .args(["-g", "master_process off;"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run nginx ({e}): this test needs Debian's nginx (apt-get install -y nginx)"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("nginx exited ({status}):\n{err}");
        }
        assert!(Instant::now() < deadline, "nginx did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Process(child), format!("http://{listen}"))
}

/// What the client got: status, challenge, whether the upstream answered
/// (its own header), and the upstream's echo of the X-Auth-* headers.
#[derive(Debug)]
struct Through {
    status: u16,
    challenge: Option<String>,
    upstream: bool,
    echo: Value,
}

async fn through(
    nginx: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Through {
    let mut req = client().request(method, format!("{nginx}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    into_through(res).await
}

async fn into_through(res: reqwest::Response) -> Through {
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let upstream = res.headers().get("x-upstream").is_some();
    let echo = res.json().await.unwrap_or(Value::Null);
    Through {
        status,
        challenge,
        upstream,
        echo,
    }
}

/// A request written by hand (reqwest resolves dot segments before sending).
async fn raw(nginx: &str, method: &str, path: &str, token: &str) -> Through {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (answer, _) = raw_exchange(nginx, request.as_bytes(), Duration::from_secs(5)).await;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    Through {
        status,
        challenge: None,
        upstream: answer.to_ascii_lowercase().contains("\r\nx-upstream:"),
        echo: Value::Null,
    }
}

#[tokio::test]
async fn nginx_auth_request_with_the_shipped_config() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let (_upstream, upstream_addr) = start_upstream();
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, nginx) = start_nginx(dir.path(), &format!("127.0.0.1:{}", v.port), &upstream_addr);
    let all = token(&s, None).await;
    let task_only = token(&s, Some("task:operate:send-report")).await;

    // A good token: the upstream answers and sees who it speaks for.
    let r = through(&nginx, Method::GET, "/environment", Some(&all), &[]).await;
    assert_eq!((r.status, r.upstream), (200, true), "{r:?}");
    assert_eq!(r.echo["subject"], "app/web");
    assert_eq!(r.echo["environment"], "main");
    assert_eq!(r.echo["scope"], part(&all, 1)["scope"]);
    assert_eq!(r.echo["token_id"], part(&all, 1)["jti"]);
    let r = through(
        &nginx,
        Method::POST,
        "/tasks/send-report/runs?now=1",
        Some(&task_only),
        &[],
    )
    .await;
    assert_eq!((r.status, r.upstream), (200, true), "{r:?}");
    assert_eq!(r.echo["path"], "/tasks/send-report/runs?now=1");

    // No token: 401 with the layer's challenge, passed on by nginx.
    let r = through(&nginx, Method::GET, "/environment", None, &[]).await;
    assert_eq!((r.status, r.upstream), (401, false), "{r:?}");
    assert_eq!(r.challenge.as_deref(), Some("Bearer"));
    let r = through(
        &nginx,
        Method::GET,
        "/environment",
        Some("not-a-token"),
        &[],
    )
    .await;
    assert_eq!((r.status, r.upstream), (401, false), "{r:?}");
    assert!(
        r.challenge
            .unwrap()
            .starts_with("Bearer error=\"invalid_token\"")
    );

    // Insufficient scope: 403 naming the scope needed.
    let r = through(&nginx, Method::GET, "/environment", Some(&task_only), &[]).await;
    assert_eq!((r.status, r.upstream), (403, false), "{r:?}");
    assert_eq!(
        r.challenge.as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"env:view\"")
    );
    let r = through(&nginx, Method::POST, "/tasks/notify/runs", Some(&all), &[]).await;
    assert_eq!((r.status, r.upstream), (403, false), "{r:?}");

    // Unmatched routes: refused whatever the token.
    for (method, path) in [
        (Method::GET, "/admin"),
        (Method::DELETE, "/environment"),
        (Method::GET, "/environment/"),
    ] {
        let r = through(&nginx, method.clone(), path, Some(&all), &[]).await;
        assert_eq!(
            (r.status, r.upstream),
            (403, false),
            "{method} {path}: {r:?}"
        );
    }

    // Path tricks with a token for the task only never reach the
    // upstream's /environment (nginx itself answers 400 to some).
    for path in [
        "/tasks/send-report/runs/../../../environment",
        "/environment/../tasks/send-report/runs",
        "/tasks/send-report/runs/%2e%2e/%2e%2e/%2e%2e/environment",
        "/tasks/send-report/runs/..%2f..%2f..%2fenvironment",
        "/tasks/send-report/runs/..%5c..%5c..%5cenvironment",
        "//environment",
        "/./environment",
        "/../environment",
    ] {
        let r = raw(&nginx, "GET", path, &task_only).await;
        assert!(
            matches!(r.status, 400 | 403) && !r.upstream,
            "{path}: {r:?}"
        );
    }

    // A public route: no token needed, and a client's own X-Auth-Subject
    // never reaches the upstream (nginx sets the header, never appends).
    let r = through(
        &nginx,
        Method::GET,
        "/healthz",
        None,
        &[("x-auth-subject", "admin")],
    )
    .await;
    assert_eq!((r.status, r.upstream), (200, true), "{r:?}");
    assert_eq!(r.echo["subject"], Value::Null);
    let r = through(
        &nginx,
        Method::GET,
        "/environment",
        Some(&all),
        &[("x-auth-subject", "admin"), ("x-auth-scope", "*")],
    )
    .await;
    assert_eq!(r.echo["subject"], "app/web");
    assert_eq!(r.echo["scope"], part(&all, 1)["scope"]);

    // A client adding the Traefik/Caddy pair cannot choose what is checked.
    let r = through(
        &nginx,
        Method::POST,
        "/tasks/notify/runs",
        Some(&all),
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/healthz"),
            ("x-original-uri", "/healthz"),
        ],
    )
    .await;
    assert_eq!((r.status, r.upstream), (403, false), "{r:?}");
}
