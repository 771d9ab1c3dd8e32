//! The builder instance's user data: `templates/builder-user-data.sh` with its `@@NAME@@` values
//! filled in and `packaging/packer/install-bundle.sh` embedded verbatim (one install script for
//! both builder bakes).

/// The template, in the repo beside this crate.
pub const TEMPLATE: &str = include_str!("../templates/builder-user-data.sh");
/// Shared with the Packer template.
pub const INSTALL_BUNDLE_SH: &str = include_str!("../../packer/install-bundle.sh");
/// Heredoc delimiter around the embedded install script in the template.
pub const INSTALL_MARKER: &str = "KV_AMI_INSTALL_BUNDLE_EOF";
/// EC2's limit on user data (before base64).
pub const MAX_USER_DATA: usize = 16 * 1024;

/// Tag the builder sets on itself: `ok` or `failed`.
pub const STATUS_TAG: &str = "kv-ami:bake-status";
/// One line saying what happened (the failed step and its last error line).
pub const DETAIL_TAG: &str = "kv-ami:bake-detail";

pub struct Vars<'a> {
    pub bucket: &'a str,
    /// The run's key prefix (without trailing slash).
    pub prefix: &'a str,
    pub region: &'a str,
    pub content_key: &'a str,
    pub envoy_image: &'a str,
}

/// Values go between single quotes in the script: only characters that cannot close them or
/// expand are accepted (the spec checks the same earlier, with the key name).
fn safe(name: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"./:@_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("user data: {name} {v:?} has characters a shell value cannot hold safely"))
    }
}

pub fn render(v: &Vars) -> Result<String, String> {
    let pairs = [
        ("BUCKET", v.bucket),
        ("PREFIX", v.prefix),
        ("REGION", v.region),
        ("CONTENT_KEY", v.content_key),
        ("ENVOY_IMAGE", v.envoy_image),
        ("STATUS_TAG", STATUS_TAG),
        ("DETAIL_TAG", DETAIL_TAG),
    ];
    let mut out = TEMPLATE.to_string();
    for (name, value) in pairs {
        safe(name, value)?;
        out = out.replace(&format!("@@{name}@@"), value);
    }
    if INSTALL_BUNDLE_SH.lines().any(|l| l.trim() == INSTALL_MARKER) {
        return Err(format!("install-bundle.sh contains the heredoc marker {INSTALL_MARKER}"));
    }
    out = out.replace("@@INSTALL_BUNDLE_SH@@\n", INSTALL_BUNDLE_SH);
    if let Some(at) = out.find("@@") {
        let rest: String = out[at..].chars().take(40).collect();
        return Err(format!("user data template: placeholder left unfilled at {rest:?}"));
    }
    if out.len() > MAX_USER_DATA {
        return Err(format!("user data is {} bytes; EC2 takes at most {MAX_USER_DATA}", out.len()));
    }
    Ok(out)
}

/// The embedded install script of rendered user data (for tests and `kv-ami bake --dry-run`).
pub fn install_part(user_data: &str) -> Option<&str> {
    let open = format!("<<'{INSTALL_MARKER}'\n");
    let start = user_data.find(&open)? + open.len();
    let end = user_data[start..].find(&format!("\n{INSTALL_MARKER}\n"))? + start + 1;
    Some(&user_data[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            bucket: "bake-bucket",
            prefix: "kv-ami-bake/0123456789ab-1",
            region: "us-east-1",
            content_key: "0123456789abcdef",
            envoy_image: "envoyproxy/envoy:v1.24.1@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        }
    }

    #[test]
    fn fills_every_value_and_embeds_the_install_script_verbatim() {
        let u = render(&vars()).unwrap();
        assert!(u.starts_with("#!/bin/bash\n"));
        assert!(u.contains("bucket='bake-bucket'\n"));
        assert!(u.contains("prefix='kv-ami-bake/0123456789ab-1'\n"));
        assert!(u.contains("status_tag='kv-ami:bake-status'\n"));
        assert!(!u.contains("@@"));
        assert_eq!(install_part(&u), Some(INSTALL_BUNDLE_SH));
        assert!(u.len() <= MAX_USER_DATA);
    }

    #[test]
    fn refuses_values_that_could_break_out_of_the_quotes() {
        for bad in ["b'; rm -rf /; '", "b$(id)", "b c", ""] {
            let v = Vars { bucket: bad, ..vars() };
            assert!(render(&v).unwrap_err().contains("BUCKET"), "{bad}");
        }
    }
}
