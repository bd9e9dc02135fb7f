//! Test helpers: spawn real sidecars on 127.0.0.1:0 and talk HTTP to them.
#![allow(dead_code)] // each test module uses some of the helpers

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use authproxy::config::Config;
use authproxy::daemon::Daemon as SidecarDaemon;
use authproxy::sidecar::Sidecar;
use tokio::sync::oneshot;

pub const PROJECT: &str = include_str!("../../../config/project.yaml");

/// Options for one test sidecar; `extra` is appended to `[tokens]`.
pub struct Options<'a> {
    pub workload: &'a str,
    pub environment: &'a str,
    pub declarations: &'a str,
    pub tokens_extra: &'a str,
    pub trust_extra: &'a str,
    pub server_extra: &'a str,
    /// Whole sections appended at the end (`[proxy]`, `[sink]`).
    pub sections: &'a str,
    /// Share a state dir (and so a root key) with another sidecar.
    pub state_dir: Option<PathBuf>,
    /// The address the in-process sidecar binds (`url` uses 127.0.0.1
    /// when it is a wildcard).
    pub bind: &'a str,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            workload: "app/web",
            environment: "main",
            declarations: PROJECT,
            tokens_extra: "",
            trust_extra: "",
            server_extra: "",
            sections: "",
            state_dir: None,
            bind: "127.0.0.1:0",
        }
    }
}

pub const AUDIENCE: &str = "https://api.example.internal";

pub struct TestSidecar {
    pub url: String,
    pub daemon: Arc<SidecarDaemon>,
    pub sidecar: Arc<Sidecar>,
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestSidecar {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl TestSidecar {
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.url)
    }
}

/// Writes a config + declarations into a temp dir and returns the config path.
pub fn write_config(dir: &Path, o: &Options<'_>) -> PathBuf {
    let decl = dir.join("project.yaml");
    std::fs::write(&decl, o.declarations).unwrap();
    let state = o.state_dir.clone().unwrap_or_else(|| dir.join("state"));
    let cfg = dir.join("authproxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\n\
             [workload]\nid = \"{}\"\nenvironment = \"{}\"\ndeclarations = \"{}\"\n\
             [tokens]\nissuer = \"urn:authproxy:test\"\naudience = \"{AUDIENCE}\"\n{}\n\
             [trust]\nstate_dir = \"{}\"\n{}\n{}\n",
            o.server_extra,
            o.workload,
            o.environment,
            decl.display(),
            o.tokens_extra,
            state.display(),
            o.trust_extra,
            o.sections,
        ),
    )
    .unwrap();
    cfg
}

/// Starts a sidecar in this process on 127.0.0.1:0.
pub async fn spawn_sidecar(o: Options<'_>) -> TestSidecar {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), &o);
    let config = Config::load_with_env(&config_path, Some(Default::default())).unwrap();
    let state_dir = config.trust.state_dir.clone();
    let daemon = Arc::new(SidecarDaemon::start(config, now()).await.unwrap());
    let listener = tokio::net::TcpListener::bind(o.bind).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let url = if bound.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", bound.port())
    } else {
        format!("http://{bound}")
    };
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(Arc::clone(&daemon).run(vec![listener], async move {
        let _ = rx.await;
    }));
    TestSidecar {
        url,
        sidecar: Arc::clone(daemon.sidecar()),
        daemon,
        dir,
        state_dir,
        config_path,
        stop: Some(tx),
    }
}

pub fn now() -> u64 {
    authproxy_core::clock::now()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// POSTs a form to the token endpoint; returns status and JSON body.
pub async fn request_token(
    url: &str,
    form: &[(&str, &str)],
) -> (reqwest::StatusCode, serde_json::Value) {
    let res = client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).unwrap())
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

/// Fetches a token for `scope` (all declared if None) and returns it.
pub async fn token(s: &TestSidecar, scope: Option<&str>) -> String {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(sc) = scope {
        form.push(("scope", sc));
    }
    let (status, body) = request_token(&s.token_url(), &form).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// Decodes a JWT part without verifying anything (tests only).
pub fn part(token: &str, i: usize) -> serde_json::Value {
    use base64::Engine as _;
    let p = token.split('.').nth(i).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

/// Declarations for end-to-end flows: web's queue worker inherits, mailer
/// overrides with a task scope only.
pub const E2E_PROJECT: &str = "\
applications:
  web:
    authorizations:
      - { type: task, action: operate, resource: send-report }
      - { type: env, action: view }
    workers:
      queue: {}
      mailer:
        authorizations:
          - { type: task, action: operate, resource: notify }
tasks:
  send-report:
    authorizations:
      - { type: task, action: operate, resource: notify }
  notify: {}
";

/// Serves `router` on 127.0.0.1:0 until the returned sender is dropped.
pub async fn serve(router: axum::Router) -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (url, tx)
}

/// A server started by [`serve_stoppable`].
pub struct Stoppable {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Stoppable {
    /// Stops the server and returns once it no longer accepts connections.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Serves `router` on 127.0.0.1:0 until [`Stoppable::stop`].
pub async fn serve_stoppable(router: axum::Router) -> (String, Stoppable) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (url, Stoppable { stop: tx, task })
}

/// An authorizer trusting `sidecar`'s JWKS URL, for the `main` environment.
pub async fn authorizer_for(sidecar: &TestSidecar) -> authproxy_layer::Authorizer {
    authproxy_layer::Authorizer::builder()
        .jwks_url(format!("{}/.well-known/jwks.json", sidecar.url))
        .audience(AUDIENCE)
        .environment("main")
        .build()
        .await
        .unwrap()
}

/// Sends `method url` with an optional bearer token; returns status, the
/// WWW-Authenticate header and the JSON body (Null if none).
pub async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    call_with(client(), method, url, token).await
}

async fn call_with(
    client: reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut r = client.request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let res = r.send().await.unwrap();
    let status = res.status().as_u16();
    let www = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.json().await.unwrap_or(serde_json::Value::Null);
    (status, www, body)
}

/// The header `/api/*` requires (`proxy.require_header`).
pub const REQUEST_HEADER: (&str, &str) = ("x-authproxy-request", "1");

/// A client that sends [`REQUEST_HEADER`] on every request: what code
/// using the forward proxy does.
pub fn api_client() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        REQUEST_HEADER.0,
        reqwest::header::HeaderValue::from_static(REQUEST_HEADER.1),
    );
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(h)
        .build()
        .unwrap()
}

/// As [`call`], through the forward proxy: sends [`REQUEST_HEADER`], no token.
pub async fn call_api(
    method: reqwest::Method,
    url: &str,
) -> (u16, Option<String>, serde_json::Value) {
    call_with(api_client(), method, url, None).await
}

/// Reads until EOF or `limit`; returns what arrived and whether the server closed.
pub async fn read_all(stream: &mut tokio::net::TcpStream, limit: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Sends `request` as is on a new connection to `url`'s address and reads
/// the answer for at most `limit`; returns it and whether the server closed.
pub async fn raw_exchange(url: &str, request: &[u8], limit: Duration) -> (String, bool) {
    use tokio::io::AsyncWriteExt as _;
    let mut c = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    c.write_all(request).await.unwrap();
    read_all(&mut c, limit).await
}

/// A loopback address where nothing listens (bound, then released).
pub fn closed_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A POST of a form body (`application/x-www-form-urlencoded`).
pub fn post_form(url: &str, body: &str) -> reqwest::RequestBuilder {
    client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
}

/// The sidecar's JWKS document.
pub async fn jwks_json(s: &TestSidecar) -> serde_json::Value {
    client()
        .get(format!("{}/.well-known/jwks.json", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The real `authproxy serve` binary on 127.0.0.1:0, killed on drop; its
/// address is read from the "listening" line it logs.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub log: Receiver<String>,
    /// Lines read while waiting for the address; `drain_log` returns them too.
    startup_log: Vec<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub fn start(config: &Path, format: &str, rust_log: &str) -> Self {
        Self::start_with(config, format, rust_log, &[])
    }

    /// As [`Daemon::start`], with extra environment (which may override the
    /// listen address; `url` is then the first address it logs).
    pub fn start_with(config: &Path, format: &str, rust_log: &str, env: &[(&str, &str)]) -> Self {
        let mut env = env.to_vec();
        env.insert(0, ("AUTHPROXY__SERVER__LISTEN", "127.0.0.1:0"));
        Self::spawn(
            &[
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                format,
            ],
            rust_log,
            &env,
            "sidecar listening",
        )
    }

    /// The real `authproxy issuer serve --config CONFIG` (text logs, `info`),
    /// listening where its config says.
    pub fn issuer(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn(
            &[
                "issuer",
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "text",
            ],
            "info",
            env,
            "issuer listening",
        )
    }

    /// Runs the binary with `args` and waits for the log line containing
    /// `listening` that names its address.
    pub fn spawn(args: &[&str], rust_log: &str, env: &[(&str, &str)], listening: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_authproxy"))
            .args(args)
            // At least `info`: the "listening" line tells the address.
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut startup_log = Vec::new();
        let url = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("daemon did not start: {startup_log:#?}"));
            let url = line
                .contains(listening)
                .then(|| format!("http://{}", logged_addr(&line)));
            startup_log.push(line);
            if let Some(url) = url {
                break url;
            }
        };
        Self {
            child,
            url,
            log: rx,
            startup_log,
        }
    }

    pub fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = self
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Every log line still to come, up to the reader's end of file (the
    /// process has exited) — not just those already forwarded, which would
    /// race with the reader thread.
    pub fn drain_log(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = self.startup_log.clone();
        while let Ok(line) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            lines.push(line);
        }
        lines
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The address in a text-format "listening" log line (`listen=ADDR`).
pub fn logged_addr(line: &str) -> String {
    match line.split_once("listen=") {
        Some((_, rest)) => rest.split_whitespace().next().unwrap().to_owned(),
        None => listen_addr(line),
    }
}

/// The `127.0.0.1:PORT` in a "listening" log line, text or JSON.
pub fn listen_addr(line: &str) -> String {
    let at = line
        .find("127.0.0.1:")
        .expect("an address in the listening line");
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect()
}

/// A `[proxy]` section forwarding to `upstream` (leaked: test options are `'static`).
pub fn proxy_to(upstream: &str) -> &'static str {
    Box::leak(format!("[proxy]\nupstream = \"{upstream}\"\n").into_boxed_str())
}
