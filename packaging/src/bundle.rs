//! `bundle` and `verify`: the `dist/aws/` directory the AMI build consumes, and its manifest.
//!
//! Every file is copied while its SHA-256 is computed (one read per input), given an explicit
//! mode, and listed in `manifest.json` with its role and where the AMI installs it. The
//! manifest also carries the EIF's PCRs (read back from the copied image, not trusted from a
//! build log), the tool and format versions, the git commit and the build time. `verify`
//! recomputes all of it and names every file that is missing, extra or different.

use crate::eif;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use crate::manifest::{FileEntry, MANIFEST, MANIFEST_FORMAT, Manifest, RemoteArtifact, hash_file};
pub const EIF_NAME: &str = "server_enclave_image.eif";
/// Unit file suffixes taken from `--systemd-dir`.
const UNIT_SUFFIXES: [&str; 6] = [".service", ".socket", ".timer", ".target", ".path", ".slice"];
/// Non-unit files of `--systemd-dir` the parent needs: (name, role, mode, install path). The paths
/// are the ones the units refer to (EnvironmentFile=, ExecStart=).
const SYSTEMD_EXTRAS: [(&str, &str, u32, &str); 2] = [
    ("enclave.env", "enclave-env", 0o644, "/etc/nitro-enclave/enclave.env"),
    ("nitro-enclave-run", "enclave-supervisor", 0o755, "/opt/privacysandbox/nitro-enclave-run"),
];

/// Where the collector package comes from.
#[derive(Clone, Debug)]
pub enum CollectorPackage {
    File(PathBuf),
    Pinned {
        url: String,
        sha256: String,
    },
    /// The base AMI already has the collector (e.g. the ADOT package): the bundle carries only
    /// its config and drop-in.
    Preinstalled,
}

#[derive(Clone, Debug)]
pub struct BundleSpec {
    pub out: PathBuf,
    pub eif: PathBuf,
    pub proxy: PathBuf,
    pub proxy_config: Option<PathBuf>,
    pub systemd_dir: PathBuf,
    pub envoy_config: PathBuf,
    pub descriptor_set: PathBuf,
    pub collector_config: PathBuf,
    pub collector: CollectorPackage,
    pub instance_init: PathBuf,
    pub git_commit: String,
    pub build_time: String,
    pub force: bool,
}

struct Planned {
    from: PathBuf,
    name: String,
    role: &'static str,
    mode: u32,
    install_to: String,
}

fn need_file(flag: &str, path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => bail!("{flag} {}: not a regular file", path.display()),
        Err(e) => bail!("{flag} {}: {e} (has that part landed? pass its path with {flag})", path.display()),
    }
}

fn file_name(path: &Path, flag: &str) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{flag} {}: no usable file name", path.display()))
}

/// Checks that every input exists before anything is written, and decides names and places.
fn plan(spec: &BundleSpec) -> Result<Vec<Planned>> {
    let opt = "/opt/privacysandbox";
    need_file("--eif", &spec.eif)?;
    need_file("--proxy", &spec.proxy)?;
    need_file("--envoy-config", &spec.envoy_config)?;
    need_file("--descriptor-set", &spec.descriptor_set)?;
    need_file("--collector-config", &spec.collector_config)?;
    need_file("--instance-init", &spec.instance_init)?;
    let mut p = vec![
        Planned {
            from: spec.eif.clone(),
            name: EIF_NAME.into(),
            role: "enclave-image",
            mode: 0o644,
            install_to: format!("{opt}/{EIF_NAME}"),
        },
        Planned {
            from: spec.proxy.clone(),
            name: "proxy".into(),
            role: "vsockproxy",
            mode: 0o755,
            install_to: format!("{opt}/proxy"),
        },
        Planned {
            from: spec.envoy_config.clone(),
            name: "envoy.yaml".into(),
            role: "envoy-config",
            mode: 0o644,
            install_to: "/etc/envoy/envoy.yaml".into(),
        },
        Planned {
            from: spec.descriptor_set.clone(),
            name: "query_api_descriptor_set.pb".into(),
            role: "descriptor-set",
            mode: 0o644,
            install_to: "/etc/envoy/query_api_descriptor_set.pb".into(),
        },
        Planned {
            from: spec.collector_config.clone(),
            name: "otel_collector_config.yaml".into(),
            role: "collector-config",
            mode: 0o644,
            // The collector's drop-in (systemd/) and the launcher's template path (terraform/).
            install_to: "/opt/aws/aws-otel-collector/etc/otel_collector_config.yaml".into(),
        },
    ];
    let init_name = file_name(&spec.instance_init, "--instance-init")?;
    p.push(Planned {
        from: spec.instance_init.clone(),
        install_to: format!("{opt}/{init_name}"),
        name: init_name,
        role: "instance-init",
        mode: 0o755,
    });
    if let Some(cfg) = &spec.proxy_config {
        need_file("--proxy-config", cfg)?;
        p.push(Planned {
            from: cfg.clone(),
            name: "vsockproxy.toml".into(),
            role: "vsockproxy-config",
            mode: 0o644,
            install_to: "/etc/vsockproxy/vsockproxy.toml".into(),
        });
    }
    if let CollectorPackage::File(pkg) = &spec.collector {
        need_file("--collector-package", pkg)?;
        let name = file_name(pkg, "--collector-package")?;
        p.push(Planned {
            from: pkg.clone(),
            install_to: format!("{opt}/{name}"),
            name,
            role: "collector-package",
            mode: 0o644,
        });
    }
    p.extend(plan_systemd(&spec.systemd_dir)?);
    let mut seen = BTreeMap::new();
    for item in &p {
        if let Some(prev) = seen.insert(item.name.clone(), item.role) {
            bail!("two inputs would both be written as {} ({prev} and {})", item.name, item.role);
        }
    }
    if seen.contains_key(MANIFEST) {
        bail!("an input is named {MANIFEST}, which the bundle reserves");
    }
    Ok(p)
}

fn sorted_names(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let ctx = || format!("--systemd-dir {} (has systemd/ landed?)", dir.display());
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(ctx)? {
        let entry = entry.with_context(ctx)?;
        if let Some(name) = entry.file_name().to_str() {
            names.push((name.to_string(), entry.path()));
        }
    }
    names.sort();
    Ok(names)
}

/// Units, unit drop-in directories (`NAME.d/*.conf`) and the known extra files; anything else
/// in the directory (READMEs, tests) is not part of the AMI.
fn plan_systemd(dir: &Path) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    for (name, path) in sorted_names(dir)? {
        let is_unit_name = |n: &str| UNIT_SUFFIXES.iter().any(|s| n.ends_with(s));
        if path.is_file() && is_unit_name(&name) {
            out.push(Planned {
                from: path,
                install_to: format!("/etc/systemd/system/{name}"),
                name,
                role: "systemd-unit",
                mode: 0o644,
            });
        } else if path.is_dir() && name.strip_suffix(".d").is_some_and(is_unit_name) {
            for (conf, conf_path) in sorted_names(&path)? {
                if conf_path.is_file() && conf.ends_with(".conf") {
                    out.push(Planned {
                        from: conf_path,
                        install_to: format!("/etc/systemd/system/{name}/{conf}"),
                        name: format!("{name}/{conf}"),
                        role: "systemd-dropin",
                        mode: 0o644,
                    });
                }
            }
        } else if let Some((_, role, mode, to)) = SYSTEMD_EXTRAS.iter().find(|e| e.0 == name)
            && path.is_file()
        {
            out.push(Planned { from: path, install_to: (*to).into(), name, role, mode: *mode });
        }
    }
    if !out.iter().any(|p| p.name == "vsockproxy.service") {
        bail!("--systemd-dir {}: no vsockproxy.service in it", dir.display());
    }
    Ok(out)
}

/// Copies `from` to `to` and returns (size, sha256 hex) of the bytes written.
fn copy_hashing(from: &Path, to: &Path, mode: u32) -> Result<(u64, String)> {
    let mut input = File::open(from).with_context(|| format!("reading {}", from.display()))?;
    let mut out = File::create(to).with_context(|| format!("writing {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf).with_context(|| format!("reading {}", from.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).with_context(|| format!("writing {}", to.display()))?;
        size += n as u64;
    }
    out.sync_all()?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn check_sha256(flag: &str, s: &str) -> Result<String> {
    let s = s.to_ascii_lowercase();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{flag} {s:?}: expected 64 hex digits");
    }
    Ok(s)
}

/// Writes the bundle into `spec.out` (via a sibling `.partial` directory renamed into place).
pub fn bundle(spec: &BundleSpec) -> Result<Manifest> {
    let planned = plan(spec)?;
    let fetch = match &spec.collector {
        CollectorPackage::File(_) | CollectorPackage::Preinstalled => Vec::new(),
        CollectorPackage::Pinned { url, sha256 } => {
            if !url.starts_with("https://") {
                bail!("--collector-url {url}: only https:// URLs are accepted");
            }
            let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("collector-package");
            vec![RemoteArtifact {
                role: "collector-package".into(),
                url: url.clone(),
                sha256: check_sha256("--collector-sha256", sha256)?,
                install_to: format!("/opt/privacysandbox/{name}"),
            }]
        }
    };
    if spec.out.exists() && !spec.force {
        bail!("--out {}: already exists (pass --force to replace it)", spec.out.display());
    }
    let mut partial = spec.out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing stale {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("--out: creating {}", partial.display()))?;
    let mut files = Vec::new();
    for item in &planned {
        let to = partial.join(&item.name);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let (size, sha256) = copy_hashing(&item.from, &to, item.mode)?;
        files.push(FileEntry {
            path: item.name.clone(),
            role: item.role.into(),
            size,
            sha256,
            mode: format!("{:04o}", item.mode),
            install_to: item.install_to.clone(),
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    // PCRs from the copy in the bundle: what ships is what is measured.
    let described = eif::describe(&partial.join(EIF_NAME), true).context("--eif")?;
    let mut versions = BTreeMap::new();
    versions.insert("kv-packager".to_string(), env!("CARGO_PKG_VERSION").to_string());
    versions.insert("eif-format".to_string(), described.version.to_string());
    if let Some(m) = &described.metadata {
        versions.insert("enclave-image".to_string(), format!("{} {}", m.img_name, m.img_version));
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        build_time: spec.build_time.clone(),
        git_commit: spec.git_commit.clone(),
        versions,
        enclave_image: EIF_NAME.into(),
        pcrs: described.measurements,
        files,
        fetch,
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    fs::write(partial.join(MANIFEST), json)?;
    if spec.out.exists() {
        fs::remove_dir_all(&spec.out).with_context(|| format!("--force: removing {}", spec.out.display()))?;
    }
    fs::rename(&partial, &spec.out)
        .with_context(|| format!("--out: renaming into {}", spec.out.display()))?;
    Ok(manifest)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub problem: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub ok: bool,
    pub files_checked: usize,
    pub problems: Vec<Problem>,
}

/// Recomputes sizes, modes, hashes and PCRs; every difference is one [`Problem`].
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    // Another format is one problem among the others, not the end of the check.
    let manifest = Manifest::read_any_format(&dir.join(MANIFEST))?;
    let mut problems = Vec::new();
    let mut push = |path: &str, problem: String| problems.push(Problem { path: path.into(), problem });
    if manifest.format != MANIFEST_FORMAT {
        push(MANIFEST, format!("format {} is not the supported {MANIFEST_FORMAT}", manifest.format));
    }
    let mut listed = std::collections::BTreeSet::new();
    for f in &manifest.files {
        let found = f.problems(dir, true);
        if matches!(found[..], [crate::manifest::FileProblem::OutsideBundle]) {
            push(&f.path, found[0].to_string());
            continue;
        }
        listed.insert(f.path.clone());
        for p in found {
            push(&f.path, p.to_string());
        }
    }
    for name in list_files(dir, "")? {
        if name != MANIFEST && !listed.contains(&name) {
            push(&name, "not listed in the manifest".into());
        }
    }
    if listed.contains(&manifest.enclave_image) {
        match eif::describe(&dir.join(&manifest.enclave_image), true) {
            Ok(d) => {
                if d.measurements.as_map() != manifest.pcrs.as_map() {
                    push(
                        &manifest.enclave_image,
                        format!(
                            "PCRs differ: image has {:?}, manifest says {:?}",
                            d.measurements.as_map(),
                            manifest.pcrs.as_map()
                        ),
                    );
                }
            }
            Err(e) => push(&manifest.enclave_image, format!("unreadable EIF: {e}")),
        }
    } else {
        push(&manifest.enclave_image, "enclave image not listed in the manifest's files".into());
    }
    Ok(VerifyReport {
        dir: dir.into(),
        ok: problems.is_empty(),
        files_checked: manifest.files.len(),
        problems,
    })
}

/// Every non-directory below `dir`, as bundle paths.
fn list_files(dir: &Path, prefix: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let entry = entry?;
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type()?.is_dir() {
            out.extend(list_files(&entry.path(), &format!("{name}/"))?);
        } else {
            out.push(name);
        }
    }
    Ok(out)
}

/// `git rev-parse HEAD` in `dir`, or "unknown" outside a checkout.
pub fn git_commit(dir: &Path) -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
