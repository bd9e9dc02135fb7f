//! The deploy files agree with the binary: every manifest parses; the config
//! it ships loads (with the environment each container sets) through the
//! same `Config::load` the daemon uses; mount paths match config paths;
//! ports match the listen address; probes use `authproxy health`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use authproxy::config::Config;
use authproxy_core::declarations::Declarations;
use authproxy_core::root_key::ROOT_KEY_FILE;
use serde_norway::Value;

const CONFIG_PATH: &str = "/etc/authproxy/authproxy.toml";
const STATE_DIR: &str = "/var/lib/authproxy";

fn yaml(path: &str) -> Value {
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Loads `toml_text` with `env` as `AUTHPROXY__*` overrides, as the daemon would.
fn load(toml_text: &str, env: &HashMap<String, String>) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("authproxy.toml");
    std::fs::write(&f, toml_text).unwrap();
    Config::load_with_env(&f, Some(env.clone())).unwrap_or_else(|e| panic!("{e}"))
}

fn declarations(text: &str) -> Declarations {
    Declarations::parse(text, Path::new("project.yaml")).unwrap()
}

/// The `--config` value of a `serve` command line.
fn config_arg(args: &[String]) -> String {
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    let i = args.iter().position(|a| a == "--config").expect("--config");
    args[i + 1].clone()
}

fn check_sidecar(cfg: &Config, decl: &Declarations, what: &str) {
    assert!(
        decl.get(&cfg.workload.id).is_some(),
        "{what}: {} is not declared",
        cfg.workload.id
    );
    assert!(!cfg.server.listen.is_empty(), "{what}");
    for addr in &cfg.server.listen {
        assert_eq!(addr.port(), 8200, "{what}: {addr}");
    }
    assert_eq!(cfg.trust.state_dir, PathBuf::from(STATE_DIR), "{what}");
    assert_eq!(
        cfg.workload.declarations,
        Some(PathBuf::from("/etc/authproxy/project.yaml")),
        "{what}"
    );
}

#[test]
fn the_shipped_deploy_config_is_valid() {
    let cfg = load(
        &std::fs::read_to_string("deploy/config/authproxy.toml").unwrap(),
        &HashMap::new(),
    );
    let decl = declarations(&std::fs::read_to_string("deploy/config/project.yaml").unwrap());
    check_sidecar(&cfg, &decl, "deploy/config");
}

#[test]
fn compose_services_match_the_binary() {
    let c = yaml("deploy/compose.yaml");
    let services = c["services"].as_mapping().unwrap();
    let toml_text = std::fs::read_to_string("deploy/config/authproxy.toml").unwrap();
    let decl = declarations(&std::fs::read_to_string("deploy/config/project.yaml").unwrap());
    let mut sidecars = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if !name.ends_with("-authproxy") {
            continue;
        }
        sidecars += 1;
        let args = strs(&svc["command"]);
        assert_eq!(config_arg(&args), CONFIG_PATH, "{name}");
        let env: HashMap<String, String> = svc["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v.as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let cfg = load(&toml_text, &env);
        check_sidecar(&cfg, &decl, name);
        // It shares the namespace of the workload it serves.
        let workload = name.trim_end_matches("-authproxy");
        assert_eq!(
            svc["network_mode"].as_str(),
            Some(format!("service:{workload}").as_str())
        );
        assert!(
            services.contains_key(workload),
            "{name}: no service {workload}"
        );
        let mounts = strs(&svc["volumes"]);
        assert!(
            mounts.contains(&"./config:/etc/authproxy:ro".to_owned()),
            "{name}: {mounts:?}"
        );
        assert!(
            mounts.iter().any(|m| m.ends_with(&format!(":{STATE_DIR}"))),
            "{name}: {mounts:?}"
        );
        let health = strs(&svc["healthcheck"]["test"]);
        assert_eq!(
            &health[1..3],
            ["/usr/local/bin/authproxy", "health"],
            "{name}"
        );
        // Its proxy and audience point at the api service on its port.
        assert_eq!(cfg.tokens.audience, "http://api:8300");
        assert_eq!(
            cfg.proxy.as_ref().unwrap().upstream.as_str(),
            "http://api:8300/"
        );
    }
    assert_eq!(sidecars, 2);
    assert!(Path::new("deploy/config/authproxy.toml").exists());
    // Issue #11 item 2: the upstream's trust anchor is not fetched from a
    // workload's network namespace. It reads a JWKS file made from the root
    // key's public half by a one-shot `authproxy jwks`, through a volume it
    // mounts read-only; no sidecar listens beyond loopback.
    let api_svc = &services[&Value::from("api")];
    let api = strs(&api_svc["command"]);
    assert!(!api.iter().any(|a| a == "--jwks-url"), "{api:?}");
    let jwks_file = &api[api.iter().position(|a| a == "--jwks-file").unwrap() + 1];
    let (dir, _) = jwks_file.rsplit_once('/').unwrap();
    let api_mounts = strs(&api_svc["volumes"]);
    let ro = api_mounts
        .iter()
        .find(|m| m.ends_with(&format!(":{dir}:ro")))
        .unwrap_or_else(|| panic!("api mounts {dir} read-only: {api_mounts:?}"));
    let volume = ro.split(':').next().unwrap();
    let (writer, svc) = services
        .iter()
        .find(|(_, svc)| strs(&svc["command"]).first().map(String::as_str) == Some("jwks"))
        .expect("a one-shot `authproxy jwks` service");
    let args = strs(&svc["command"]);
    let config = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    assert_eq!(config, CONFIG_PATH);
    let out = &args[args.iter().position(|a| a == "--out").unwrap() + 1];
    let (out_dir, _) = out.rsplit_once('/').unwrap();
    assert!(
        strs(&svc["volumes"]).contains(&format!("{volume}:{out_dir}")),
        "{writer:?} writes {out} into the volume the api reads"
    );
    assert_eq!(out.rsplit('/').next(), jwks_file.rsplit('/').next());
    assert_eq!(
        api_svc["depends_on"][writer]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    for (name, svc) in services {
        let listen = svc["environment"]["AUTHPROXY__SERVER__LISTEN"].as_str();
        assert!(
            !listen.is_some_and(|l| l.contains("0.0.0.0") || l.contains("[::]")),
            "{name:?} listens beyond loopback"
        );
    }
    let audience = &api[api.iter().position(|a| a == "--audience").unwrap() + 1];
    assert_eq!(audience, "http://api:8300");
}

#[test]
fn kubernetes_manifests_match_the_binary() {
    let cm = yaml("deploy/kubernetes/configmap.yaml");
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    let toml_text = cm["data"]["authproxy.toml"].as_str().unwrap();
    let decl = declarations(cm["data"]["project.yaml"].as_str().unwrap());
    // The ConfigMap carries the same files as deploy/config.
    assert_eq!(
        toml_text,
        std::fs::read_to_string("deploy/config/authproxy.toml").unwrap()
    );
    let cm_name = cm["metadata"]["name"].as_str().unwrap();

    for file in [
        "deploy/kubernetes/web-deployment.yaml",
        "deploy/kubernetes/send-report-job.yaml",
    ] {
        let doc = yaml(file);
        let pod = &doc["spec"]["template"]["spec"];
        let init = pod["initContainers"].as_sequence().unwrap();
        let sidecar = init
            .iter()
            .find(|c| c["name"].as_str() == Some("authproxy"))
            .unwrap();
        // A native sidecar.
        assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"), "{file}");
        let args = strs(&sidecar["args"]);
        let config = config_arg(&args);
        assert_eq!(config, CONFIG_PATH, "{file}");
        let env: HashMap<String, String> = sidecar["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let cfg = load(toml_text, &env);
        check_sidecar(&cfg, &decl, file);
        assert_eq!(
            sidecar["ports"][0]["containerPort"].as_u64(),
            Some(u64::from(cfg.server.listen[0].port())),
            "{file}"
        );
        for probe in ["startupProbe", "readinessProbe"] {
            assert_eq!(
                strs(&sidecar[probe]["exec"]["command"]),
                ["/usr/local/bin/authproxy", "health"],
                "{file} {probe}"
            );
        }
        // Mounts: config dir holds --config; state dir is trust.state_dir.
        let mount = |name: &str| {
            sidecar["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| m["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("{file}: no mount {name}"))
                .clone()
        };
        assert_eq!(
            Path::new(mount("authproxy-config")["mountPath"].as_str().unwrap()),
            Path::new(&config).parent().unwrap()
        );
        // The root key is mounted as a file (`subPath`) inside the image's
        // 0700 state directory: a Secret volume mounted whole presents its
        // files as symbolic links in a world-writable directory, both of
        // which the root key check refuses (SECURITY.md).
        let state = mount("authproxy-state");
        assert_eq!(
            PathBuf::from(state["mountPath"].as_str().unwrap()),
            cfg.trust.state_dir.join(ROOT_KEY_FILE),
            "{file}"
        );
        assert_eq!(state["subPath"].as_str(), Some(ROOT_KEY_FILE), "{file}");
        let volumes = pod["volumes"].as_sequence().unwrap();
        let vol = |n: &str| {
            volumes
                .iter()
                .find(|v| v["name"].as_str() == Some(n))
                .unwrap()
                .clone()
        };
        assert_eq!(
            vol("authproxy-config")["configMap"]["name"].as_str(),
            Some(cm_name)
        );
        let secret = vol("authproxy-state");
        assert!(secret["secret"]["secretName"].as_str().is_some(), "{file}");
        // 0440: root-owned and group-readable is the one relaxed case the
        // root key check accepts; anything readable by others is refused.
        let mode = secret["secret"]["defaultMode"].as_u64().unwrap();
        assert_eq!(
            mode & 0o007,
            0,
            "{file}: Secret mode {mode:o} readable by others"
        );
        assert_eq!(mode & 0o030, 0, "{file}");
        // The main container reaches the sidecar on loopback.
        let app = &pod["containers"][0];
        let cmd = strs(&app["command"]).join(" ");
        assert!(cmd.contains("http://127.0.0.1:8200/"), "{file}: {cmd}");
    }
}

#[test]
fn the_systemd_unit_matches_the_binary() {
    let unit = std::fs::read_to_string("deploy/systemd/authproxy.service").unwrap();
    let get = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}"))
            .to_owned()
    };
    let exec: Vec<String> = get("ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/authproxy");
    assert_eq!(config_arg(&exec[1..]), CONFIG_PATH);
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(get("RestartPreventExitStatus"), "64");
    assert_eq!(get("StateDirectory"), "authproxy");
    assert_eq!(get("StateDirectoryMode"), "0700");
    let env = get("Environment");
    let (k, v) = env.split_once('=').unwrap();
    let cfg = load(
        &std::fs::read_to_string("deploy/config/authproxy.toml").unwrap(),
        &HashMap::from([(k.to_owned(), v.to_owned())]),
    );
    assert_eq!(
        cfg.trust.state_dir,
        PathBuf::from(format!("/var/lib/{}", get("StateDirectory")))
    );
}

#[test]
fn the_dockerfile_matches_the_binary() {
    let d = std::fs::read_to_string("Dockerfile").unwrap();
    assert!(d.lines().any(|l| l == "EXPOSE 8200"));
    let user = d
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert!(!user.starts_with('0') && user != "root", "runs as {user}");
    assert!(
        d.contains(r#"HEALTHCHECK"#) && d.contains(r#"["/usr/local/bin/authproxy", "health"]"#)
    );
    assert!(d.contains(&format!(r#"CMD ["serve", "--config", "{CONFIG_PATH}""#)));
    assert!(
        d.contains("COPY deploy/config/authproxy.toml deploy/config/project.yaml /etc/authproxy/")
    );
    assert!(d.contains(&format!("/out/state {STATE_DIR}")));
    // Everything the build copies from the context exists, and the
    // workspace's members are among it.
    let copied: Vec<&str> = d
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    for path in &copied {
        assert!(Path::new(path).exists(), "{path}");
    }
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
        "crates",
        "src",
        "examples",
    ] {
        assert!(copied.contains(&needed), "the build does not copy {needed}");
    }
}

/// Issue #11 item 14: the README is self-contained — no link leaves the
/// repository, every snippet defines what it uses, and the config table
/// names every key the config accepts.
#[test]
fn the_readme_stands_on_its_own() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    // Relative links resolve inside the repository.
    for (i, _) in readme.match_indices("](") {
        let target = readme[i + 2..].split(')').next().unwrap();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let path = target.split('#').next().unwrap();
        assert!(
            !path.starts_with(".."),
            "link out of the repository: {target}"
        );
        assert!(Path::new(path).exists(), "dead link: {target}");
    }
    assert!(!readme.contains("../shared"), "the contract lives in docs/");
    // Every code block that uses API defines it.
    for block in readme.split("```").skip(1).step_by(2) {
        let uses = block.contains("{API}") || block.contains("$API") || block.contains("${API}");
        if uses {
            assert!(
                block.contains("API=") || block.contains("API = "),
                "a snippet uses API without defining it:\n{block}"
            );
        }
    }
    // The config table names every key of every section.
    let src = std::fs::read_to_string("src/config.rs").unwrap();
    let mut keys = 0;
    for part in src.split("struct Raw").skip(1) {
        let (name, body) = part.split_once('{').unwrap();
        let section = name.trim().to_lowercase();
        if section.is_empty() {
            continue; // the top-level `Raw`: its fields are the sections
        }
        let body = body.split('}').next().unwrap();
        for line in body.lines() {
            let Some((field, _)) = line.trim().split_once(':') else {
                continue;
            };
            if field.starts_with("#") || field.starts_with("//") || field.contains(' ') {
                continue;
            }
            keys += 1;
            assert!(
                readme.contains(&format!("`{section}.{field}`")),
                "README's config table lacks `{section}.{field}`"
            );
        }
    }
    assert!(keys > 15, "found only {keys} config keys");
}
