//! The boot smoke test of a new image, before any copy, share or SSM write (`kv-ami import` and
//! `kv-ami bake`, and `kv-ami smoke-test` alone): what it launches, the report it reads and how
//! it judges it, and its error. The AWS flow is [`crate::smoke_test`].
//!
//! One instance from the new AMI in the build region: an enclave-capable type, EnclaveOptions
//! on, IMDSv2 required, a security group with no ingress, the tags `kv-ami:role = smoke-test`,
//! the content key and `kv-ami:run = smoke-<key>-<ami>`. Its user data is the fleet's
//! instance-init launcher, unchanged, run with `KV_AMI_SMOKE_TEST=1`; when it ends (either way)
//! the launcher tags its own instance with the report ([`STATUS_TAG`], [`RESULT_TAG`],
//! [`PCR_TAGS`]). kv-ami waits (bounded) for the report, then requires: the launcher exited 0,
//! the enclave RUNNING with the bundle manifest's PCR0/1/2, vsockproxy's /readyz answered, and
//! envoy's /healthcheck said SERVING. On any failure the console output is fetched into the
//! error. The instance and its group are on the run's cleanup stack from the start (the
//! instance also by its run tag, so one whose RunInstances answer was lost is found too).
//!
//! Why instance tags, as for the bake's signal: nothing more to create or clean up (they go with
//! the instance), DescribeInstances sees state and report at once, and the instance role can be
//! held to these tag keys on instances tagged `kv-ami:role = smoke-test`. One tag value holds at
//! most 256 characters, so the three 96-digit PCRs get a tag each.
//!
//! The run tag is derived from the content key and the AMI id, not the time: a re-run after a
//! run that was killed before its cleanup finds the test instance and waits for it again
//! instead of launching a second one (and the cleanup terminates it in the end).

use crate::instances::{self, ROLE_SMOKE_TEST, ROLE_TAG, RUN_TAG};
use crate::spec::{AmiSpec, CONTENT_KEY_TAG, SmokeTest};
use packaging::eif::Measurements;
use std::time::Duration;

/// `done` once the launcher has written its report.
pub const STATUS_TAG: &str = "kv-ami:smoke-status";
/// The launcher's result: `exit=0 step=8 enclave=RUNNING readyz=true health=SERVING` (no
/// quotes or commas: it travels inside the `--tags` JSON of `aws ec2 create-tags`).
pub const RESULT_TAG: &str = "kv-ami:smoke-result";
/// PCR0, PCR1, PCR2 as `nitro-cli describe-enclaves` reports them (`Measurements`).
pub const PCR_TAGS: [&str; 3] = ["kv-ami:smoke-pcr0", "kv-ami:smoke-pcr1", "kv-ami:smoke-pcr2"];
/// The line that ends the launcher's quoted heredoc in the user data.
const LAUNCHER_EOF: &str = "KV_AMI_LAUNCHER_EOF";
/// RunInstances takes at most 16 KiB of user data (before base64; here after gzip).
const MAX_USER_DATA: usize = 16 * 1024;
/// How much of the console output goes into an error.
const CONSOLE_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The report came and a check failed; every failed check is named.
    #[error(
        "{region}: smoke test of {ami} on {instance} failed: {}{}",
        problems.join("; "),
        console_tail(console)
    )]
    Failed { region: String, ami: String, instance: String, problems: Vec<String>, console: Option<String> },
    /// No report within the bound (the launcher hangs, or never ran).
    #[error(
        "{region}: smoke test of {ami} on {instance}: step wait-for-report: no {STATUS_TAG} tag after {checks} checks ({}s){}",
        waited.as_secs(),
        console_tail(console)
    )]
    NoReport {
        region: String,
        ami: String,
        instance: String,
        checks: u32,
        waited: Duration,
        console: Option<String>,
    },
    /// The instance stopped or went away before reporting.
    #[error(
        "{region}: smoke test of {ami} on {instance}: step wait-for-report: {reason}{}",
        console_tail(console)
    )]
    Gone { region: String, ami: String, instance: String, reason: String, console: Option<String> },
}

fn console_tail(console: &Option<String>) -> String {
    match console {
        None => "; console output: none yet".into(),
        Some(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(CONSOLE_LINES)..];
            format!("; console output (last {} lines):\n{}", tail.len(), tail.join("\n"))
        }
    }
}

/// What the test needs, read and checked before any AWS call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The script ([`user_data`]), gzip-compressed: what RunInstances sends.
    pub user_data: Vec<u8>,
    /// PCR0, PCR1, PCR2 of the bundle manifest.
    pub pcrs: [String; 3],
}

/// None when the run does not smoke-test (`--skip-smoke-test`, or no `[smoke_test]`).
pub fn prepare(spec: &AmiSpec, pcrs: &Measurements) -> Result<Option<Prepared>, String> {
    let Some(t) = spec.smoke_test.as_ref().filter(|_| spec.smoke_test_on()) else { return Ok(None) };
    let launcher = std::fs::read_to_string(&t.launcher)
        .map_err(|e| format!("smoke_test.launcher: {}: {e}", t.launcher.display()))?;
    let script =
        user_data(&launcher).map_err(|e| format!("smoke_test.launcher: {}: {e}", t.launcher.display()))?;
    let user_data = gzip(&script);
    if user_data.len() > MAX_USER_DATA {
        return Err(format!(
            "smoke_test.launcher: {}: {} bytes of user data after gzip; RunInstances takes at most {MAX_USER_DATA}",
            t.launcher.display(),
            user_data.len()
        ));
    }
    Ok(Some(Prepared { user_data, pcrs: [pcrs.pcr0.clone(), pcrs.pcr1.clone(), pcrs.pcr2.clone()] }))
}

/// gzip (cloud-init unpacks gzip user data before it runs it).
pub fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = z.write_all(text.as_bytes());
    z.finish().unwrap_or_default()
}

/// The test instance's user data (before gzip): the launcher, byte for byte, in a quoted heredoc, run with
/// `KV_AMI_SMOKE_TEST=1` (which makes it write its report tags when it ends).
pub fn user_data(launcher: &str) -> Result<String, String> {
    if !launcher.starts_with("#!/bin/bash") {
        return Err("not the rendered instance-init launcher (no #!/bin/bash line)".into());
    }
    if !launcher.contains("KV_AMI_SMOKE_TEST") {
        return Err("this launcher writes no smoke-test report (no KV_AMI_SMOKE_TEST): render it from the current instance_init.tftpl".into());
    }
    if launcher.lines().any(|l| l == LAUNCHER_EOF) {
        return Err(format!("contains the line {LAUNCHER_EOF}, which would end its heredoc"));
    }
    let ud = format!(
        "#!/bin/bash\n# kv-ami smoke test: the fleet's instance-init launcher, unchanged, with KV_AMI_SMOKE_TEST=1\n\
         set -euo pipefail\ninstall -d -m 0700 /run/kv-ami\n\
         cat >/run/kv-ami/instance-init.sh <<'{LAUNCHER_EOF}'\n{}{}{LAUNCHER_EOF}\n\
         KV_AMI_SMOKE_TEST=1 exec bash /run/kv-ami/instance-init.sh\n",
        launcher,
        if launcher.ends_with('\n') { "" } else { "\n" }
    );
    Ok(ud)
}

/// The launcher embedded in [`user_data`] (tests).
pub fn launcher_part(user_data: &str) -> Option<&str> {
    let start = user_data.find(&format!("<<'{LAUNCHER_EOF}'\n"))? + LAUNCHER_EOF.len() + 5;
    let end = user_data.rfind(&format!("\n{LAUNCHER_EOF}\n"))?;
    Some(&user_data[start..=end])
}

/// The run tag of the test instance of this image.
pub fn run_id(content_key: &str, ami: &str) -> String {
    format!("smoke-{}-{ami}", &content_key[..content_key.len().min(12)])
}

pub fn security_group_name(run_id: &str) -> String {
    format!("kv-ami-{run_id}")
}

/// The launcher's report as read from the instance's tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub result: Option<String>,
    pub pcrs: [Option<String>; 3],
}

/// The launcher's result, parsed; a missing key reads as empty (and fails its check).
#[derive(Debug, Default)]
struct LauncherResult {
    exit: Option<i64>,
    step: Option<u32>,
    enclave: String,
    readyz: bool,
    health: String,
}

fn parse_result(text: &str) -> Result<LauncherResult, String> {
    let mut r = LauncherResult::default();
    for pair in text.split_whitespace() {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        match k {
            "exit" => r.exit = Some(v.parse().map_err(|_| format!("exit={v:?} is not a number"))?),
            "step" => r.step = v.parse().ok(),
            "enclave" => r.enclave = v.to_string(),
            "readyz" => r.readyz = v == "true",
            "health" => r.health = v.to_string(),
            _ => {}
        }
    }
    Ok(r)
}

/// Every check of the report, each failure naming its step; empty when the image passed.
pub fn judge(r: &Report, want: &[String; 3]) -> Vec<String> {
    let mut problems = Vec::new();
    let res = match r.result.as_deref().map(parse_result) {
        Some(Ok(res)) => res,
        Some(Err(e)) => return vec![format!("step report: {RESULT_TAG} is not the launcher's: {e}")],
        None => return vec![format!("step report: no {RESULT_TAG} tag")],
    };
    if res.enclave != "RUNNING" {
        problems.push(format!("step describe-enclaves: enclave state {:?}, want RUNNING", res.enclave));
    }
    for (i, (got, want)) in r.pcrs.iter().zip(want).enumerate() {
        match got {
            Some(g) if !g.is_empty() && g.eq_ignore_ascii_case(want) => {}
            Some(g) if !g.is_empty() => {
                problems.push(format!("step PCRs: PCR{i} is {g}, the bundle manifest says {want}"))
            }
            _ => problems.push(format!("step PCRs: PCR{i} not reported")),
        }
    }
    if !res.readyz {
        problems.push("step vsockproxy /readyz: never answered".into());
    }
    if res.health != "SERVING" {
        problems.push(format!("step envoy /healthcheck: {:?}, want SERVING", res.health));
    }
    if res.exit != Some(0) {
        let at = res.step.map(|s| format!(" at step {s}")).unwrap_or_default();
        let exit = res.exit.map_or("missing".to_string(), |e| e.to_string());
        problems.push(format!("step launcher: exit status {exit}{at}"));
    }
    problems
}

/// The report as the instance's tags carry it (None: not reported yet).
pub fn report_of(i: &aws_sdk_ec2::types::Instance) -> Option<Report> {
    instances::tag_of(i, STATUS_TAG)?;
    let t = |k| instances::tag_of(i, k).map(str::to_string);
    Some(Report { result: t(RESULT_TAG), pcrs: PCR_TAGS.map(t) })
}

/// Dry-run lines of [`crate::smoke_test::run`].
pub fn planned_lines(s: &AmiSpec, t: &SmokeTest, key: &str) -> Vec<String> {
    let r = &s.region;
    let run = run_id(key, "<ami>");
    let mut v = vec![format!(
        "{r} ec2:DescribeSecurityGroups name={} (reuse one left by an interrupted run)",
        security_group_name(&run)
    )];
    if let Some(sn) = &t.subnet_id {
        v.push(format!("{r} ec2:DescribeSubnets {sn} (its VPC)"));
    }
    v.push(format!(
        "{r} ec2:CreateSecurityGroup {} (no ingress) tag {ROLE_TAG}={ROLE_SMOKE_TEST}",
        security_group_name(&run)
    ));
    v.push(format!(
        "{r} ec2:DescribeInstances tag:{RUN_TAG}={run} (reuse a running one of an interrupted run)"
    ));
    v.push(format!(
        "{r} ec2:RunInstances image=<ami> type={} enclave=true imds=v2-required hop_limit=1 profile={} \
         user_data=launcher+KV_AMI_SMOKE_TEST=1 tags {ROLE_TAG}={ROLE_SMOKE_TEST},{CONTENT_KEY_TAG},{RUN_TAG}",
        t.instance_type, t.instance_profile
    ));
    v.push(format!(
        "{r} ec2:CreateTags instance+volume+security-group (the TagSpecifications of the two creates above, \
         authorised as CreateTags with ec2:CreateAction)"
    ));
    v.push(format!(
        "{r} ec2:DescribeInstances (until tag {STATUS_TAG}, at most {} checks every {} s)",
        t.report_attempts, t.report_interval_secs
    ));
    v.push(format!("{r} ec2:GetConsoleOutput (only on failure)"));
    v
}

/// Dry-run lines of the test instance's teardown (always).
pub fn planned_teardown(s: &AmiSpec, key: &str) -> Vec<String> {
    let r = &s.region;
    let run = run_id(key, "<ami>");
    vec![
        format!("{r} ec2:TerminateInstances smoke-test instance (always)"),
        format!(
            "{r} ec2:DescribeInstances (SDK waiter instance_terminated, at most {} s)",
            s.upload.max_wait_secs()
        ),
        format!("{r} ec2:DescribeInstances tag:{RUN_TAG}={run} + ec2:TerminateInstances (any other, always)"),
        format!("{r} ec2:DeleteSecurityGroup {} (always)", security_group_name(&run)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> [String; 3] {
        ["aa".repeat(48), "bb".repeat(48), "cc".repeat(48)]
    }

    fn good() -> Report {
        Report {
            result: Some("exit=0 step=8 enclave=RUNNING readyz=true health=SERVING".into()),
            pcrs: want().map(Some),
        }
    }

    #[test]
    fn judge_requires_running_pcrs_readyz_serving_and_exit_0() {
        assert!(judge(&good(), &want()).is_empty());
        let mut r = good();
        r.pcrs[0] = Some("00".repeat(48));
        let p = judge(&r, &want());
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("step PCRs: PCR0 is 0000") && p[0].contains(&"aa".repeat(48)), "{p:?}");
        let r = Report {
            result: Some("exit=1 step=7 enclave=RUNNING readyz=false health=NOT_SERVING".into()),
            ..good()
        };
        let p = judge(&r, &want()).join("; ");
        assert!(
            p.contains("/readyz: never answered")
                && p.contains("\"NOT_SERVING\"")
                && p.contains("exit status 1 at step 7"),
            "{p}"
        );
        assert!(judge(&Report { result: Some("{".into()), ..good() }, &want())[0].starts_with("step report"));
        // What the launcher writes when describe-enclaves and the health check said nothing.
        let r = Report { result: Some("exit=0 step=8 enclave= readyz=true health=".into()), ..good() };
        let p = judge(&r, &want()).join("; ");
        assert!(p.contains("enclave state \"\"") && p.contains("/healthcheck: \"\""), "{p}");
        assert!(judge(&Report { result: None, ..good() }, &want())[0].contains("no kv-ami:smoke-result"));
        let r = Report {
            result: Some("exit=0 enclave= readyz=true health=SERVING".into()),
            pcrs: [None, None, None],
        };
        let p = judge(&r, &want()).join("; ");
        assert!(p.contains("enclave state \"\"") && p.contains("PCR2 not reported"), "{p}");
    }

    #[test]
    fn the_fleet_launcher_fits_runinstances_user_data_once_gzipped() {
        let template = include_str!("../../../terraform/modules/kv-service/templates/instance_init.tftpl");
        let ud = user_data(template).unwrap();
        // Near the limit already (the reason for gzip); rendered values only add to it.
        assert!(ud.len() > MAX_USER_DATA * 9 / 10, "{}", ud.len());
        let z = gzip(&ud);
        assert!(z.len() < MAX_USER_DATA / 2, "{} bytes gzipped", z.len());
        let mut back = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&z[..]), &mut back).unwrap();
        assert_eq!(launcher_part(&back), Some(template));
    }

    #[test]
    fn user_data_embeds_the_launcher_verbatim_and_refuses_what_it_cannot_run() {
        let launcher = "#!/bin/bash\n# KV_AMI_SMOKE_TEST aware\necho 'hi $x'\n";
        let ud = user_data(launcher).unwrap();
        assert_eq!(launcher_part(&ud), Some(launcher));
        assert!(ud.ends_with("KV_AMI_SMOKE_TEST=1 exec bash /run/kv-ami/instance-init.sh\n"), "{ud}");
        assert!(user_data("echo hi\n").unwrap_err().contains("#!/bin/bash"));
        assert!(user_data("#!/bin/bash\necho old\n").unwrap_err().contains("no KV_AMI_SMOKE_TEST"));
        assert!(
            user_data("#!/bin/bash\n# KV_AMI_SMOKE_TEST\nKV_AMI_LAUNCHER_EOF\n")
                .unwrap_err()
                .contains("heredoc")
        );
        let e = Error::NoReport {
            region: "us-east-1".into(),
            ami: "ami-1".into(),
            instance: "i-1".into(),
            checks: 3,
            waited: Duration::from_secs(30),
            console: Some((1..=100).map(|n| format!("line {n}")).collect::<Vec<_>>().join("\n")),
        }
        .to_string();
        assert!(e.starts_with("us-east-1: smoke test of ami-1 on i-1: step wait-for-report: no kv-ami:smoke-status tag after 3 checks (30s); console output (last 40 lines):\nline 61\n"), "{e}");
        assert!(e.ends_with("line 100"), "{e}");
    }
}
