//! A strict reader of the Prometheus text exposition format (version 0.0.4), the format the
//! collector's `prometheus` receiver scrapes from vsockproxy's `/metrics`: enough to tell
//! whether a body would be accepted and to look series up, not a general client.
//!
//! Checked: every line is a comment, `# HELP`, `# TYPE` or a sample; names and label names are
//! well-formed; label values use only the format's escapes; values are numbers, `+Inf`, `-Inf` or
//! `NaN`; a family's `# TYPE` comes once and before its samples; a family's samples are not
//! interleaved with another's; no series is repeated; a histogram's samples are `_bucket` (with
//! `le`), `_sum` and `_count`, its buckets cumulative and ending with `le="+Inf"` equal to
//! `_count`.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order written.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed body: its samples in order and each family's declared type.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name -> `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The samples named `name` whose labels include every pair of `with`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && with.iter().all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
    }
}

/// A histogram series: its family and labels without `le`, sorted.
type SeriesKey = (String, Vec<(String, String)>);

/// Parses `text`; the error names the line and what is wrong with it.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut seen_series = BTreeSet::new();
    let mut finished_families = BTreeSet::new();
    let mut current_family: Option<String> = None;
    let mut histograms: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<SeriesKey, f64> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let at = |what: String| format!("line {}: {what}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().ok_or_else(|| at("# TYPE without a name".into()))?;
                    let kind = words.next().ok_or_else(|| at("# TYPE without a type".into()))?.trim();
                    check_name(name).map_err(at)?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if out.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at(format!("a second # TYPE for {name}")));
                    }
                    if out.samples.iter().any(|s| family_of(&s.name, &out.types) == name) {
                        return Err(at(format!("# TYPE for {name} after its samples")));
                    }
                }
                Some("HELP") => {
                    let name = words.next().ok_or_else(|| at("# HELP without a name".into()))?;
                    check_name(name).map_err(at)?;
                    let help = words.next().unwrap_or("");
                    check_escapes(help, false).map_err(at)?;
                }
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = family_of(&sample.name, &out.types).to_string();
        if current_family.as_deref() != Some(&family) {
            if finished_families.contains(&family) {
                return Err(at(format!("samples of {family} are not together")));
            }
            if let Some(previous) = current_family.replace(family.clone()) {
                finished_families.insert(previous);
            }
        }
        let mut key = sample.labels.clone();
        key.sort();
        if !seen_series.insert((sample.name.clone(), key)) {
            return Err(at("the same series twice".into()));
        }
        if out.types.get(&family).is_some_and(|t| t == "histogram") {
            let suffix = &sample.name[family.len()..];
            let mut labels = sample.labels.clone();
            let le = labels.iter().position(|(k, _)| k == "le").map(|p| labels.remove(p).1);
            labels.sort();
            match (suffix, le) {
                ("_bucket", Some(le)) => {
                    let bound = parse_value(&le).map_err(|e| at(format!("le: {e}")))?;
                    histograms.entry((family.clone(), labels)).or_default().push((bound, sample.value));
                }
                ("_bucket", None) => return Err(at("a histogram bucket without le".into())),
                ("_count", None) => {
                    counts.insert((family.clone(), labels), sample.value);
                }
                ("_sum", None) => {}
                _ => return Err(at(format!("{} is not a sample of histogram {family}", sample.name))),
            }
        }
        out.samples.push(sample);
    }
    for ((family, labels), buckets) in &histograms {
        let series = format!("{family}{labels:?}");
        if buckets.windows(2).any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1) {
            return Err(format!("{series}: buckets not in increasing order or not cumulative"));
        }
        let last = buckets.last().copied().unwrap_or((0.0, 0.0));
        if last.0 != f64::INFINITY {
            return Err(format!("{series}: no le=\"+Inf\" bucket"));
        }
        if counts.get(&(family.clone(), labels.clone())) != Some(&last.1) {
            return Err(format!("{series}: _count differs from the +Inf bucket"));
        }
    }
    Ok(out)
}

/// The family a sample belongs to: its own name, or the histogram or summary it is part of.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram" || t == "summary")
        {
            return base;
        }
    }
    name
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!("bad label name {name:?}"))
    }
}

/// HELP text may escape `\\` and `\n`; label values also `\"`.
fn check_escapes(s: &str, quotes: bool) -> Result<(), String> {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\' | 'n') => {}
                Some('"') if quotes => {}
                other => return Err(format!("bad escape \\{other:?}")),
            }
        }
    }
    Ok(())
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| format!("bad value {s:?}")),
    }
}

/// `name{k="v",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut s = after;
        loop {
            s = s.trim_start();
            if let Some(r) = s.strip_prefix('}') {
                s = r;
                break;
            }
            let (key, r) = s.split_once("=\"").ok_or("a label without =\"")?;
            check_label_name(key)?;
            let mut value = String::new();
            let mut end = None;
            let mut chars = r.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape \\{other:?} in label {key}")),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    '\n' => return Err("a raw newline in a label value".into()),
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("label {key} not closed"))?;
            if labels.iter().any(|(k, _)| k == key) {
                return Err(format!("label {key} twice"));
            }
            labels.push((key.to_string(), value));
            s = &r[end + 1..];
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else if !s.starts_with('}') {
                return Err("labels not separated by ,".into());
            }
        }
        rest = s;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the value and timestamp".into());
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# HELP a_total Things, with a \\\\ and a \\n.
# TYPE a_total counter
a_total{listener=\"k\\\"x\",kind=\"mapping\"} 3
a_total{listener=\"y\",kind=\"mapping\"} 0
# TYPE t_seconds histogram
t_seconds_bucket{phase=\"dns\",le=\"5e-05\"} 1
t_seconds_bucket{phase=\"dns\",le=\"1\"} 2
t_seconds_bucket{phase=\"dns\",le=\"+Inf\"} 3
t_seconds_sum{phase=\"dns\"} 20.5
t_seconds_count{phase=\"dns\"} 3
# TYPE g gauge
g 1.5e3
";

    #[test]
    fn reads_a_valid_body() {
        let e = parse(GOOD).unwrap();
        assert_eq!(e.types["a_total"], "counter");
        let a: Vec<_> = e.find("a_total", &[("listener", "k\"x")]).collect();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].value, 3.0);
        assert_eq!(a[0].labels[1], ("kind".to_string(), "mapping".to_string()));
        assert_eq!(e.find("g", &[]).next().unwrap().value, 1500.0);
        assert_eq!(e.find("t_seconds_count", &[("phase", "dns")]).next().unwrap().value, 3.0);
    }

    #[test]
    fn refuses_what_a_scraper_would() {
        let cases = [
            ("a_total{listener=\"x} 1\n", "not closed"),
            ("a_total{listener=\"x\"} one\n", "bad value"),
            ("1a 1\n", "bad metric name"),
            ("a{1b=\"x\"} 1\n", "bad label name"),
            ("a{b=\"\\x\"} 1\n", "bad escape"),
            ("a 1\na 2\n", "same series twice"),
            ("a 1\nb 1\na{x=\"1\"} 1\n", "not together"),
            ("# TYPE a gauge\n# TYPE a counter\n", "second # TYPE"),
            ("a 1\n# TYPE a gauge\n", "after its samples"),
            ("# TYPE a gauge extra\n", "unknown type"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "cumulative"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n", "+Inf"),
            ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n", "_count differs"),
            ("# TYPE h histogram\nh{x=\"1\"} 1\n", "not a sample of histogram"),
            ("a{b=\"1\" c=\"2\"} 1\n", "separated"),
            ("a 1 2 3\n", "after the value"),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
