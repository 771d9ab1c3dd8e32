//! The boot sequence as data: a pure function builds the list of steps, `exec` performs them.
//! Keeping the order here makes it testable without a kernel.
//!
//! Order and why:
//! 1. devtmpfs on /dev, then the console: everything after can report errors.
//! 2. kernel modules from the bootstrap ramdisk: `nsm.ko` (the NSM device for attestation), then
//!    `modules/NN-*.ko` in name order (virtio-mmio and vsock on kernels that build them as
//!    modules) — vsock must exist before the heartbeat.
//! 3. heartbeat to the parent: nitro-cli reports a boot failure without it.
//! 4. read `/env` and `/cmd` (they live in the initramfs root, outside the new root), and give the
//!    application `ENCLAVE_PARENT_CID` (the parent CID init used) unless `/env` sets it.
//! 5. switch root to `/rootfs`, then the application's file systems, `/dev` again inside it.
//! 6. `lo` up (the enclave has no other network device; local listeners need loopback).
//! 7. run the application, reap every child until it exits, then power off.

use crate::{config, wire};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub data: Option<&'static str>,
    /// Create the mount point first (for points under /dev, which devtmpfs does not have).
    pub mkdir: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Mount devtmpfs; "already mounted" (EBUSY, CONFIG_DEVTMPFS_MOUNT) is fine.
    MountDevtmpfs {
        target: &'static str,
    },
    OpenConsole {
        path: &'static str,
    },
    /// `finit_module` the file, then unlink it (frees ramdisk memory). EEXIST is fine.
    LoadModule {
        path: String,
    },
    Heartbeat {
        cid: u32,
        port: u32,
        byte: u8,
    },
    ReadConfig {
        env: &'static str,
        cmd: &'static str,
    },
    /// Set `key=value` in the application's environment unless `/env` sets `key`.
    DefaultAppEnv {
        key: &'static str,
        value: String,
    },
    SwitchRoot {
        new_root: &'static str,
    },
    Mount(MountSpec),
    Symlink {
        link: &'static str,
        target: &'static str,
    },
    LoopbackUp,
    /// Spawn the application from the config read earlier; reap all children until it exits.
    RunApp,
    PowerOff,
}

/// What the bootstrap ramdisk holds, as found at boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RamdiskContents {
    pub nsm_ko: bool,
    /// File names under `/modules`.
    pub modules: Vec<String>,
}

const fn fs(source: &'static str, target: &'static str, fstype: &'static str) -> MountSpec {
    MountSpec { source, target, fstype, nosuid: true, nodev: true, noexec: true, data: None, mkdir: false }
}

/// `parent_cid`: the parent as seen from the enclave (heartbeat, and the application's
/// `ENCLAVE_PARENT_CID`); `heartbeat: false` skips the heartbeat (plain-VM tests only).
pub fn boot_plan(parent_cid: u32, heartbeat: bool, found: &RamdiskContents) -> Vec<Step> {
    let mut steps = vec![Step::MountDevtmpfs { target: "/dev" }, Step::OpenConsole { path: "/dev/console" }];
    if found.nsm_ko {
        steps.push(Step::LoadModule { path: "/nsm.ko".into() });
    }
    let mut modules: Vec<&String> = found.modules.iter().filter(|m| m.ends_with(".ko")).collect();
    modules.sort();
    steps.extend(modules.into_iter().map(|m| Step::LoadModule { path: format!("/modules/{m}") }));
    if heartbeat {
        steps.push(Step::Heartbeat {
            cid: parent_cid,
            port: wire::HEARTBEAT_PORT,
            byte: wire::HEARTBEAT_BYTE,
        });
    }
    steps.push(Step::ReadConfig { env: "/env", cmd: "/cmd" });
    steps.push(Step::DefaultAppEnv { key: config::APP_PARENT_CID_VAR, value: parent_cid.to_string() });
    steps.push(Step::SwitchRoot { new_root: "/rootfs" });
    steps.push(Step::MountDevtmpfs { target: "/dev" });
    steps.push(Step::Mount(fs("proc", "/proc", "proc")));
    steps.push(Step::Mount(fs("sysfs", "/sys", "sysfs")));
    steps.push(Step::Mount(MountSpec { data: Some("mode=1777"), ..fs("tmpfs", "/tmp", "tmpfs") }));
    steps.push(Step::Mount(MountSpec { data: Some("mode=0755"), ..fs("tmpfs", "/run", "tmpfs") }));
    steps.push(Step::Mount(MountSpec { mkdir: true, nodev: false, ..fs("devpts", "/dev/pts", "devpts") }));
    steps.push(Step::Mount(MountSpec { mkdir: true, ..fs("shm", "/dev/shm", "tmpfs") }));
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink { link, target });
    }
    steps.push(Step::LoopbackUp);
    steps.push(Step::RunApp);
    steps.push(Step::PowerOff);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(steps: &[Step], pred: impl Fn(&Step) -> bool) -> usize {
        steps.iter().position(pred).expect("step present")
    }

    #[test]
    fn order_of_the_boot() {
        let found = RamdiskContents {
            nsm_ko: true,
            modules: vec![
                "01-vsock.ko".into(),
                "00-virtio_mmio.ko".into(),
                "README".into(),
                "02-vmw_vsock_virtio_transport.ko".into(),
            ],
        };
        let s = boot_plan(3, true, &found);
        assert_eq!(s[0], Step::MountDevtmpfs { target: "/dev" });
        assert_eq!(s[1], Step::OpenConsole { path: "/dev/console" });
        let loads: Vec<_> = s
            .iter()
            .filter_map(|x| match x {
                Step::LoadModule { path } => Some(path.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            loads,
            [
                "/nsm.ko",
                "/modules/00-virtio_mmio.ko",
                "/modules/01-vsock.ko",
                "/modules/02-vmw_vsock_virtio_transport.ko"
            ]
        );
        let last_module = s.iter().rposition(|x| matches!(x, Step::LoadModule { .. })).unwrap();
        let hb = pos(&s, |x| matches!(x, Step::Heartbeat { .. }));
        let cfg = pos(&s, |x| matches!(x, Step::ReadConfig { .. }));
        let sw = pos(&s, |x| matches!(x, Step::SwitchRoot { .. }));
        let proc_ = pos(&s, |x| matches!(x, Step::Mount(m) if m.target == "/proc"));
        let lo = pos(&s, |x| matches!(x, Step::LoopbackUp));
        let app = pos(&s, |x| matches!(x, Step::RunApp));
        let parent_env = pos(&s, |x| matches!(x, Step::DefaultAppEnv { .. }));
        assert!(last_module < hb && hb < cfg && cfg < sw && sw < proc_ && proc_ < lo && lo < app);
        assert!(cfg < parent_env && parent_env < app);
        assert_eq!(s[parent_env], Step::DefaultAppEnv { key: "ENCLAVE_PARENT_CID", value: "3".into() });
        assert_eq!(s.last(), Some(&Step::PowerOff));
        assert_eq!(s[hb], Step::Heartbeat { cid: 3, port: 9000, byte: 0xB7 });
        // /dev is mounted again inside the new root, before anything under /dev.
        let dev2 = s.iter().rposition(|x| matches!(x, Step::MountDevtmpfs { .. })).unwrap();
        let pts = pos(&s, |x| matches!(x, Step::Mount(m) if m.target == "/dev/pts"));
        assert!(sw < dev2 && dev2 < pts);
    }

    #[test]
    fn no_heartbeat_only_drops_that_step() {
        let with = boot_plan(3, true, &RamdiskContents::default());
        let without = boot_plan(3, false, &RamdiskContents::default());
        let filtered: Vec<_> = with.into_iter().filter(|s| !matches!(s, Step::Heartbeat { .. })).collect();
        assert_eq!(filtered, without);
    }

    #[test]
    fn without_modules_and_with_another_parent() {
        let s = boot_plan(17, true, &RamdiskContents::default());
        assert!(!s.iter().any(|x| matches!(x, Step::LoadModule { .. })));
        assert!(s.contains(&Step::Heartbeat { cid: 17, port: 9000, byte: 0xB7 }));
        assert!(s.contains(&Step::DefaultAppEnv { key: "ENCLAVE_PARENT_CID", value: "17".into() }));
        for target in ["/proc", "/sys", "/tmp", "/run"] {
            assert!(
                s.iter().any(|x| matches!(x, Step::Mount(m) if m.target == target && m.noexec)),
                "{target}"
            );
        }
    }
}
