//! The command lines of QEMU's `nitro-enclave` machine and of `vhost-device-vsock`: pure
//! functions of the launch parameters.
//!
//! Why each QEMU option:
//! - `-M nitro-enclave,vsock=c0,id=NAME,acpi=on`: the machine loads the EIF itself and measures
//!   it as Nitro does; `vsock=` names the chardev of its vhost-user-vsock device; ACPI on because
//!   Debian's modular kernel finds virtio-mmio devices only through ACPI.
//! - `-append`: added to the EIF's command line after the measurement (PCRs unchanged).
//!   `ENCLAVE_INIT_PARENT_CID=2`: the emulated backend forwards only guest connections to CID 2,
//!   Nitro's parent is CID 3; our enclave-init reads this variable. `tsc_early_khz`: without it a
//!   TCG guest sometimes hangs calibrating the TSC.
//! - `-nographic -no-reboot`: the serial console on stdout; a guest reboot (init powering off,
//!   a kernel panic with `panic=-1`) ends QEMU instead of booting again.

use std::ffi::OsString;
use std::path::Path;

/// The parent's CID as the guest must address it behind the emulated vsock backend.
pub const EMULATED_PARENT_CID: u32 = 2;
/// The chardev id tying the machine's vsock device to the backend socket.
const VSOCK_CHARDEV: &str = "c0";

/// Firmware directories (SeaBIOS, and QEMU's option ROMs from Debian's qemu-system-data).
pub const FIRMWARE_DIRS: [&str; 2] = ["/usr/share/seabios", "/usr/share/qemu"];

/// What QEMU needs to boot one enclave.
#[derive(Clone, Debug)]
pub struct QemuPlan<'a> {
    pub name: &'a str,
    pub eif: &'a Path,
    pub memory_mib: u64,
    pub cpu_count: u32,
    pub backend_socket: &'a Path,
    /// The host's TSC frequency, when known.
    pub tsc_khz: Option<u64>,
}

/// The words appended to the EIF's kernel command line.
pub fn kernel_append(tsc_khz: Option<u64>) -> String {
    let mut s = format!("ENCLAVE_INIT_PARENT_CID={EMULATED_PARENT_CID}");
    if let Some(khz) = tsc_khz {
        s.push_str(&format!(" tsc_early_khz={khz}"));
    }
    s
}

/// QEMU's arguments (without the program). Paths must not contain commas (QEMU's option
/// syntax); the caller checks that.
pub fn qemu_args(plan: &QemuPlan) -> Vec<OsString> {
    let mut chardev = OsString::from(format!("socket,id={VSOCK_CHARDEV},path="));
    chardev.push(plan.backend_socket);
    let mut args: Vec<OsString> = vec![
        "-M".into(),
        format!("nitro-enclave,vsock={VSOCK_CHARDEV},id={},acpi=on", plan.name).into(),
        "-m".into(),
        format!("{}M", plan.memory_mib).into(),
        "-smp".into(),
        plan.cpu_count.to_string().into(),
        "-kernel".into(),
        plan.eif.into(),
        "-chardev".into(),
        chardev,
        "-nographic".into(),
        "-no-reboot".into(),
    ];
    for dir in FIRMWARE_DIRS {
        args.push("-L".into());
        args.push(dir.into());
    }
    args.push("-append".into());
    args.push(kernel_append(plan.tsc_khz).into());
    args
}

/// `vhost-device-vsock`'s arguments: one VM in Unix-socket mode. Paths must not contain
/// commas (the `--vm` value is comma-separated key=value pairs).
pub fn backend_args(cid: u32, backend_socket: &Path, vsock_uds: &Path) -> Vec<OsString> {
    let mut vm = OsString::from(format!("guest-cid={cid},socket="));
    vm.push(backend_socket);
    vm.push(",uds-path=");
    vm.push(vsock_uds);
    vec!["--vm".into(), vm]
}

/// The TSC frequency in kHz from `/proc/cpuinfo`'s first `cpu MHz` line, rounded.
pub fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split_once(':')?.1.trim().parse().ok()?;
    (mhz.is_finite() && mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn qemu_command_line() {
        let plan = QemuPlan {
            name: "kv-server",
            eif: Path::new("/srv/kv.eif"),
            memory_mib: 512,
            cpu_count: 2,
            backend_socket: Path::new("/run/enclave-runner/kv-server/backend.sock"),
            tsc_khz: Some(2_596_122),
        };
        assert_eq!(
            strings(qemu_args(&plan)),
            [
                "-M",
                "nitro-enclave,vsock=c0,id=kv-server,acpi=on",
                "-m",
                "512M",
                "-smp",
                "2",
                "-kernel",
                "/srv/kv.eif",
                "-chardev",
                "socket,id=c0,path=/run/enclave-runner/kv-server/backend.sock",
                "-nographic",
                "-no-reboot",
                "-L",
                "/usr/share/seabios",
                "-L",
                "/usr/share/qemu",
                "-append",
                "ENCLAVE_INIT_PARENT_CID=2 tsc_early_khz=2596122",
            ]
        );
    }

    #[test]
    fn append_without_a_known_tsc_frequency() {
        assert_eq!(kernel_append(None), "ENCLAVE_INIT_PARENT_CID=2");
    }

    #[test]
    fn backend_command_line() {
        let args = backend_args(16, Path::new("/d/backend.sock"), Path::new("/d/vm.vsock"));
        assert_eq!(strings(args), ["--vm", "guest-cid=16,socket=/d/backend.sock,uds-path=/d/vm.vsock"]);
    }

    #[test]
    fn tsc_from_cpuinfo() {
        let info = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\ncpu MHz\t\t: 2596.122\ncache size\t: 1 KB\n\
                    processor\t: 1\ncpu MHz\t\t: 1200.000\n";
        assert_eq!(tsc_khz_from_cpuinfo(info), Some(2_596_122));
        assert_eq!(tsc_khz_from_cpuinfo("cpu MHz : 2999.9996"), Some(3_000_000));
        assert_eq!(tsc_khz_from_cpuinfo("processor : 0\n"), None);
        assert_eq!(tsc_khz_from_cpuinfo("cpu MHz : fast\n"), None);
        assert_eq!(tsc_khz_from_cpuinfo("cpu MHz : 0\n"), None);
    }
}
