//! The deploy files agree with the binary: every manifest parses; the config
//! it ships loads (with the environment each container sets) through the
//! same `Config::load` the daemon uses; mount paths match config paths;
//! ports match the listen address; probes use `authproxy health`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use authproxy::config::{BootstrapSource, Config};
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

/// One compose volume entry, short (`src:dst[:ro]`) or long syntax.
#[derive(Debug, Clone)]
struct Mount {
    source: String,
    target: String,
    read_only: bool,
    subpath: Option<String>,
}

fn compose_mounts(svc: &Value) -> Vec<Mount> {
    svc["volumes"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|m| {
                    if let Some(short) = m.as_str() {
                        let parts: Vec<&str> = short.split(':').collect();
                        Mount {
                            source: parts[0].to_owned(),
                            target: parts[1].to_owned(),
                            read_only: parts.get(2) == Some(&"ro"),
                            subpath: None,
                        }
                    } else {
                        Mount {
                            source: m["source"].as_str().unwrap().to_owned(),
                            target: m["target"].as_str().unwrap().to_owned(),
                            read_only: m["read_only"].as_bool() == Some(true),
                            subpath: m["volume"]["subpath"].as_str().map(str::to_owned),
                        }
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The value after `flag` in a command line.
fn arg_after(args: &[String], flag: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[i + 1].clone()
}

fn issuer_config(text: &str) -> authproxy_issuer::IssuerConfig {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("issuer.toml");
    std::fs::write(&f, text).unwrap();
    authproxy_issuer::IssuerConfig::load_with_env(&f, Some(HashMap::new()))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn compose_services_match_the_binary() {
    let c = yaml("deploy/compose.yaml");
    let services = c["services"].as_mapping().unwrap();
    let svc = |n: &str| services[&Value::from(n)].clone();
    let toml_text = std::fs::read_to_string("deploy/config/authproxy.toml").unwrap();
    let decl = declarations(&std::fs::read_to_string("deploy/config/project.yaml").unwrap());

    // The issuer: `issuer serve` with deploy/config/issuer.toml, its state in
    // a volume of its own.
    let issuer = svc("issuer");
    let args = strs(&issuer["command"]);
    assert_eq!(&args[..2], ["issuer", "serve"]);
    let issuer_config_path = arg_after(&args, "--config");
    assert_eq!(issuer_config_path, "/etc/authproxy/issuer.toml");
    let icfg = issuer_config(&std::fs::read_to_string("deploy/config/issuer.toml").unwrap());
    assert_eq!(icfg.issuer.url, "http://issuer:8400");
    assert_eq!(icfg.server.listen.port(), 8400);
    // Tokens exchanged from PATs are for the upstream the compose file runs.
    let api_args = strs(&svc("api")["command"]);
    assert_eq!(icfg.tokens.audience, arg_after(&api_args, "--audience"));
    assert!(
        icfg.server.listen.ip().is_unspecified(),
        "{:?}",
        icfg.server
    );
    let issuer_mounts = compose_mounts(&issuer);
    assert!(
        issuer_mounts
            .iter()
            .any(|m| m.source == "./config" && m.target == "/etc/authproxy" && m.read_only),
        "{issuer_mounts:?}"
    );
    let state = issuer_mounts
        .iter()
        .find(|m| Path::new(&m.target) == icfg.issuer.state_dir)
        .expect("the issuer's state_dir is a volume")
        .clone();
    assert!(!state.read_only);
    assert!(
        c["volumes"]
            .as_mapping()
            .unwrap()
            .contains_key(state.source.as_str())
    );

    // The one-shot sync: the admin token read-only from the issuer's state,
    // credentials into a volume.
    let sync = svc("sync");
    let args = strs(&sync["command"]);
    assert_eq!(&args[..2], ["issuer", "sync"]);
    assert_eq!(
        arg_after(&args, "--declarations"),
        "/etc/authproxy/project.yaml"
    );
    assert_eq!(arg_after(&args, "--environment"), "main");
    assert_eq!(arg_after(&args, "--issuer"), icfg.issuer.url);
    assert_eq!(
        PathBuf::from(arg_after(&args, "--admin-token-file")),
        icfg.admin_token_file()
    );
    let creds_dir = arg_after(&args, "--credentials-dir");
    let sync_mounts = compose_mounts(&sync);
    assert!(
        sync_mounts
            .iter()
            .any(|m| m.source == state.source && m.target == state.target && m.read_only),
        "sync reads the admin token read-only: {sync_mounts:?}"
    );
    let creds = sync_mounts
        .iter()
        .find(|m| m.target == creds_dir && !m.read_only)
        .expect("sync writes the credentials into a volume")
        .clone();
    assert_eq!(
        sync["depends_on"]["issuer"]["condition"].as_str(),
        Some("service_started")
    );

    // Nobody else mounts the issuer's state.
    for (name, s) in services {
        let name = name.as_str().unwrap();
        if name != "issuer" && name != "sync" {
            let m = compose_mounts(s);
            assert!(
                !m.iter().any(|m| m.source == state.source),
                "{name} mounts the issuer's state: {m:?}"
            );
        }
    }

    let mut sidecars = 0;
    let mut credential_mounts = Vec::new();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        if !name.ends_with("-authproxy") {
            continue;
        }
        sidecars += 1;
        let args = strs(&s["command"]);
        assert_eq!(config_arg(&args), CONFIG_PATH, "{name}");
        let env: HashMap<String, String> = s["environment"]
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
        // Remote mode, from the compose issuer, with its own credential.
        let remote = cfg
            .trust
            .remote()
            .unwrap_or_else(|| panic!("{name}: not remote"));
        let issuers: Vec<String> = remote.issuers.iter().map(ToString::to_string).collect();
        assert_eq!(issuers, ["http://issuer:8400/"], "{name}");
        let BootstrapSource::File(path) = &remote.bootstrap else {
            panic!("{name}: bootstrap from a file")
        };
        let path = path.to_str().unwrap().to_owned();
        let mounts = compose_mounts(s);
        let cred = mounts
            .iter()
            .find(|m| m.target == path)
            .unwrap_or_else(|| panic!("{name}: {path} not mounted: {mounts:?}"));
        assert!(cred.read_only, "{name}");
        assert_eq!(
            cred.source, creds.source,
            "{name}: from the volume sync writes"
        );
        assert_eq!(
            cred.subpath.as_deref(),
            Some(cfg.workload.id.to_string().replace('/', "_").as_str()),
            "{name}: only its own credential file"
        );
        credential_mounts.push(cred.clone());
        // No root key anywhere: no state volume, and nothing but its
        // credential and the (public) config.
        for m in &mounts {
            assert!(
                (m.source == "./config" && m.read_only) || m.target == path,
                "{name}: unexpected mount {m:?}"
            );
        }
        assert!(!Path::new("deploy/config").join(ROOT_KEY_FILE).exists());
        assert_eq!(
            s["depends_on"]["sync"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name}"
        );
        // It shares the namespace of the workload it serves.
        let workload = name.trim_end_matches("-authproxy");
        assert_eq!(
            s["network_mode"].as_str(),
            Some(format!("service:{workload}").as_str())
        );
        assert!(
            services.contains_key(workload),
            "{name}: no service {workload}"
        );
        let health = strs(&s["healthcheck"]["test"]);
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
    // No two sidecars mount the same credential.
    for (i, a) in credential_mounts.iter().enumerate() {
        for b in &credential_mounts[i + 1..] {
            assert!(
                (&a.source, &a.subpath) != (&b.source, &b.subpath),
                "{a:?} {b:?}"
            );
        }
    }
    // Only sync mounts the credentials volume whole.
    for (name, s) in services {
        for m in compose_mounts(s) {
            if m.source == creds.source && m.subpath.is_none() {
                assert_eq!(name.as_str(), Some("sync"), "{m:?}");
            }
        }
    }
    // The upstream takes the issuer's JWKS, never a sidecar's; nothing
    // reads a root key file.
    let api_svc = svc("api");
    let api = strs(&api_svc["command"]);
    assert!(!api.iter().any(|a| a == "--jwks-file"), "{api:?}");
    assert_eq!(arg_after(&api, "--jwks-url"), icfg.jwks_uri());
    assert_eq!(
        api_svc["depends_on"]["issuer"]["condition"].as_str(),
        Some("service_started")
    );
    assert!(compose_mounts(&api_svc).is_empty());
    assert!(!services.contains_key("root-jwks"));
    for (name, s) in services {
        let listen = s["environment"]["AUTHPROXY__SERVER__LISTEN"].as_str();
        assert!(
            !listen.is_some_and(|l| l.contains("0.0.0.0") || l.contains("[::]")),
            "{name:?} listens beyond loopback"
        );
    }
    assert_eq!(arg_after(&api, "--audience"), "http://api:8300");
}

/// The environment a compose service sets, as a map.
fn compose_env(svc: &Value) -> HashMap<String, String> {
    svc["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_owned(),
                        v.as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `deploy/compose.postgres.yaml` on top of `deploy/compose.yaml`: two issuer
/// nodes with their own state volumes on the `postgres` service (the
/// password from PGPASSWORD, not in the URL), and sidecars listing both.
#[test]
fn the_postgres_compose_override_runs_two_nodes_on_one_store() {
    let base = yaml("deploy/compose.yaml");
    let over = yaml("deploy/compose.postgres.yaml");
    let services = over["services"].as_mapping().unwrap();
    let svc = |n: &str| services[&Value::from(n)].clone();
    let postgres = compose_env(&svc("postgres"));
    let issuer_toml = std::fs::read_to_string("deploy/config/issuer.toml").unwrap();

    let mut states = Vec::new();
    for node in ["issuer", "issuer-b"] {
        let env = compose_env(&svc(node));
        assert_eq!(env["PGPASSWORD"], postgres["POSTGRES_PASSWORD"], "{node}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("issuer.toml");
        std::fs::write(&f, &issuer_toml).unwrap();
        let overrides = env
            .iter()
            .filter(|(k, _)| k.starts_with("AUTHPROXY__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let cfg = authproxy_issuer::IssuerConfig::load_with_env(&f, Some(overrides))
            .unwrap_or_else(|e| panic!("{node}: {e}"));
        let store = format!("{:?}", cfg.store.url);
        assert_eq!(
            store,
            format!(
                "postgres://{}@postgres/{}",
                postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
            ),
            "{node}: no password in the URL"
        );
        assert_eq!(
            svc(node)["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy"),
            "{node}"
        );
        // Its own state volume (the base file's for `issuer`).
        let mounts = if node == "issuer" {
            compose_mounts(&base["services"]["issuer"])
        } else {
            assert_eq!(
                strs(&svc(node)["command"]),
                strs(&base["services"]["issuer"]["command"])
            );
            compose_mounts(&svc(node))
        };
        let state = mounts
            .iter()
            .find(|m| Path::new(&m.target) == cfg.issuer.state_dir)
            .unwrap_or_else(|| panic!("{node}: no state volume: {mounts:?}"));
        assert!(!state.read_only, "{node}");
        states.push(state.source.clone());
    }
    assert_ne!(states[0], states[1], "each node keeps its own root key");
    assert!(
        over["volumes"]
            .as_mapping()
            .unwrap()
            .contains_key(states[1].as_str())
    );

    // Every sidecar of the base file lists both nodes, in order.
    let toml_text = std::fs::read_to_string("deploy/config/authproxy.toml").unwrap();
    let mut sidecars = 0;
    for (name, s) in base["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if !name.ends_with("-authproxy") {
            continue;
        }
        sidecars += 1;
        let mut env = compose_env(s);
        env.extend(compose_env(&svc(name)));
        let cfg = load(&toml_text, &env);
        let issuers: Vec<String> = cfg
            .trust
            .remote()
            .unwrap()
            .issuers
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            issuers,
            ["http://issuer:8400/", "http://issuer-b:8400/"],
            "{name}"
        );
        // No sidecar mounts either node's state.
        for m in compose_mounts(s) {
            assert!(!states.contains(&m.source), "{name}: {m:?}");
        }
    }
    assert_eq!(sidecars, 2);
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
    let item = |file: &str, kind: &str| -> Value {
        yaml(file)["items"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|i| i["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("{file}: no {kind}"))
            .clone()
    };

    // The issuer: its config loads, its Service and port agree, and its
    // cluster JWKS comes from a ConfigMap it mounts.
    let issuer_file = "deploy/kubernetes/issuer.yaml";
    let icm = item(issuer_file, "ConfigMap");
    let icfg = issuer_config(icm["data"]["issuer.toml"].as_str().unwrap());
    // Tokens exchanged from PATs are for the upstream the sidecars call
    // (`[tokens] audience` of the ConfigMap's authproxy.toml).
    assert!(toml_text.contains("audience = \"http://api:8300\""));
    assert_eq!(icfg.tokens.audience, "http://api:8300");
    let service = item(issuer_file, "Service");
    let service_name = service["metadata"]["name"].as_str().unwrap();
    assert_eq!(icfg.issuer.url, format!("http://{service_name}:8400"));
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(8400));
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_u64(),
        Some(u64::from(icfg.server.listen.port()))
    );
    let dep = item(issuer_file, "Deployment");
    let ipod = &dep["spec"]["template"]["spec"];
    assert_eq!(
        service["spec"]["selector"],
        dep["spec"]["template"]["metadata"]["labels"]
    );
    let ictr = &ipod["containers"][0];
    let args = strs(&ictr["args"]);
    assert_eq!(&args[..2], ["issuer", "serve"]);
    let iconfig = arg_after(&args, "--config");
    let imount = |name: &str| -> String {
        ictr["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("issuer: no mount {name}"))["mountPath"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ivol = |name: &str| -> Value {
        ipod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("issuer: no volume {name}"))
            .clone()
    };
    let config_vol = ictr["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Path::new(&iconfig).parent() == Some(Path::new(m["mountPath"].as_str().unwrap())))
        .expect("the issuer's --config is mounted")["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        ivol(&config_vol)["configMap"]["name"].as_str(),
        icm["metadata"]["name"].as_str()
    );
    let k8s = icfg.kubernetes.as_ref().expect("[kubernetes]");
    assert_eq!(k8s.issuer, "https://kubernetes.default.svc");
    let authproxy_issuer::config::KubernetesJwks::File(jwks_file) = &k8s.jwks else {
        panic!("jwks_file")
    };
    let jwks_vol = ictr["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| jwks_file.parent() == Some(Path::new(m["mountPath"].as_str().unwrap())))
        .expect("the cluster JWKS is mounted")["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ivol(&jwks_vol)["configMap"]["name"].as_str().is_some());
    // The state lives on a claim, and the state dir is a directory inside
    // the mount (the mount itself is group-writable under fsGroup).
    let state_mount = ictr["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| {
            icfg.issuer
                .state_dir
                .starts_with(m["mountPath"].as_str().unwrap())
        })
        .expect("the issuer's state is on a volume")
        .clone();
    assert_ne!(
        Path::new(state_mount["mountPath"].as_str().unwrap()),
        icfg.issuer.state_dir
    );
    let state_vol = ivol(state_mount["name"].as_str().unwrap());
    assert_eq!(
        state_vol["persistentVolumeClaim"]["claimName"].as_str(),
        item(issuer_file, "PersistentVolumeClaim")["metadata"]["name"].as_str()
    );
    // The declarations the issuer syncs are the sidecars' ones.
    assert_eq!(imount("authproxy-config"), "/etc/authproxy");
    assert_eq!(
        ivol("authproxy-config")["configMap"]["name"].as_str(),
        Some(cm_name)
    );

    let accounts: Vec<(String, String)> = yaml("deploy/kubernetes/serviceaccounts.yaml")["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|i| i["kind"].as_str() == Some("ServiceAccount"))
        .map(|i| {
            (
                i["metadata"]["namespace"].as_str().unwrap().to_owned(),
                i["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    let mut bound = 0;
    for file in [
        "deploy/kubernetes/web-deployment.yaml",
        "deploy/kubernetes/send-report-job.yaml",
    ] {
        let doc = yaml(file);
        let namespace = doc["metadata"]["namespace"].as_str().unwrap();
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
        // Remote mode: the issuer's Service, and the pod's projected
        // service-account token (audience authproxy) as the bootstrap.
        let remote = cfg
            .trust
            .remote()
            .unwrap_or_else(|| panic!("{file}: not remote"));
        let issuers: Vec<String> = remote.issuers.iter().map(ToString::to_string).collect();
        assert_eq!(issuers, [format!("{}/", icfg.issuer.url)], "{file}");
        let BootstrapSource::File(token_path) = &remote.bootstrap else {
            panic!("{file}: bootstrap from a file")
        };
        let token_mount = sidecar["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| token_path.parent() == Some(Path::new(m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{file}: {token_path:?} not mounted"))
            .clone();
        assert_eq!(token_mount["readOnly"].as_bool(), Some(true), "{file}");
        let projected = vol(token_mount["name"].as_str().unwrap());
        let sources = projected["projected"]["sources"].as_sequence().unwrap();
        assert_eq!(sources.len(), 1, "{file}: the token only");
        let sat = &sources[0]["serviceAccountToken"];
        assert_eq!(sat["audience"].as_str(), Some("authproxy"), "{file}");
        assert_eq!(sat["expirationSeconds"].as_u64(), Some(3600), "{file}");
        assert_eq!(
            Some(sat["path"].as_str().unwrap()),
            token_path.file_name().and_then(|f| f.to_str()),
            "{file}"
        );
        // Its own service account, bound in the issuer to exactly this
        // workload and environment.
        let sa = pod["serviceAccountName"].as_str().unwrap();
        assert!(
            accounts.contains(&(namespace.to_owned(), sa.to_owned())),
            "{file}: no ServiceAccount {namespace}/{sa}"
        );
        let bindings: Vec<_> = k8s
            .bindings
            .iter()
            .filter(|b| b.namespace == namespace && b.service_account == sa)
            .collect();
        assert_eq!(bindings.len(), 1, "{file}: {namespace}:{sa} bound once");
        assert_eq!(bindings[0].workload, cfg.workload.id, "{file}");
        assert_eq!(bindings[0].environment, cfg.workload.environment, "{file}");
        bound += 1;
        // The main container reaches the sidecar on loopback.
        let app = &pod["containers"][0];
        let cmd = strs(&app["command"]).join(" ");
        assert!(cmd.contains("http://127.0.0.1:8200/"), "{file}: {cmd}");
    }
    assert_eq!(bound, k8s.bindings.len(), "every binding has its pod");
    // No file gives anything a root key: no Secret volume, no root-key.pem.
    for entry in std::fs::read_dir("deploy/kubernetes").unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(ROOT_KEY_FILE),
            "{path:?} names {ROOT_KEY_FILE}"
        );
        assert!(!text.contains("secretName"), "{path:?} mounts a Secret");
        assert!(!text.contains("kind: Secret"), "{path:?} holds a Secret");
    }
}

#[test]
fn the_systemd_unit_matches_the_binary() {
    let unit = std::fs::read_to_string("deploy/systemd/authproxy.service").unwrap();
    let all = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    let get = |key: &str| -> String {
        all(key)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {key}"))
    };
    let exec: Vec<String> = get("ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/authproxy");
    assert_eq!(config_arg(&exec[1..]), CONFIG_PATH);
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(get("RestartPreventExitStatus"), "64");
    // Remote mode: no root key, so no state directory to keep one in.
    assert!(
        all("StateDirectory").is_empty(),
        "a remote sidecar keeps no root key"
    );
    // The credential: a root-only file systemd hands to this service alone
    // (LoadCredential=NAME:PATH), read through %d ($CREDENTIALS_DIRECTORY).
    let (cred_name, cred_path) = get("LoadCredential")
        .split_once(':')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    assert!(Path::new(&cred_path).is_absolute());
    let env: HashMap<String, String> = all("Environment")
        .iter()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap();
            // systemd expands %d to the service's credentials directory.
            (
                k.to_owned(),
                v.replace("%d", "/run/credentials/authproxy.service"),
            )
        })
        .collect();
    let cfg = load(
        &std::fs::read_to_string("deploy/config/authproxy.toml").unwrap(),
        &env,
    );
    let remote = cfg.trust.remote().expect("remote mode");
    assert!(!remote.issuers.is_empty());
    assert_eq!(
        remote.bootstrap,
        BootstrapSource::File(PathBuf::from(format!(
            "/run/credentials/authproxy.service/{cred_name}"
        )))
    );
    let decl = declarations(&std::fs::read_to_string("deploy/config/project.yaml").unwrap());
    assert!(decl.get(&cfg.workload.id).is_some(), "{}", cfg.workload.id);
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
