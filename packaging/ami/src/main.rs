//! kv-ami: the bundle -> AMIs in every region (see docs/ami.md).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use kv_ami::bake::BakeJob;
use kv_ami::spec::{AmiSpec, Via};
use kv_ami::variants::Jobs;
use kv_ami::{Job, Manifest, RunOptions, aws};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kv-ami",
    about = "Bake the bundle into AMIs: raw-image import or builder instance, then copy, share, SSM"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Common {
    /// amispec.toml (see packaging/ami/amispec.example.toml)
    #[arg(long)]
    spec: PathBuf,
    /// Write the Packer-shaped manifest here (it is printed on stdout as well).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print every AWS call that would be made and exit; makes no call.
    #[arg(long)]
    dry_run: bool,
    /// State file: written after every step; a re-run with the same file resumes where it stopped.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Overrides `region` of the spec.
    #[arg(long)]
    region: Option<String>,
    /// Custom AWS endpoint (e.g. a local emulator); credentials still come from the standard chain.
    #[arg(long, env = "KV_AMI_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// Publish without booting the image first (a warning; the channel's `latest` is not moved).
    #[arg(long)]
    skip_smoke_test: bool,
}

/// Which builds of a channel are in use: `gc` keeps them, `republish` renews them.
#[derive(clap::Args)]
struct Retention {
    #[arg(long)]
    spec: PathBuf,
    /// How many of the newest builds stay in use (besides `latest`).
    #[arg(long)]
    keep: usize,
    /// Overrides `channel` of the spec (of the variant, with --variant).
    #[arg(long)]
    channel: Option<String>,
    /// The variant (`[[variants]]` id); without it, every variant's channel in turn.
    #[arg(long)]
    variant: Option<String>,
    /// Builds younger than this many days stay in use.
    #[arg(long, default_value_t = 7)]
    grace_days: u32,
    /// Describe/Get calls only: decide and list, change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, env = "KV_AMI_ENDPOINT_URL")]
    endpoint_url: Option<String>,
}

impl Retention {
    /// The (variant) specs with their channel (flag over spec, checked), and the grace period in
    /// seconds. A spec with variants and neither --variant nor --channel: every variant.
    fn resolve(&self) -> Result<(Vec<(AmiSpec, String)>, i64), String> {
        let s = AmiSpec::load(&self.spec)?;
        let specs = match (&self.variant, &self.channel) {
            (None, None) => s.variant_specs(),
            (v, _) => {
                vec![s.select_variant(v.as_deref()).map_err(|e| format!("{}: {e}", self.spec.display()))?]
            }
        };
        let mut out = Vec::new();
        for v in specs {
            let channel = self.channel.clone().or_else(|| v.channel.clone()).ok_or_else(|| {
                format!("{}: channel: not set (set it, or pass --channel)", self.spec.display())
            })?;
            let mut check = v.clone();
            check.channel = Some(channel.clone());
            check.validate().map_err(|e| format!("--channel: {e}"))?;
            out.push((v, channel));
        }
        Ok((out, i64::from(self.grace_days) * 86_400))
    }

    fn target(&self) -> aws::Target {
        aws::Target { endpoint_url: self.endpoint_url.clone(), ..Default::default() }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Raw image -> snapshot (EBS direct APIs, or S3 + ImportSnapshot) -> AMI, copies, sharing, SSM.
    Import {
        #[command(flatten)]
        common: Common,
        /// Raw disk image (qcow2, VHD, VMDK are refused).
        #[arg(long)]
        image: PathBuf,
        /// The bundle's manifest.json (`kv-packager bundle`); its SHA-256 is the content key.
        #[arg(long)]
        bundle_manifest: PathBuf,
        /// Overrides `upload.workers` of the spec.
        #[arg(long)]
        workers: Option<usize>,
        /// Overrides `via` of the spec: ebs-direct or s3-import.
        #[arg(long)]
        via: Option<String>,
    },
    /// Bundle -> S3 -> builder instance (user data installs, signals) -> CreateImage -> copies, sharing, SSM.
    Bake {
        #[command(flatten)]
        common: Common,
        /// The bundle directory (`kv-packager bundle --out`), with manifest.json.
        #[arg(long)]
        bundle_dir: PathBuf,
        /// Print the rendered user data of the builder and exit (no AWS call).
        #[arg(long)]
        print_user_data: bool,
    },
    /// Boot an existing image of the build region once and check it ([smoke_test] of the spec).
    SmokeTest {
        /// amispec.toml with a [smoke_test] table.
        #[arg(long)]
        spec: PathBuf,
        /// The image (in the spec's region); its content-key tag must be the bundle manifest's.
        #[arg(long)]
        ami: String,
        /// The bundle's manifest.json: the PCRs the enclave must report.
        #[arg(long)]
        bundle_manifest: PathBuf,
        /// The variant (`[[variants]]` id) whose smoke-test instance type is used.
        #[arg(long)]
        variant: Option<String>,
        #[arg(long, env = "KV_AMI_ENDPOINT_URL")]
        endpoint_url: Option<String>,
    },
    /// Move a channel's `latest` SSM parameter, in every region of the spec, to an image and its copies.
    Promote {
        #[arg(long)]
        spec: PathBuf,
        /// Overrides `channel` of the spec.
        #[arg(long)]
        channel: Option<String>,
        /// The image in the build region (its copies are found through the content-key tag).
        #[arg(long)]
        ami: String,
        /// The variant (`[[variants]]` id) of the image: its channel, and its copies' tag.
        #[arg(long)]
        variant: Option<String>,
        /// Print the calls and exit; makes none.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, env = "KV_AMI_ENDPOINT_URL")]
        endpoint_url: Option<String>,
    },
    /// Deregister a channel's old builds (every region, with their snapshots); keeps the one
    /// `latest` points at, the N newest and those younger than the grace period.
    Gc {
        #[command(flatten)]
        retention: Retention,
    },
    /// Renew the deprecation time of a channel's builds still in use (those gc keeps with the same
    /// --keep and --grace-days), in every region.
    Republish {
        #[command(flatten)]
        retention: Retention,
        /// The new deprecation time: now plus this many days (1-3650).
        #[arg(long)]
        deprecate_in_days: u32,
    },
    /// Local scan only: blocks, non-zero blocks, SHA-256 of each (the upload's local ceiling).
    Scan {
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value_t = kv_ami::AWS_BLOCK_SIZE)]
        block_size: usize,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        // Progress and retries (info/warn from kv_ami) by default; RUST_LOG overrides.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kv_ami=info,warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-ami: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Load the spec and apply the flags; everything is checked before the first AWS call.
fn load(common: &Common, edit: impl FnOnce(&mut AmiSpec) -> Result<(), String>) -> Result<AmiSpec, String> {
    let mut s = AmiSpec::load(&common.spec)?;
    if let Some(r) = &common.region {
        s.region = r.clone();
    }
    edit(&mut s).map_err(|e| format!("{} (with flags): {e}", common.spec.display()))?;
    s.validate().map_err(|e| format!("{} (with flags): {e}", common.spec.display()))?;
    // On by default: a spec without [smoke_test] needs the explicit opt-out.
    s.skip_smoke_test = common.skip_smoke_test;
    if common.skip_smoke_test {
        eprintln!(
            "kv-ami: warning: --skip-smoke-test: the image is published without being booted once; \
             the channel's latest parameter is not moved (kv-ami promote)"
        );
    } else if s.smoke_test.is_none() {
        return Err(format!(
            "{}: smoke_test: the [smoke_test] table is missing: the image is booted and checked before it is \
             published (docs/ami.md); add the table, or pass --skip-smoke-test",
            common.spec.display()
        ));
    }
    Ok(s)
}

/// Ends when SIGINT or SIGTERM arrives (never, if neither can be listened for).
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    tokio::select! { _ = term => {}, _ = int => {} }
    eprintln!("kv-ami: interrupted: cleaning up (interrupt again to exit at once)");
    // The cleanup's waits are bounded, but an operator may not want to wait for them.
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "kv-ami: second interrupt: exiting before the cleanup finished; look for resources tagged \
                 kv-ami:run / kv-ami:content-key"
            );
            std::process::exit(130);
        }
    });
}

fn finish(common: &Common, m: Manifest) -> Result<(), String> {
    let text = serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?;
    if let Some(out) = &common.out {
        std::fs::write(out, format!("{text}\n")).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    println!("{text}");
    Ok(())
}

/// A spec with variants: the manifest of the published ones is written, then the run fails if
/// any variant failed (naming each).
fn finish_variants(common: &Common, outcome: kv_ami::variants::Outcome) -> Result<(), String> {
    let error = outcome.error();
    if let Some(m) = outcome.manifest {
        finish(common, m)?;
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A variant's input error names the file and the variant.
fn in_variant(common: &Common, variant: Option<String>, e: String) -> String {
    match variant {
        Some(v) => format!("{}: variant {v}: {e}", common.spec.display()),
        None => e,
    }
}

fn rt() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))
}

fn real_main() -> Result<(), String> {
    match Cli::parse().cmd {
        Cmd::SmokeTest { spec, ami, bundle_manifest, variant, endpoint_url } => {
            let s = AmiSpec::load(&spec)?
                .select_variant(variant.as_deref())
                .map_err(|e| format!("{}: {e}", spec.display()))?;
            if s.smoke_test.is_none() {
                return Err(format!("{}: smoke_test: the [smoke_test] table is missing", spec.display()));
            }
            let (m, key) =
                packaging::manifest::Manifest::read_with_key(&bundle_manifest).map_err(|e| e.to_string())?;
            let prepared = kv_ami::smoke::prepare(&s, &m.pcrs)?.ok_or("smoke_test: not prepared")?;
            let target = aws::Target { endpoint_url, ..Default::default() };
            let log = |l: &str| eprintln!("{l}");
            let opts = RunOptions { target: &target, state_path: None, progress_bar: false, log: &log };
            rt()?
                .block_on(kv_ami::smoke_test::standalone(&s, &key, &prepared, &ami, &opts, interrupted()))
                .map_err(|e| e.to_string())?;
            println!("{{\"ami\":\"{ami}\",\"smoke_test\":\"passed\"}}");
            Ok(())
        }
        Cmd::Gc { retention } => {
            let (specs, grace) = retention.resolve()?;
            let log = |l: &str| eprintln!("{l}");
            let (keep, dry_run) = (retention.keep, retention.dry_run);
            let rt = rt()?;
            let mut reports = Vec::new();
            for (s, channel) in &specs {
                let r =
                    rt.block_on(kv_ami::gc::gc(s, &retention.target(), channel, keep, grace, dry_run, &log));
                reports.push(r.map_err(|e| e.to_string())?);
            }
            let text = match reports.as_slice() {
                [one] => serde_json::to_string_pretty(one),
                all => serde_json::to_string_pretty(all),
            };
            println!("{}", text.map_err(|e| e.to_string())?);
            Ok(())
        }
        Cmd::Republish { retention, deprecate_in_days } => {
            let (specs, grace) = retention.resolve()?;
            if !(1..=3650).contains(&deprecate_in_days) {
                return Err(format!(
                    "--deprecate-in-days: {deprecate_in_days} is outside 1-3650 (AWS: at most 10 years)"
                ));
            }
            let log = |l: &str| eprintln!("{l}");
            let secs = u64::from(deprecate_in_days) * 86_400;
            let (keep, dry_run) = (retention.keep, retention.dry_run);
            let rt = rt()?;
            let mut all = Vec::new();
            for (s, channel) in &specs {
                let target = retention.target();
                let r =
                    rt.block_on(kv_ami::gc::republish(s, &target, channel, keep, grace, secs, dry_run, &log));
                all.push(r.map_err(|e| e.to_string())?);
            }
            let text = match all.as_slice() {
                [one] => serde_json::to_string_pretty(one),
                all => serde_json::to_string_pretty(all),
            };
            println!("{}", text.map_err(|e| e.to_string())?);
            Ok(())
        }
        Cmd::Promote { spec, channel, ami, variant, dry_run, endpoint_url } => {
            let s = AmiSpec::load(&spec)?
                .select_variant(variant.as_deref())
                .map_err(|e| format!("{}: {e}", spec.display()))?;
            let channel = channel
                .or_else(|| s.channel.clone())
                .ok_or_else(|| format!("{}: channel: not set (set it, or pass --channel)", spec.display()))?;
            let mut check = s.clone();
            check.channel = Some(channel.clone());
            check.validate().map_err(|e| format!("--channel: {e}"))?;
            if !ami.starts_with("ami-") {
                return Err(format!("--ami: {ami:?} is not an AMI id"));
            }
            if dry_run {
                for line in kv_ami::publish::planned_promote(&s, &channel, &ami) {
                    println!("{line}");
                }
                return Ok(());
            }
            let target = aws::Target { endpoint_url, ..Default::default() };
            let log = |l: &str| eprintln!("{l}");
            let done = rt()?
                .block_on(kv_ami::publish::promote(&s, &target, &channel, &ami, &log))
                .map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&done).map_err(|e| e.to_string())?);
            Ok(())
        }
        Cmd::Scan { image, block_size } => {
            if block_size == 0 {
                return Err("--block-size: must be > 0".into());
            }
            kv_ami::detect::ensure_raw(&image)?;
            let t = std::time::Instant::now();
            let (scanned, kept) =
                kv_ami::count_nonzero(&image, block_size).map_err(|e| format!("{}: {e}", image.display()))?;
            println!(
                "{{\"blocks\":{scanned},\"nonzero_blocks\":{kept},\"block_size\":{block_size},\"seconds\":{:.3}}}",
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Import { common, image, bundle_manifest, workers, via } => {
            let s = load(&common, |s| {
                if let Some(w) = workers {
                    s.upload.workers = w;
                }
                match via.as_deref() {
                    None => {}
                    Some("ebs-direct") => s.via = Via::EbsDirect,
                    Some("s3-import") => s.via = Via::S3Import,
                    Some(other) => return Err(format!("--via: {other:?} is not ebs-direct or s3-import")),
                }
                Ok(())
            })?;
            let jobs = s
                .variant_specs()
                .into_iter()
                .map(|v| {
                    let id = v.variant.clone();
                    Job::prepare(v, &image, &bundle_manifest).map_err(|e| in_variant(&common, id, e))
                })
                .collect::<Result<Vec<Job>, String>>()?;
            if common.dry_run {
                let (_, nonzero) = kv_ami::count_nonzero(&image, kv_ami::AWS_BLOCK_SIZE)
                    .map_err(|e| format!("{}: {e}", image.display()))?;
                println!("# content key {}", jobs[0].content_key);
                for job in &jobs {
                    if let Some(v) = &job.spec.variant {
                        println!("# variant {v}");
                    }
                    for line in job.planned_calls(nonzero) {
                        println!("{line}");
                    }
                }
                return Ok(());
            }
            let target = aws::Target { endpoint_url: common.endpoint_url.clone(), ..Default::default() };
            let log = |l: &str| eprintln!("{l}");
            let opts = RunOptions {
                target: &target,
                state_path: common.state.as_deref(),
                progress_bar: std::io::stderr().is_terminal(),
                log: &log,
            };
            let rt = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
            if s.variants.is_empty() {
                let m =
                    rt.block_on(kv_ami::run(&jobs[0], &opts, interrupted())).map_err(|e| e.to_string())?;
                return finish(&common, m);
            }
            let outcome = rt.block_on(kv_ami::variants::run_all(Jobs::Import(&jobs), &opts, interrupted()));
            finish_variants(&common, outcome)
        }
        Cmd::Bake { common, bundle_dir, print_user_data } => {
            let s = load(&common, |_| Ok(()))?;
            let jobs = s
                .variant_specs()
                .into_iter()
                .map(|v| {
                    let id = v.variant.clone();
                    BakeJob::prepare(v, &bundle_dir).map_err(|e| in_variant(&common, id, e))
                })
                .collect::<Result<Vec<BakeJob>, String>>()?;
            if print_user_data {
                print!("{}", jobs[0].user_data()?);
                return Ok(());
            }
            if common.dry_run {
                println!("# content key {}", jobs[0].content_key);
                for job in &jobs {
                    if let Some(v) = &job.spec.variant {
                        println!("# variant {v}");
                    }
                    for line in job.planned_calls() {
                        println!("{line}");
                    }
                }
                return Ok(());
            }
            let target = aws::Target { endpoint_url: common.endpoint_url.clone(), ..Default::default() };
            let log = |l: &str| eprintln!("{l}");
            let opts = RunOptions {
                target: &target,
                state_path: common.state.as_deref(),
                progress_bar: false,
                log: &log,
            };
            let rt = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
            if s.variants.is_empty() {
                let m = rt
                    .block_on(kv_ami::bake::bake(&jobs[0], &opts, interrupted()))
                    .map_err(|e| e.to_string())?;
                return finish(&common, m);
            }
            let outcome = rt.block_on(kv_ami::variants::run_all(Jobs::Bake(&jobs), &opts, interrupted()));
            finish_variants(&common, outcome)
        }
    }
}
