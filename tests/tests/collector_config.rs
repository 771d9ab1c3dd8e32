//! collector/otel_collector_config.yaml: every listener on loopback, the boot-time
//! placeholders present where the launcher fills them, a pipeline graph that only names
//! components the file defines, and a vsockproxy scrape aimed at the admin endpoint of the shipped
//! vsockproxy config. (No trustworthy collector binary is available here to load it.)

use e2e_tests::repo_root;
use serde_yaml::Value;

fn config_text() -> String {
    std::fs::read_to_string(repo_root().join("collector/otel_collector_config.yaml")).unwrap()
}

fn config() -> Value {
    serde_yaml::from_str(&config_text()).expect("collector config is valid YAML")
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key).unwrap_or_else(|| panic!("collector config lacks {}", path.join(".")));
    }
    cur
}

fn str_at(v: &Value, path: &[&str]) -> String {
    get(v, path).as_str().unwrap_or_else(|| panic!("{} is not a string", path.join("."))).to_string()
}

/// Every `endpoint` under `receivers` and `extensions`, with its path.
fn listen_endpoints(v: &Value, path: &mut Vec<String>, out: &mut Vec<(String, String)>) {
    if let Value::Mapping(m) = v {
        for (k, child) in m {
            let key = k.as_str().unwrap_or("?").to_string();
            path.push(key.clone());
            if key == "endpoint"
                && let Some(s) = child.as_str()
            {
                out.push((path.join("."), s.to_string()));
            }
            listen_endpoints(child, path, out);
            path.pop();
        }
    }
}

#[test]
fn receivers_and_extensions_listen_on_loopback_only() {
    let cfg = config();
    let mut found = Vec::new();
    for section in ["receivers", "extensions"] {
        listen_endpoints(get(&cfg, &[section]), &mut vec![section.to_string()], &mut found);
    }
    // The OTLP ports the enclave uses (through the proxy) and the health check.
    let want = [
        ("receivers.otlp.protocols.grpc.endpoint", "127.0.0.1:4317"),
        ("receivers.otlp.protocols.http.endpoint", "127.0.0.1:4318"),
        ("extensions.health_check.endpoint", "127.0.0.1:13133"),
    ];
    for (path, addr) in want {
        assert!(
            found.iter().any(|(p, a)| p == path && a == addr),
            "{path} should be {addr}; found {found:?}"
        );
    }
    for (path, addr) in &found {
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
        assert!(
            host == "127.0.0.1" || host == "[::1]" || host == "localhost",
            "{path} = {addr} is not loopback"
        );
    }
    // Receivers without an explicit endpoint would default to all interfaces; a Prometheus
    // receiver listens on nothing (it scrapes), and its targets are checked below.
    for (name, _) in get(&cfg, &["receivers"]).as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if is_scraper(name) {
            continue;
        }
        assert!(
            found.iter().any(|(p, _)| p.starts_with(&format!("receivers.{name}."))),
            "{name}: no endpoint"
        );
    }
}

/// A `prometheus` receiver (`prometheus` or `prometheus/NAME`): a scraper, not a listener.
fn is_scraper(receiver: &str) -> bool {
    receiver == "prometheus" || receiver.starts_with("prometheus/")
}

/// `[admin] listen` of proxy/examples/vsockproxy.toml, the config the bundle installs as
/// /etc/vsockproxy/vsockproxy.toml (scripts/build-dist.sh, packaging/src/bundle.rs), as HOST:PORT.
fn shipped_proxy_admin() -> String {
    let text = std::fs::read_to_string(repo_root().join("proxy/examples/vsockproxy.toml")).unwrap();
    let config: toml::Table = text.parse().expect("vsockproxy.toml is valid TOML");
    let listen = config["admin"]["listen"].as_str().expect("[admin] listen");
    listen
        .strip_prefix("tcp://")
        .unwrap_or_else(|| panic!("admin.listen {listen:?} is not tcp://"))
        .to_string()
}

#[test]
fn the_collector_scrapes_vsockproxys_admin_endpoint_from_the_shipped_config() {
    let cfg = config();
    let scrapers: Vec<(&str, &Value)> = get(&cfg, &["receivers"])
        .as_mapping()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| k.as_str().filter(|k| is_scraper(k)).map(|k| (k, v)))
        .collect();
    let admin = shipped_proxy_admin();
    let mut found = Vec::new();
    for (name, receiver) in &scrapers {
        let jobs = get(receiver, &["config", "scrape_configs"]).as_sequence().expect("scrape_configs");
        for job in jobs {
            let job_name = str_at(job, &["job_name"]);
            let path = job.get("metrics_path").and_then(Value::as_str).unwrap_or("/metrics");
            let seconds = |key: &str| {
                let v = str_at(job, &[key]);
                v.strip_suffix('s')
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or_else(|| panic!("{key} {v:?}"))
            };
            let (interval, timeout) = (seconds("scrape_interval"), seconds("scrape_timeout"));
            assert!((10..=15).contains(&interval), "{name} {job_name}: scrape every {interval} s");
            assert!(timeout < interval, "{name} {job_name}: timeout {timeout} s >= interval {interval} s");
            for sc in get(job, &["static_configs"]).as_sequence().unwrap() {
                for target in get(sc, &["targets"]).as_sequence().unwrap() {
                    let target = target.as_str().unwrap().to_string();
                    let host = target.rsplit_once(':').map(|(h, _)| h).unwrap_or(&target);
                    assert!(
                        host == "127.0.0.1" || host == "[::1]" || host == "localhost",
                        "{target} is not loopback"
                    );
                    found.push((*name, job_name.clone(), path.to_string(), target));
                }
            }
        }
    }
    // The job name becomes the resource's service.name: `vsockproxy`, as its OTLP push named
    // itself before the collector scraped it.
    let vsockproxy: Vec<_> = found.iter().filter(|(_, job, _, _)| job == "vsockproxy").collect();
    assert_eq!(vsockproxy.len(), 1, "one vsockproxy target; found {found:?}");
    let (receiver, _, path, target) = vsockproxy[0];
    assert_eq!(*target, admin, "the scrape target is the shipped vsockproxy config's [admin] listen");
    assert_eq!(path, "/metrics");
    let metrics = get(&cfg, &["service", "pipelines", "metrics", "receivers"]).as_sequence().unwrap();
    assert!(
        metrics.iter().any(|r| r.as_str() == Some(receiver)),
        "{receiver} is not in the metrics pipeline"
    );
}

#[test]
fn aws_exporters_carry_the_boot_time_placeholders() {
    let cfg = config();
    assert_eq!(str_at(&cfg, &["exporters", "awsemf", "namespace"]), "KV-Server");
    assert_eq!(str_at(&cfg, &["exporters", "awsemf", "region"]), "$REGION");
    assert_eq!(str_at(&cfg, &["exporters", "awsxray", "region"]), "$REGION");
    assert_eq!(str_at(&cfg, &["exporters", "awscloudwatchlogs", "region"]), "$REGION");
    assert_eq!(str_at(&cfg, &["extensions", "sigv4auth", "region"]), "$REGION");
    assert_eq!(str_at(&cfg, &["extensions", "sigv4auth", "service"]), "aps");
    let rw = str_at(&cfg, &["exporters", "prometheusremotewrite", "endpoint"]);
    assert_eq!(
        rw,
        "https://aps-workspaces.$REGION.amazonaws.com/workspaces/$WORKSPACE_ID/api/v1/remote_write"
    );
    assert_eq!(str_at(&cfg, &["exporters", "prometheusremotewrite", "auth", "authenticator"]), "sigv4auth");
}

#[test]
fn filling_the_placeholders_leaves_no_dollar_sign() {
    // What the launcher does at boot: literal replacement of both placeholders.
    let filled = config_text().replace("$REGION", "eu-west-1").replace("$WORKSPACE_ID", "ws-0123");
    let non_comment: Vec<&str> = filled.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    assert!(
        non_comment.iter().all(|l| !l.contains('$')),
        "a placeholder other than $REGION/$WORKSPACE_ID remains"
    );
    let cfg: Value = serde_yaml::from_str(&filled).unwrap();
    assert_eq!(
        str_at(&cfg, &["exporters", "prometheusremotewrite", "endpoint"]),
        "https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-0123/api/v1/remote_write"
    );
}

#[test]
fn pipelines_name_only_defined_components() {
    let cfg = config();
    let defined = |section: &str| -> Vec<String> {
        get(&cfg, &[section]).as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect()
    };
    let pipelines = get(&cfg, &["service", "pipelines"]).as_mapping().unwrap();
    for signal in ["traces", "metrics", "logs"] {
        assert!(pipelines.contains_key(signal), "no {signal} pipeline");
    }
    let mut exporters_used = Vec::new();
    for (name, p) in pipelines {
        for section in ["receivers", "processors", "exporters"] {
            let have = defined(section);
            for c in p.get(section).and_then(Value::as_sequence).into_iter().flatten() {
                let c = c.as_str().unwrap();
                assert!(have.iter().any(|h| h == c), "pipeline {name:?} uses undefined {section} {c}");
                if section == "exporters" {
                    exporters_used.push(c.to_string());
                }
            }
        }
    }
    for e in ["awsemf", "awsxray", "prometheusremotewrite"] {
        assert!(exporters_used.iter().any(|u| u == e), "exporter {e} is in no pipeline");
    }
    let ext = get(&cfg, &["service", "extensions"]).as_sequence().unwrap();
    for e in defined("extensions") {
        assert!(ext.iter().any(|x| x.as_str() == Some(e.as_str())), "extension {e} not enabled");
    }
}
