//! The captured serial console (`console.log`): its last lines for error messages and the
//! monitor's report, and following it for the `console` verb.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// How much of the end of the console is read for tails and summaries.
const TAIL_BYTES: u64 = 256 << 10;
/// What marks our init's own lines on the console.
const INIT_MARK: &str = "enclave-init";

/// The last `max_bytes` of a file as text (lossy); empty if it cannot be read.
pub fn read_end(path: &Path, max_bytes: u64) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_default()
}

/// Console lines without the serial port's carriage returns, empty lines dropped.
fn lines(text: &str) -> impl DoubleEndedIterator<Item = &str> {
    text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty())
}

/// The last `n` non-empty lines.
pub fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let mut v: Vec<&str> = lines(text).rev().take(n).collect();
    v.reverse();
    v
}

/// The last `n` lines our init printed (e.g. "enclave-init: application exited with 0").
pub fn last_init_lines(text: &str, n: usize) -> Vec<&str> {
    let mut v: Vec<&str> = lines(text).rev().filter(|l| l.contains(INIT_MARK)).take(n).collect();
    v.reverse();
    v
}

/// The last `n` lines of the console file, for error messages.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    last_lines(&read_end(path, TAIL_BYTES), n).into_iter().map(str::to_string).collect()
}

/// The last `n` init lines of the console file.
pub fn init_tail(path: &Path, n: usize) -> Vec<String> {
    last_init_lines(&read_end(path, TAIL_BYTES), n).into_iter().map(str::to_string).collect()
}

/// What a failed boot shows of the console: its last `n` lines, preceded by init's last few
/// lines when those scrolled out of the tail (they say how far the boot got), or a note that the
/// console is empty.
pub fn failure_excerpt(path: &Path, n: usize) -> String {
    let text = read_end(path, TAIL_BYTES);
    let tail = last_lines(&text, n);
    if tail.is_empty() {
        return "(the console is empty)".into();
    }
    let earlier: Vec<&str> = last_init_lines(&text, 3).into_iter().filter(|l| !tail.contains(l)).collect();
    let mut out = String::new();
    if !earlier.is_empty() {
        out.push_str(&earlier.join("\n"));
        out.push_str("\n[...]\n");
    }
    out.push_str(&tail.join("\n"));
    out
}

/// Copies `path` to `out` from the start and keeps copying what is appended until `ended()`
/// says the writer is gone (then copies the rest once more) or `timeout` passes.
pub fn follow(
    path: &Path,
    out: &mut dyn Write,
    timeout: Option<Duration>,
    mut ended: impl FnMut() -> bool,
) -> io::Result<()> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Checked before draining: whatever was written before the end is copied below.
        let done = ended();
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
        }
        out.flush()?;
        if done || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "[    0.000000] Linux version 6.12\r\n\
        enclave-init: LoadModule { path: \"/nsm.ko\" }\r\n\
        [    1.2] random: crng init done\r\n\
        \r\n\
        enclave-init: RunApp\r\n\
        enclave-init: application exited with 3\r\n\
        enclave-init: powering off (application exit code 3)\r\n\
        [    2.5] reboot: Power down\r\n";

    #[test]
    fn tails_drop_carriage_returns_and_blank_lines() {
        assert_eq!(
            last_lines(CONSOLE, 3),
            [
                "enclave-init: application exited with 3",
                "enclave-init: powering off (application exit code 3)",
                "[    2.5] reboot: Power down"
            ]
        );
        assert_eq!(last_lines(CONSOLE, 100).len(), 7);
        assert!(last_lines("", 5).is_empty());
    }

    #[test]
    fn init_lines_are_the_last_ones_our_init_printed() {
        assert_eq!(
            last_init_lines(CONSOLE, 2),
            [
                "enclave-init: application exited with 3",
                "enclave-init: powering off (application exit code 3)"
            ]
        );
    }

    #[test]
    fn reads_only_the_end_of_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("console.log");
        std::fs::write(&p, "first\nsecond\nthird\n").unwrap();
        assert_eq!(read_end(&p, 6), "third\n");
        assert_eq!(tail(&p, 2), ["second", "third"]);
        assert_eq!(read_end(&tmp.path().join("missing"), 10), "");
    }

    #[test]
    fn failure_excerpts_keep_inits_lines_that_scrolled_out() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("console.log");
        std::fs::write(&p, "").unwrap();
        assert_eq!(failure_excerpt(&p, 2), "(the console is empty)");
        std::fs::write(&p, "enclave-init: Heartbeat\r\napp: one\r\napp: two\r\n").unwrap();
        assert_eq!(failure_excerpt(&p, 2), "enclave-init: Heartbeat\n[...]\napp: one\napp: two");
        assert_eq!(failure_excerpt(&p, 3), "enclave-init: Heartbeat\napp: one\napp: two");
    }

    #[test]
    fn follow_copies_appended_text_until_the_writer_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("console.log");
        std::fs::write(&p, "boot\n").unwrap();
        let mut out = Vec::new();
        let mut polls = 0;
        follow(&p, &mut out, Some(Duration::from_secs(10)), || {
            polls += 1;
            if polls == 2 {
                let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                f.write_all(b"more\n").unwrap();
            }
            polls >= 3
        })
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "boot\nmore\n");

        let mut out = Vec::new();
        let start = Instant::now();
        follow(&p, &mut out, Some(Duration::from_millis(300)), || false).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(String::from_utf8(out).unwrap(), "boot\nmore\n");
    }
}
