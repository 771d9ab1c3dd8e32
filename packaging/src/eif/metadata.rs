//! The metadata section (EIF v4): JSON of nitro-cli's `EifIdentityInfo`, same field names and
//! order, so tools that read nitro-cli's images read ours.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    #[serde(rename = "BuildTime")]
    pub build_time: String,
    #[serde(rename = "BuildTool")]
    pub build_tool: String,
    #[serde(rename = "BuildToolVersion")]
    pub build_tool_version: String,
    #[serde(rename = "OperatingSystem")]
    pub img_os: String,
    #[serde(rename = "KernelVersion")]
    pub img_kernel: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentityInfo {
    #[serde(rename = "ImageName")]
    pub img_name: String,
    #[serde(rename = "ImageVersion")]
    pub img_version: String,
    #[serde(rename = "BuildMetadata")]
    pub build_info: BuildInfo,
    #[serde(rename = "DockerInfo")]
    pub docker_info: serde_json::Value,
    #[serde(rename = "CustomMetadata")]
    pub custom_info: serde_json::Value,
}

/// RFC 3339 UTC time of a Unix timestamp (no time-zone database needed; used for
/// `SOURCE_DATE_EPOCH`, so the build time is reproducible).
pub fn rfc3339_utc(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    // Civil-from-days (H. Hinnant's algorithm), valid for all dates after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00", secs / 3600, (secs / 60) % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20+00:00");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59+00:00");
    }

    #[test]
    fn metadata_json_uses_nitro_cli_field_names_in_order() {
        let m = IdentityInfo {
            img_name: "n".into(),
            img_version: "v".into(),
            build_info: BuildInfo {
                build_time: "t".into(),
                build_tool: "b".into(),
                build_tool_version: "1".into(),
                img_os: "o".into(),
                img_kernel: "k".into(),
            },
            docker_info: serde_json::Value::Null,
            custom_info: serde_json::json!({}),
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(
            s,
            r#"{"ImageName":"n","ImageVersion":"v","BuildMetadata":{"BuildTime":"t","BuildTool":"b","BuildToolVersion":"1","OperatingSystem":"o","KernelVersion":"k"},"DockerInfo":null,"CustomMetadata":{}}"#
        );
    }
}
