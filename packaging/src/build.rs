//! `eif build`: the native path (kernel + cmdline + rootfs directory -> two deterministic cpio
//! ramdisks -> EIF, no docker) and the nitro-cli path (`--docker-uri`).
//!
//! Ramdisk layout (what nitro-cli's linuxkit step produces):
//! - bootstrap ramdisk (PCR1): `dev/`, `init`, `nsm.ko`, plus `modules/NN-name.ko` for extra
//!   kernel modules our init loads in order (vsock / virtio-mmio on kernels that build them as
//!   modules);
//! - application ramdisk (PCR2): `cmd`, `env`, `rootfs/...` with `rootfs/{dev,proc,run,sys,tmp,var}`.

use crate::cpio::{Archive, CpioError};
use crate::eif::metadata::{BuildInfo, IdentityInfo, rfc3339_utc};
use crate::eif::{self, EifWriter, Measurements, SectionKind};
use crate::progress::Progress;
use anyhow::{Context, Result, bail};
use std::fs::{self, File};
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Directories the AWS init expects inside the container root.
pub const ROOTFS_DIRS: [&str; 6] = ["dev", "proc", "run", "sys", "tmp", "var"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub fn kernel_blob(self) -> &'static str {
        match self {
            Arch::X86_64 => "bzImage",
            Arch::Aarch64 => "Image",
        }
    }
}

/// Everything the native build needs, resolved (blobs applied, files checked).
#[derive(Clone, Debug)]
pub struct NativeSpec {
    pub kernel: PathBuf,
    pub kernel_config: Option<PathBuf>,
    pub cmdline: String,
    pub init: PathBuf,
    pub nsm_ko: Option<PathBuf>,
    pub modules: Vec<PathBuf>,
    pub rootfs: PathBuf,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub arch: Arch,
    pub source_date_epoch: u64,
    pub name: String,
    pub version: String,
    /// (certificate PEM, private key PEM) for a signed image (PCR8).
    pub signing: Option<(Vec<u8>, String)>,
}

/// Command-line inputs before `--blobs` defaults are applied.
#[derive(Clone, Debug, Default)]
pub struct NativeArgs {
    pub kernel: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub init: Option<PathBuf>,
    pub nsm_ko: Option<PathBuf>,
    pub modules: Vec<PathBuf>,
    pub blobs: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub cmd: Option<String>,
    pub env: Vec<String>,
    pub signing_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
}

fn existing_file(flag: &str, path: &Path) -> Result<PathBuf> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(path.to_path_buf()),
        Ok(_) => bail!("{flag} {}: not a regular file", path.display()),
        Err(e) => bail!("{flag} {}: {e}", path.display()),
    }
}

/// Applies `--blobs DIR` (an installed aws-nitro-enclaves-cli's blobs: bzImage/Image,
/// bzImage.config, cmdline, init, nsm.ko) under any explicit flags, and checks every input.
pub fn resolve(
    args: NativeArgs,
    arch: Arch,
    source_date_epoch: u64,
    name: String,
    version: String,
) -> Result<NativeSpec> {
    let blob = |file: &str| args.blobs.as_ref().map(|d| d.join(file));
    let kernel = match (&args.kernel, blob(arch.kernel_blob())) {
        (Some(k), _) => existing_file("--kernel", k)?,
        (None, Some(b)) => existing_file("--blobs (kernel)", &b)?,
        (None, None) => bail!("--kernel FILE is required (or --blobs DIR with {})", arch.kernel_blob()),
    };
    let kernel_config = {
        let mut c = kernel.clone().into_os_string();
        c.push(".config");
        Some(PathBuf::from(c)).filter(|p| p.is_file())
    };
    let cmdline = match (&args.cmdline, blob("cmdline")) {
        (Some(c), _) => c.clone(),
        (None, Some(b)) => fs::read_to_string(&b)
            .with_context(|| format!("--blobs (cmdline) {}", b.display()))?
            .trim_end_matches('\n')
            .to_string(),
        (None, None) => bail!("--cmdline \"...\" is required (or --blobs DIR with a cmdline file)"),
    };
    if cmdline.contains('\0') {
        bail!("--cmdline contains a NUL byte");
    }
    let init = match (&args.init, blob("init")) {
        (Some(i), _) => existing_file("--init", i)?,
        (None, Some(b)) => existing_file("--blobs (init)", &b)?,
        (None, None) => {
            bail!("--init FILE is required (the enclave-init binary, or --blobs DIR with AWS's init)")
        }
    };
    let nsm_ko = match (&args.nsm_ko, blob("nsm.ko")) {
        (Some(n), _) => Some(existing_file("--nsm-ko", n)?),
        (None, Some(b)) => Some(existing_file("--blobs (nsm.ko)", &b)?),
        (None, None) => None,
    };
    let modules = args.modules.iter().map(|m| existing_file("--module", m)).collect::<Result<_>>()?;
    let rootfs = args.rootfs.context("--rootfs DIR is required")?;
    if !rootfs.is_dir() {
        bail!("--rootfs {}: not a directory", rootfs.display());
    }
    let cmd = parse_cmd(args.cmd.as_deref().context("--cmd \"...\" is required")?)?;
    let env = args.env.iter().map(|e| parse_env(e)).collect::<Result<_>>()?;
    let signing = match (&args.signing_certificate, &args.private_key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let cert = fs::read(c).with_context(|| format!("--signing-certificate {}", c.display()))?;
            crate::eif::signature::pem_to_der(&cert)
                .map_err(|e| anyhow::anyhow!("--signing-certificate {}: {e}", c.display()))?;
            let key = fs::read_to_string(k).with_context(|| format!("--private-key {}", k.display()))?;
            Some((cert, key))
        }
        _ => bail!("--signing-certificate and --private-key go together"),
    };
    Ok(NativeSpec {
        kernel,
        kernel_config,
        cmdline,
        init,
        nsm_ko,
        modules,
        rootfs,
        cmd,
        env,
        arch,
        source_date_epoch,
        name,
        version,
        signing,
    })
}

/// `--cmd`: a JSON array (`["/bin/kv-server","--port","50051"]`, like docker's exec form) or a
/// whitespace-separated string. The init reads one argument per line, so no argument may
/// contain a newline.
pub fn parse_cmd(s: &str) -> Result<Vec<String>> {
    let trimmed = s.trim();
    let args: Vec<String> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).with_context(|| format!("--cmd {s:?}: not a JSON array of strings"))?
    } else {
        trimmed.split_whitespace().map(str::to_string).collect()
    };
    if args.is_empty() || args[0].is_empty() {
        bail!("--cmd {s:?}: no program given");
    }
    if let Some(a) = args.iter().find(|a| a.contains('\n') || a.contains('\0')) {
        bail!("--cmd argument {a:?} contains a newline or NUL, which the cmd file cannot hold");
    }
    Ok(args)
}

/// `--env K=V`.
pub fn parse_env(s: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').with_context(|| format!("--env {s:?}: expected KEY=VALUE"))?;
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("--env {s:?}: the key must be non-empty letters, digits and underscores");
    }
    if v.contains('\n') || v.contains('\0') {
        bail!("--env {k}: the value contains a newline or NUL, which the env file cannot hold");
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn cmd_file(cmd: &[String]) -> Vec<u8> {
    cmd.iter().flat_map(|a| a.bytes().chain([b'\n'])).collect()
}

pub fn env_file(env: &[(String, String)]) -> Vec<u8> {
    env.iter().flat_map(|(k, v)| format!("{k}={v}\n").into_bytes()).collect()
}

pub fn bootstrap_ramdisk(spec: &NativeSpec) -> Result<Archive, CpioError> {
    let mut a = Archive::new(spec.source_date_epoch);
    a.add_dir("dev")?;
    a.add_file("init", &spec.init)?;
    if let Some(nsm) = &spec.nsm_ko {
        a.add_file("nsm.ko", nsm)?;
    }
    for (i, m) in spec.modules.iter().enumerate() {
        let base = m.file_name().and_then(|n| n.to_str()).unwrap_or("module.ko");
        a.add_file(&format!("modules/{i:02}-{base}"), m)?;
    }
    Ok(a)
}

pub fn app_ramdisk(spec: &NativeSpec) -> Result<Archive, CpioError> {
    let mut a = Archive::new(spec.source_date_epoch);
    a.add_bytes("cmd", false, cmd_file(&spec.cmd))?;
    a.add_bytes("env", false, env_file(&spec.env))?;
    a.add_tree("rootfs", &spec.rootfs)?;
    for d in ROOTFS_DIRS {
        a.add_dir(&format!("rootfs/{d}"))?;
    }
    Ok(a)
}

/// "6.12.38+deb13-amd64" from a kernel config's header comment, else "unknown".
fn kernel_version(config: Option<&Path>) -> String {
    let Some(path) = config else { return "unknown".into() };
    let mut head = String::new();
    if File::open(path).and_then(|f| f.take(4096).read_to_string(&mut head)).is_err() {
        return "unknown".into();
    }
    head.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("# Linux/")?;
            rest.split_whitespace().nth(1).map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildReport {
    pub output: PathBuf,
    pub path: &'static str,
    #[serde(rename = "Measurements")]
    pub measurements: Measurements,
    pub size: u64,
    pub bootstrap_entries: usize,
    pub app_entries: usize,
}

pub fn build_native(spec: &NativeSpec, out: &Path, progress: Progress) -> Result<BuildReport> {
    let boot = bootstrap_ramdisk(spec)?;
    let app = app_ramdisk(spec)?;
    let metadata = IdentityInfo {
        img_name: spec.name.clone(),
        img_version: spec.version.clone(),
        build_info: BuildInfo {
            build_time: rfc3339_utc(spec.source_date_epoch),
            build_tool: "kv-packager".into(),
            build_tool_version: env!("CARGO_PKG_VERSION").into(),
            img_os: "linux".into(),
            img_kernel: kernel_version(spec.kernel_config.as_deref()),
        },
        docker_info: serde_json::Value::Null,
        custom_info: serde_json::json!({ "SourceDateEpoch": spec.source_date_epoch }),
    };
    let metadata = serde_json::to_vec(&metadata)?;
    let kernel_len =
        fs::metadata(&spec.kernel).with_context(|| format!("--kernel {}", spec.kernel.display()))?.len();

    let tmp = partial_path(out);
    let file = File::create(&tmp)
        .with_context(|| format!("--out {}: cannot create {}", out.display(), tmp.display()))?;
    let result = (|| -> Result<Measurements> {
        let flags = if spec.arch == Arch::Aarch64 { eif::format::FLAG_ARCH_ARM64 } else { 0 };
        let mut w = EifWriter::new(BufWriter::with_capacity(1 << 20, file), flags)?;
        let kernel =
            File::open(&spec.kernel).with_context(|| format!("--kernel {}", spec.kernel.display()))?;
        w.section_from_reader(SectionKind::Kernel, kernel_len, kernel)?;
        w.section_bytes(SectionKind::Cmdline, spec.cmdline.as_bytes())?;
        w.section_bytes(SectionKind::Metadata, &metadata)?;
        for (archive, step) in [(&boot, "bootstrap"), (&app, "rootfs")] {
            let bar = progress.bytes(archive.size(), step);
            w.section(SectionKind::Ramdisk, archive.size(), |sink| {
                archive.write_to(&mut bar.wrap_write(sink))
            })?;
            bar.finish_and_clear();
        }
        if let Some((cert, key)) = &spec.signing {
            let section = crate::eif::signature::sign_pcr0(cert, key, &w.pcr0_so_far())
                .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
            let der = crate::eif::signature::pem_to_der(cert).map_err(|e| anyhow::anyhow!("signing: {e}"))?;
            w.set_certificate_der(&der);
            w.section_bytes(SectionKind::Signature, &section)?;
        }
        let (buf, m) = w.finish()?;
        let f = buf.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(m)
    })();
    let measurements = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e.context(format!("building {}", out.display())));
        }
    };
    fs::rename(&tmp, out)
        .with_context(|| format!("--out {}: cannot rename {} into place", out.display(), tmp.display()))?;
    let size = fs::metadata(out)?.len();
    Ok(BuildReport {
        output: out.to_path_buf(),
        path: "native",
        measurements,
        size,
        bootstrap_entries: boot.len(),
        app_entries: app.len(),
    })
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Looks a program up on `PATH` (no shell involved).
pub fn find_in_path(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var?).map(|d| d.join(program)).find(|p| {
        fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

/// The nitro-cli path: `nitro-cli build-enclave --docker-uri IMAGE --output-file OUT`, its
/// measurements parsed from stdout and checked against our own reading of the image.
pub fn build_with_nitro_cli(docker_uri: &str, out: &Path) -> Result<BuildReport> {
    let path_var = std::env::var_os("PATH");
    let nitro = find_in_path("nitro-cli", path_var.as_deref());
    let docker = find_in_path("docker", path_var.as_deref());
    let missing: Vec<&str> = [("nitro-cli", &nitro), ("docker", &docker)]
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| *n)
        .collect();
    let Some(nitro) = nitro.filter(|_| missing.is_empty()) else {
        bail!(
            "--docker-uri {docker_uri}: needs nitro-cli and docker on PATH, not found: {} \
             (install aws-nitro-enclaves-cli on an enclave-enabled parent instance, or use the \
             native path: --kernel/--cmdline/--init or --blobs DIR, with --rootfs DIR)",
            missing.join(", ")
        );
    };
    let output = Command::new(&nitro)
        .args(["build-enclave", "--docker-uri", docker_uri, "--output-file"])
        .arg(out)
        .output()
        .with_context(|| format!("running {}", nitro.display()))?;
    if !output.status.success() {
        bail!(
            "nitro-cli build-enclave --docker-uri {docker_uri} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let reported = parse_nitro_cli_measurements(&output.stdout)?;
    let ours = eif::describe(out, true)?;
    if ours.measurements.as_map() != reported.as_map() {
        bail!(
            "nitro-cli reported PCRs that differ from the image it wrote ({}): nitro-cli {:?}, read back {:?}",
            out.display(),
            reported.as_map(),
            ours.measurements.as_map()
        );
    }
    Ok(BuildReport {
        output: out.to_path_buf(),
        path: "nitro-cli",
        measurements: reported,
        size: ours.file_size,
        bootstrap_entries: 0,
        app_entries: 0,
    })
}

/// nitro-cli prints `{"Measurements": {"HashAlgorithm": ..., "PCR0": ...}}` on stdout.
pub fn parse_nitro_cli_measurements(stdout: &[u8]) -> Result<Measurements> {
    #[derive(serde::Deserialize)]
    struct Out {
        #[serde(rename = "Measurements")]
        measurements: Measurements,
    }
    let text = String::from_utf8_lossy(stdout);
    // nitro-cli may print progress lines before the JSON document.
    let start = text.find('{').context("nitro-cli printed no JSON measurements")?;
    let parsed: Out = serde_json::from_str(&text[start..]).context("nitro-cli's measurements JSON")?;
    for (k, v) in parsed.measurements.as_map() {
        if v.len() != 96 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("nitro-cli's measurements: {k} is not 48 bytes of hex: {v:?}");
        }
    }
    Ok(parsed.measurements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_accepts_json_and_words_and_refuses_newlines() {
        assert_eq!(parse_cmd("/bin/kv --port 1").unwrap(), ["/bin/kv", "--port", "1"]);
        assert_eq!(parse_cmd(r#"["/bin/kv", "a b"]"#).unwrap(), ["/bin/kv", "a b"]);
        assert!(parse_cmd("  ").is_err());
        assert!(parse_cmd(r#"["a\nb"]"#).is_err());
        assert!(parse_cmd("[1]").is_err());
        assert_eq!(cmd_file(&["/bin/kv".into(), "x".into()]), b"/bin/kv\nx\n");
    }

    #[test]
    fn env_parsing() {
        assert_eq!(parse_env("A_1=x=y").unwrap(), ("A_1".into(), "x=y".into()));
        assert_eq!(parse_env("EMPTY=").unwrap(), ("EMPTY".into(), String::new()));
        for bad in ["noequals", "=v", "A-B=1", "A=1\n2"] {
            assert!(parse_env(bad).is_err(), "{bad}");
        }
        assert_eq!(env_file(&[("A".into(), "1".into()), ("B".into(), "".into())]), b"A=1\nB=\n");
    }

    #[test]
    fn nitro_cli_output_is_parsed_and_checked() {
        let pcr = "ab".repeat(48);
        let out = format!(
            "Start building the Enclave Image...\n{{\"Measurements\":{{\"HashAlgorithm\":\"Sha384 {{ ... }}\",\"PCR0\":\"{pcr}\",\"PCR1\":\"{pcr}\",\"PCR2\":\"{pcr}\"}}}}\n"
        );
        let m = parse_nitro_cli_measurements(out.as_bytes()).unwrap();
        assert_eq!(m.pcr0, pcr);
        assert!(
            parse_nitro_cli_measurements(
                b"{\"Measurements\":{\"HashAlgorithm\":\"x\",\"PCR0\":\"zz\",\"PCR1\":\"\",\"PCR2\":\"\"}}"
            )
            .is_err()
        );
        assert!(parse_nitro_cli_measurements(b"no json").is_err());
    }

    #[test]
    fn kernel_version_from_config_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bzImage.config");
        fs::write(
            &p,
            "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.12.38 Kernel Configuration\n",
        )
        .unwrap();
        assert_eq!(kernel_version(Some(&p)), "6.12.38");
        assert_eq!(kernel_version(None), "unknown");
    }
}
