//! The upload's progress line on a terminal: blocks done/total, MB/s of data put, ETA.

use std::time::Duration;

pub fn line(done: u64, total: u64, bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let mbps = if secs > 0.0 { bytes as f64 / 1e6 / secs } else { 0.0 };
    let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
    let eta = if done == 0 || secs <= 0.0 {
        "--".to_string()
    } else {
        let left = total.saturating_sub(done) as f64 * secs / done as f64;
        hms(left.round() as u64)
    };
    format!("{done}/{total} blocks ({pct:.0}%), {mbps:.1} MB/s, ETA {eta}")
}

fn hms(s: u64) -> String {
    if s >= 3600 { format!("{}h{:02}m", s / 3600, s / 60 % 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta() {
        assert_eq!(line(0, 10, 0, Duration::from_secs(1)), "0/10 blocks (0%), 0.0 MB/s, ETA --");
        // 50 of 200 blocks of 512 KiB in 10 s: 2.6 MB/s, 150 more blocks take 30 s.
        let l = line(50, 200, 50 * 524_288, Duration::from_secs(10));
        assert_eq!(l, "50/200 blocks (25%), 2.6 MB/s, ETA 0m30s");
        assert!(line(1, 7201, 512, Duration::from_secs(1)).ends_with("ETA 2h00m"));
        assert!(line(0, 0, 0, Duration::ZERO).contains("(100%)"));
    }
}
