//! kv-packager: build and describe enclave images, lay out and verify the AMI bundle.

#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use packaging::build::{self, Arch, NativeArgs};
use packaging::bundle::{self, BundleSpec, CollectorPackage};
use packaging::eif;
use packaging::eif::metadata::rfc3339_utc;
use packaging::key_policy;
use packaging::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kv-packager", version, about = "Enclave images (EIF), PCRs and the AMI bundle")]
struct Cli {
    /// Machine-readable JSON on stdout (and no progress bars).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Enclave image files.
    #[command(subcommand)]
    Eif(EifCmd),
    /// Lay out dist/aws: EIF, proxy, units, envoy and collector config, launcher, manifest.json.
    Bundle(Box<BundleArgs>),
    /// Recompute a bundle's hashes, sizes, modes and PCRs against its manifest.json.
    Verify {
        /// The bundle directory (e.g. dist/aws).
        dir: PathBuf,
    },
    /// KMS key policies.
    #[command(subcommand)]
    KeyPolicy(KeyPolicyCmd),
}

#[derive(Subcommand)]
enum KeyPolicyCmd {
    /// Fail when a statement allows Decrypt, Encrypt, GenerateDataKey* or ReEncrypt* (also via
    /// wildcards, NotAction or NotPrincipal) without a kms:RecipientAttestation condition under
    /// StringEquals/StringEqualsIgnoreCase. Exit 1 on findings, 2 when a file is unreadable.
    Lint {
        /// Key policy JSON files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EifCmd {
    /// Build an EIF: natively from a kernel and a rootfs directory, or with nitro-cli.
    Build(Box<BuildArgs>),
    /// Print an EIF's sections and measurements (PCR0/1/2, PCR8 when signed) as JSON.
    Describe {
        /// The .eif file.
        file: PathBuf,
        /// Report a CRC mismatch in CheckCRC instead of failing.
        #[arg(long)]
        no_crc_check: bool,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// Output .eif file.
    #[arg(long)]
    out: PathBuf,
    /// Build with `nitro-cli build-enclave` from this docker image instead of natively.
    #[arg(long, conflicts_with_all = ["kernel", "rootfs", "blobs", "init"])]
    docker_uri: Option<String>,
    /// Kernel image (bzImage on x86_64, Image on aarch64).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Directory with nitro-cli's blobs (kernel, cmdline, init, nsm.ko); flags override it.
    #[arg(long)]
    blobs: Option<PathBuf>,
    /// The init (PID 1): our enclave-init binary, or AWS's from --blobs.
    #[arg(long)]
    init: Option<PathBuf>,
    /// The NSM driver module, loaded by the init when present.
    #[arg(long)]
    nsm_ko: Option<PathBuf>,
    /// Extra kernel modules for the bootstrap ramdisk, loaded in the order given.
    #[arg(long = "module")]
    modules: Vec<PathBuf>,
    /// The application root file system (becomes /rootfs, then / after switch-root).
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// The application's command: a JSON array or whitespace-separated words.
    #[arg(long)]
    cmd: Option<String>,
    /// Environment for the application, KEY=VALUE (repeatable).
    #[arg(long)]
    env: Vec<String>,
    /// Sign the image (PCR8): PEM certificate of the P-384 key below (as nitro-cli's flag).
    #[arg(long, requires = "private_key")]
    signing_certificate: Option<PathBuf>,
    /// PEM P-384 private key (SEC1 or PKCS#8) that signs PCR0.
    #[arg(long, requires = "signing_certificate")]
    private_key: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "x86_64")]
    arch: Arch,
    /// Timestamp for every file and the image's build time (reproducible builds).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
    /// Image name in the EIF metadata.
    #[arg(long, default_value = "kv-server")]
    name: String,
    /// Image version in the EIF metadata.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    image_version: String,
}

#[derive(Args)]
struct BundleArgs {
    /// Output directory.
    #[arg(long, default_value = "dist/aws")]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// The enclave image (becomes server_enclave_image.eif).
    #[arg(long)]
    eif: PathBuf,
    /// The vsockproxy binary (becomes proxy).
    #[arg(long)]
    proxy: PathBuf,
    /// The vsockproxy configuration (becomes /etc/vsockproxy/vsockproxy.toml).
    #[arg(long)]
    proxy_config: Option<PathBuf>,
    /// Directory with vsockproxy.service, the other units and drop-ins, enclave.env and
    /// nitro-enclave-run.
    #[arg(long, default_value = "systemd")]
    systemd_dir: PathBuf,
    #[arg(long, default_value = "envoy/envoy.yaml")]
    envoy_config: PathBuf,
    /// The query API descriptor set (`kv-server descriptor-set --out FILE`).
    #[arg(long)]
    descriptor_set: PathBuf,
    #[arg(long, default_value = "collector/otel_collector_config.yaml")]
    collector_config: PathBuf,
    /// The collector package file, copied into the bundle.
    #[arg(long, conflicts_with_all = ["collector_url", "collector_sha256", "collector_preinstalled"])]
    collector_package: Option<PathBuf>,
    /// Or: the collector package's https URL, fetched and checked by the AMI build.
    #[arg(long, requires = "collector_sha256")]
    collector_url: Option<String>,
    /// SHA-256 of the package at --collector-url.
    #[arg(long, requires = "collector_url")]
    collector_sha256: Option<String>,
    /// Or: no collector package in the bundle; the base AMI already has the collector.
    #[arg(long, conflicts_with_all = ["collector_url", "collector_sha256"])]
    collector_preinstalled: bool,
    /// The instance-init launcher (terraform/ owns it).
    #[arg(long)]
    instance_init: PathBuf,
    /// Git commit recorded in the manifest (default: `git rev-parse HEAD`).
    #[arg(long)]
    git_commit: Option<String>,
    /// Build time recorded in the manifest; default now.
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<u64>,
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// One line per finding (or per unreadable file) on stdout, naming the file; exit 1 on
/// findings, 2 when a file could not be read or parsed (it has precedence).
fn lint_key_policies(files: &[PathBuf], json: bool) -> Result<ExitCode> {
    let (mut findings, mut unreadable) = (0usize, 0usize);
    let mut report = Vec::new();
    for file in files {
        match key_policy::lint_file(file) {
            Ok(found) => {
                for f in &found {
                    if json {
                        report.push(serde_json::json!({
                            "file": file, "statement": f.statement.as_ref().map(|s| s.0),
                            "sid": f.statement.as_ref().and_then(|s| s.1.clone()),
                            "rule": f.rule.to_string(), "detail": f.detail,
                        }));
                    } else {
                        println!("{}: {f}", file.display());
                    }
                }
                findings += found.len();
            }
            Err(e) => {
                unreadable += 1;
                if json {
                    report.push(
                        serde_json::json!({ "file": file, "rule": "unreadable", "detail": e.to_string() }),
                    );
                } else {
                    println!("{e}");
                }
            }
        }
    }
    if json {
        print_json(&report)?;
    }
    eprintln!("key-policy lint: {} file(s), {findings} finding(s), {unreadable} unreadable", files.len());
    Ok(match (unreadable, findings) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(1),
        _ => ExitCode::from(2),
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    let progress = Progress::new(cli.json);
    match cli.command {
        Top::Eif(EifCmd::Describe { file, no_crc_check }) => {
            let d = eif::describe(&file, !no_crc_check)?;
            print_json(&d)?;
        }
        Top::Eif(EifCmd::Build(a)) => {
            let report = if let Some(uri) = &a.docker_uri {
                build::build_with_nitro_cli(uri, &a.out)?
            } else {
                let native = NativeArgs {
                    kernel: a.kernel,
                    cmdline: a.cmdline,
                    init: a.init,
                    nsm_ko: a.nsm_ko,
                    modules: a.modules,
                    blobs: a.blobs,
                    rootfs: a.rootfs,
                    cmd: a.cmd,
                    env: a.env,
                    signing_certificate: a.signing_certificate,
                    private_key: a.private_key,
                };
                let spec = build::resolve(native, a.arch, a.source_date_epoch, a.name, a.image_version)?;
                build::build_native(&spec, &a.out, progress)?
            };
            if cli.json {
                print_json(&report)?;
            } else {
                println!("wrote {} ({} bytes, {} build)", report.output.display(), report.size, report.path);
                print_json(&serde_json::json!({ "Measurements": report.measurements }))?;
            }
        }
        Top::Bundle(a) => {
            let a = *a;
            let collector = match (a.collector_package, a.collector_url, a.collector_sha256) {
                (Some(p), _, _) => CollectorPackage::File(p),
                (None, Some(url), Some(sha256)) => CollectorPackage::Pinned { url, sha256 },
                _ if a.collector_preinstalled => CollectorPackage::Preinstalled,
                _ => anyhow::bail!(
                    "the collector package is required: --collector-package FILE, --collector-url URL with --collector-sha256 HEX, or --collector-preinstalled"
                ),
            };
            let build_time = match a.source_date_epoch {
                Some(t) => t,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("system clock before 1970")?
                    .as_secs(),
            };
            let spec = BundleSpec {
                git_commit: a
                    .git_commit
                    .unwrap_or_else(|| bundle::git_commit(&std::env::current_dir().unwrap_or_default())),
                build_time: rfc3339_utc(build_time),
                out: a.out,
                eif: a.eif,
                proxy: a.proxy,
                proxy_config: a.proxy_config,
                systemd_dir: a.systemd_dir,
                envoy_config: a.envoy_config,
                descriptor_set: a.descriptor_set,
                collector_config: a.collector_config,
                collector,
                instance_init: a.instance_init,
                force: a.force,
            };
            let m = bundle::bundle(&spec)?;
            if cli.json {
                print_json(&m)?;
            } else {
                println!("wrote {} ({} files + {})", spec.out.display(), m.files.len(), bundle::MANIFEST);
                print_json(&serde_json::json!({ "Measurements": m.pcrs }))?;
            }
        }
        Top::KeyPolicy(KeyPolicyCmd::Lint { files }) => return lint_key_policies(&files, cli.json),
        Top::Verify { dir } => {
            let r = bundle::verify(&dir)?;
            if cli.json {
                print_json(&r)?;
            } else if r.ok {
                println!("{}: ok ({} files, PCRs match)", dir.display(), r.files_checked);
            } else {
                for p in &r.problems {
                    eprintln!("{}: {}: {}", dir.display(), p.path, p.problem);
                }
            }
            if !r.ok {
                eprintln!("{}: {} problem(s) found", dir.display(), r.problems.len());
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kv-packager: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
