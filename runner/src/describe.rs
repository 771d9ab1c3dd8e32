//! nitro-cli's JSON output, field for field (names and order as `nitro-cli run-enclave`,
//! `describe-enclaves` and `terminate-enclave` print them, pretty-printed), built from a
//! [`Record`]. Fields nitro-cli does not have are local extras under names nitro-cli does not use.

use crate::state::{EnclaveDir, Lifecycle, Record};
use packaging::eif::Measurements;
use serde::Serialize;
use std::path::PathBuf;

/// `run-enclave`'s output.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    #[serde(rename = "EnclaveName")]
    pub name: String,
    #[serde(rename = "EnclaveID")]
    pub enclave_id: String,
    /// The monitor: the process holding the enclave's resources, like nitro-cli's enclave process.
    #[serde(rename = "ProcessID")]
    pub process_id: u32,
    #[serde(rename = "EnclaveCID")]
    pub cid: u64,
    #[serde(rename = "NumberOfCPUs")]
    pub cpu_count: u32,
    #[serde(rename = "CPUIDs")]
    pub cpu_ids: Vec<u32>,
    #[serde(rename = "MemoryMiB")]
    pub memory_mib: u64,
}

/// One element of `describe-enclaves`' array.
#[derive(Clone, Debug, Serialize)]
pub struct EnclaveInfo {
    #[serde(flatten)]
    pub run: RunInfo,
    #[serde(rename = "State")]
    pub state: &'static str,
    #[serde(rename = "Flags")]
    pub flags: &'static str,
    #[serde(rename = "Measurements")]
    pub measurements: Measurements,
    /// Local extra: the backend's Unix socket (`vsock-hybrid://<path>:<port>` reaches the guest;
    /// guest connections to the parent's port P land on `<path>_P`).
    #[serde(rename = "VsockUdsPath")]
    pub vsock_uds: PathBuf,
    /// Local extra: the captured serial console.
    #[serde(rename = "ConsolePath")]
    pub console: PathBuf,
}

/// `terminate-enclave`'s output.
#[derive(Clone, Debug, Serialize)]
pub struct TerminateInfo {
    #[serde(rename = "EnclaveName")]
    pub name: String,
    #[serde(rename = "EnclaveID")]
    pub enclave_id: String,
    #[serde(rename = "Terminated")]
    pub terminated: bool,
}

/// The vCPU ids shown for an enclave of `count` vCPUs. There is no host CPU pinning under QEMU:
/// these are the guest's own CPU numbers.
pub fn cpu_ids(count: u32) -> Vec<u32> {
    (0..count).collect()
}

pub fn run_info(record: &Record) -> RunInfo {
    let l = &record.launch;
    RunInfo {
        name: l.name.clone(),
        enclave_id: l.enclave_id.clone(),
        process_id: record.status.monitor.map_or(0, |m| m.pid),
        cid: u64::from(l.cid),
        cpu_count: l.cpu_count,
        cpu_ids: cpu_ids(l.cpu_count),
        memory_mib: l.memory_mib,
    }
}

pub fn enclave_info(dir: &EnclaveDir, record: &Record) -> EnclaveInfo {
    EnclaveInfo {
        run: run_info(record),
        state: match record.status.state {
            // A live enclave still booting is shown as nitro-cli shows one during run-enclave.
            Lifecycle::Booting | Lifecycle::Running => "RUNNING",
            other => other.as_str(),
        },
        flags: if record.launch.debug_mode { "DEBUG_MODE" } else { "NONE" },
        measurements: record.launch.measurements.clone(),
        vsock_uds: record.launch.vsock_uds.clone(),
        console: dir.console_log(),
    }
}

pub fn terminate_info(record: &Record) -> TerminateInfo {
    TerminateInfo {
        name: record.launch.name.clone(),
        enclave_id: record.launch.enclave_id.clone(),
        terminated: true,
    }
}

/// Pretty JSON as nitro-cli prints it (two-space indent).
pub fn to_pretty<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("the output types always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Launch, ProcessRef};

    fn record(debug_mode: bool) -> Record {
        let mut r = Record::new(Launch {
            name: "kv-server".into(),
            enclave_id: "i-local-enc-0123456789abcdef".into(),
            cid: 16,
            cpu_count: 2,
            memory_mib: 512,
            debug_mode,
            eif_path: "/x.eif".into(),
            measurements: Measurements {
                hash_algorithm: packaging::eif::pcr::HASH_ALGORITHM.into(),
                pcr0: "aa".into(),
                pcr1: "bb".into(),
                pcr2: "cc".into(),
                pcr8: None,
            },
            vsock_uds: "/run/enclave-runner/kv-server/vm.vsock".into(),
            boot_timeout_secs: 120,
            qemu: "/q".into(),
            vhost_vsock: "/v".into(),
        });
        r.status.state = Lifecycle::Running;
        r.status.monitor = Some(ProcessRef { pid: 4242, start_time: 1 });
        r
    }

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    // Key order is checked on the printed text: serde_json's Value would sort the keys.
    fn key_order(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("  \"") || l.starts_with("    \""))
            .filter_map(|l| l.trim().strip_prefix('"')?.split_once('"').map(|(k, _)| k.to_string()))
            .collect()
    }

    #[test]
    fn run_enclave_output_has_nitro_clis_fields_in_order() {
        let text = to_pretty(&run_info(&record(false)));
        assert_eq!(
            key_order(&text),
            ["EnclaveName", "EnclaveID", "ProcessID", "EnclaveCID", "NumberOfCPUs", "CPUIDs", "MemoryMiB"]
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ProcessID"], 4242);
        assert_eq!(v["EnclaveCID"], 16);
        assert_eq!(v["CPUIDs"], serde_json::json!([0, 1]));
        assert_eq!(v["MemoryMiB"], 512);
    }

    #[test]
    fn describe_enclaves_element_has_nitro_clis_fields_then_the_local_extras() {
        let dir = EnclaveDir::new("/run/enclave-runner/kv-server".into());
        let text = to_pretty(&vec![enclave_info(&dir, &record(true))]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let e = &v[0];
        assert_eq!(e["State"], "RUNNING");
        assert_eq!(e["Flags"], "DEBUG_MODE");
        assert_eq!(e["Measurements"]["HashAlgorithm"], "Sha384 { ... }");
        assert_eq!(keys(&e["Measurements"]), ["HashAlgorithm", "PCR0", "PCR1", "PCR2"]);
        assert_eq!(e["VsockUdsPath"], "/run/enclave-runner/kv-server/vm.vsock");
        assert_eq!(e["ConsolePath"], "/run/enclave-runner/kv-server/console.log");
        let order: Vec<String> =
            key_order(&text).into_iter().filter(|k| !k.starts_with("PCR") && k != "HashAlgorithm").collect();
        assert_eq!(
            order,
            [
                "EnclaveName",
                "EnclaveID",
                "ProcessID",
                "EnclaveCID",
                "NumberOfCPUs",
                "CPUIDs",
                "MemoryMiB",
                "State",
                "Flags",
                "Measurements",
                "VsockUdsPath",
                "ConsolePath"
            ]
        );
        assert_eq!(enclave_info(&dir, &record(false)).flags, "NONE");
    }

    #[test]
    fn terminate_output() {
        let text = to_pretty(&terminate_info(&record(false)));
        assert_eq!(key_order(&text), ["EnclaveName", "EnclaveID", "Terminated"]);
        assert!(text.contains("\"Terminated\": true"));
    }
}
