//! kv-ami: raw disk image -> AMIs in every region (see docs/ami.md).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use kv_ami::{Job, aws, spec::AmiSpec};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kv-ami", about = "Bake a raw disk image into AMIs (EBS direct APIs, no builder instance)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upload the raw image, register the AMI, copy, share, tag, write SSM parameters.
    Import {
        /// amispec.toml (see packaging/ami/amispec.example.toml)
        #[arg(long)]
        spec: PathBuf,
        /// Raw disk image (qcow2, VHD, VMDK are refused).
        #[arg(long)]
        image: PathBuf,
        /// The bundle's manifest.json (`kv-packager bundle`); its SHA-256 is the content key.
        #[arg(long)]
        bundle_manifest: PathBuf,
        /// Write the Packer-shaped manifest here (it is printed on stdout as well).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print every AWS call that would be made and exit; makes no call.
        #[arg(long)]
        dry_run: bool,
        /// Overrides `region` of the spec.
        #[arg(long)]
        region: Option<String>,
        /// Overrides `upload.workers` of the spec.
        #[arg(long)]
        workers: Option<usize>,
        /// Custom AWS endpoint (e.g. a local emulator); credentials still come from the standard chain.
        #[arg(long, env = "KV_AMI_ENDPOINT_URL")]
        endpoint_url: Option<String>,
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

fn real_main() -> Result<(), String> {
    match Cli::parse().cmd {
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
        Cmd::Import { spec, image, bundle_manifest, out, dry_run, region, workers, endpoint_url } => {
            let mut s = AmiSpec::load(&spec)?;
            if let Some(r) = region {
                s.region = r;
            }
            if let Some(w) = workers {
                s.upload.workers = w;
            }
            // Flags are checked like the file: everything before the first AWS call.
            s.validate().map_err(|e| format!("{} (with flags): {e}", spec.display()))?;
            let job = Job::prepare(s, &image, &bundle_manifest)?;
            if dry_run {
                let (_, nonzero) = kv_ami::count_nonzero(&image, kv_ami::AWS_BLOCK_SIZE)
                    .map_err(|e| format!("{}: {e}", image.display()))?;
                println!("# content key {}", job.content_key);
                for line in job.planned_calls(nonzero) {
                    println!("{line}");
                }
                return Ok(());
            }
            let target = aws::Target { endpoint_url, static_credentials: None };
            let rt = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
            let manifest =
                rt.block_on(kv_ami::run(&job, &target, |l| eprintln!("{l}"))).map_err(|e| e.to_string())?;
            let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
            if let Some(out) = out {
                std::fs::write(&out, format!("{text}\n")).map_err(|e| format!("{}: {e}", out.display()))?;
            }
            println!("{text}");
            Ok(())
        }
    }
}
