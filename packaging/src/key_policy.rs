//! `kv-packager key-policy lint`: a KMS key policy must not let anyone obtain key material
//! outside an attested enclave.
//!
//! The fleet key set (issue 17) is only as secret as the policy of its KMS key: one statement
//! that allows `kms:Decrypt` without an attestation condition (the account root's default
//! `kms:*`, say) gives the parent instance every data key. The rule, per statement:
//!
//! - an `Allow` that grants a *key-material action* — `kms:Decrypt`, `kms:Encrypt`,
//!   `kms:GenerateDataKey*`, `kms:ReEncrypt*` — directly, through a wildcard (`kms:*`, `*`,
//!   `kms:Generate*`, `kms:?ecrypt`) or through `NotAction` (everything *but* a list), to any
//!   principal, including through `NotPrincipal` (everyone *but* a list), must carry a condition
//!   on `kms:RecipientAttestation:PCR<n>` or `kms:RecipientAttestation:ImageSha384` under
//!   `StringEquals` or `StringEqualsIgnoreCase` (not `...IfExists`, which passes when the request
//!   has no attestation, and not `StringLike`, whose values may be patterns);
//! - a statement that is not an object, has no valid `Effect`, or neither `Action` nor
//!   `NotAction`, is reported as malformed: the lint cannot vouch for what it does.
//!
//! Deny statements never grant, so they are not checked. Matching follows IAM: action names are
//! case-insensitive, `*` matches any run of characters and `?` one character.

use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// The KMS actions that return or move key material (or plant a data key whose plaintext the
/// caller knows, in the case of Encrypt); what a wildcard is tested against.
pub const KEY_MATERIAL_ACTIONS: &[&str] = &[
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
];

/// The condition operators under which an attestation key binds the request to an image.
const BINDING_OPERATORS: &[&str] = &["StringEquals", "StringEqualsIgnoreCase"];

/// What a finding is about; the `Display` form is the rule's name on the output line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// An Allow with `Action` that grants a key-material action without an attestation condition.
    UnattestedAllow,
    /// The same through `NotAction`: everything but a list, and the list misses one of them.
    UnattestedNotAction,
    /// The same to `NotPrincipal`: everyone but a list.
    UnattestedNotPrincipal,
    /// A statement the lint cannot read as one.
    MalformedStatement,
    /// The document is not a policy (no `Statement`, or the wrong type).
    MalformedPolicy,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::UnattestedAllow => "unattested-allow",
            Rule::UnattestedNotAction => "unattested-notaction-allow",
            Rule::UnattestedNotPrincipal => "unattested-notprincipal-allow",
            Rule::MalformedStatement => "malformed-statement",
            Rule::MalformedPolicy => "malformed-policy",
        })
    }
}

/// One problem in one statement (or in the document, when `statement` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Index in `Statement` (0 for a single statement object) and its Sid, if it has one.
    pub statement: Option<(usize, Option<String>)>,
    pub rule: Rule,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.statement {
            Some((i, Some(sid))) => write!(f, "statement {i} (Sid {sid:?}): ")?,
            Some((i, None)) => write!(f, "statement {i} (no Sid): ")?,
            None => {}
        }
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// Why a file could not be linted at all.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not JSON; line and column of the first error.
    #[error("{path}:{line}:{column}: not valid JSON: {source}")]
    Json { path: PathBuf, line: usize, column: usize, source: serde_json::Error },
}

/// Lints the key policy in `path`.
pub fn lint_file(path: &Path) -> Result<Vec<Finding>, LintError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| LintError::Read { path: path.into(), source })?;
    let doc: Value = serde_json::from_str(&text).map_err(|source| LintError::Json {
        path: path.into(),
        line: source.line(),
        column: source.column(),
        source,
    })?;
    Ok(lint(&doc))
}

/// Lints a parsed key policy document.
pub fn lint(doc: &Value) -> Vec<Finding> {
    let statements: Vec<&Value> = match doc.get("Statement") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        Some(_) => return vec![doc_finding("Statement is neither an object nor a list")],
        None if doc.is_object() => return vec![doc_finding("no Statement")],
        None => return vec![doc_finding("the document is not a JSON object")],
    };
    statements.iter().enumerate().filter_map(|(i, st)| lint_statement(i, st)).collect()
}

fn doc_finding(detail: &str) -> Finding {
    Finding { statement: None, rule: Rule::MalformedPolicy, detail: detail.into() }
}

fn lint_statement(index: usize, st: &Value) -> Option<Finding> {
    let sid = st.get("Sid").and_then(Value::as_str).map(str::to_owned);
    let finding =
        |rule, detail: String| Some(Finding { statement: Some((index, sid.clone())), rule, detail });
    let Some(obj) = st.as_object() else {
        return finding(Rule::MalformedStatement, "not a JSON object".into());
    };
    match obj.get("Effect").and_then(Value::as_str) {
        Some("Deny") => return None,
        Some("Allow") => {}
        other => {
            return finding(
                Rule::MalformedStatement,
                format!("Effect is {other:?}, not \"Allow\" or \"Deny\""),
            );
        }
    }

    let (granted, via_not_action) = match (obj.get("Action"), obj.get("NotAction")) {
        (Some(a), None) => match strings(a) {
            Some(patterns) => (granted_by_action(&patterns), false),
            None => {
                return finding(
                    Rule::MalformedStatement,
                    "Action is not a string or a list of strings".into(),
                );
            }
        },
        (None, Some(na)) => match strings(na) {
            Some(patterns) => (granted_by_not_action(&patterns), true),
            None => {
                return finding(
                    Rule::MalformedStatement,
                    "NotAction is not a string or a list of strings".into(),
                );
            }
        },
        (Some(_), Some(_)) => return finding(Rule::MalformedStatement, "both Action and NotAction".into()),
        (None, None) => return finding(Rule::MalformedStatement, "neither Action nor NotAction".into()),
    };
    if granted.is_empty() {
        return None;
    }
    match attestation_binding(obj.get("Condition")) {
        Ok(()) => None,
        Err(why) => {
            let (rule, how) = if via_not_action {
                (Rule::UnattestedNotAction, "through NotAction")
            } else if obj.contains_key("NotPrincipal") {
                (Rule::UnattestedNotPrincipal, "to everyone but NotPrincipal")
            } else {
                (Rule::UnattestedAllow, "")
            };
            let how = if how.is_empty() { String::new() } else { format!(" {how}") };
            finding(rule, format!("allows {}{how} {why}", granted.join(", ")))
        }
    }
}

/// A string or a list of strings, as IAM writes Action, NotAction and condition values.
fn strings(v: &Value) -> Option<Vec<&str>> {
    match v {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// The key-material actions some pattern of an `Action` matches.
fn granted_by_action(patterns: &[&str]) -> Vec<&'static str> {
    KEY_MATERIAL_ACTIONS.iter().copied().filter(|a| patterns.iter().any(|p| iam_match(p, a))).collect()
}

/// The key-material actions no pattern of a `NotAction` excludes (so the statement grants them).
fn granted_by_not_action(patterns: &[&str]) -> Vec<&'static str> {
    KEY_MATERIAL_ACTIONS.iter().copied().filter(|a| !patterns.iter().any(|p| iam_match(p, a))).collect()
}

/// Ok when some condition binds the request to an attestation document; else why not.
fn attestation_binding(condition: Option<&Value>) -> Result<(), &'static str> {
    let Some(condition) = condition else {
        return Err("without any Condition");
    };
    let Some(operators) = condition.as_object() else {
        return Err("with a Condition that is not an object");
    };
    let mut under_other_operator = false;
    for (operator, keys) in operators {
        let Some(keys) = keys.as_object() else { continue };
        for (key, values) in keys {
            if !is_attestation_key(key) {
                continue;
            }
            let has_value = strings(values).is_some_and(|v| !v.is_empty() && v.iter().all(|s| !s.is_empty()));
            if BINDING_OPERATORS.contains(&operator.as_str()) && has_value {
                return Ok(());
            }
            under_other_operator = true;
        }
    }
    if under_other_operator {
        Err(
            "with kms:RecipientAttestation conditions only under operators other than StringEquals/StringEqualsIgnoreCase (or without values)",
        )
    } else {
        Err("without a kms:RecipientAttestation:PCR<n> or ImageSha384 condition")
    }
}

/// `kms:RecipientAttestation:PCR<0-31>` or `kms:RecipientAttestation:ImageSha384`, any case.
fn is_attestation_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let Some(rest) = key.strip_prefix("kms:recipientattestation:") else {
        return false;
    };
    if rest == "imagesha384" {
        return true;
    }
    rest.strip_prefix("pcr")
        .and_then(|n| if n.is_empty() || n.len() > 2 { None } else { n.parse::<u8>().ok() })
        .is_some_and(|n| n <= 31)
}

/// IAM action matching: ASCII case-insensitive, `*` any run of characters, `?` one character.
pub fn iam_match(pattern: &str, action: &str) -> bool {
    let p: Vec<u8> = pattern.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let a: Vec<u8> = action.bytes().map(|b| b.to_ascii_lowercase()).collect();
    // Iterative glob with one backtrack point (the last '*'): linear in practice, no recursion.
    let (mut pi, mut ai) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ai < a.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == a[ai]) {
            pi += 1;
            ai += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ai));
            pi += 1;
        } else if let Some((sp, sa)) = star {
            pi = sp + 1;
            ai = sa + 1;
            star = Some((sp, sa + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PCR0: &str =
        "6ed63c88787202ed952c8e10e319b31c12156df4916d22bd38e8e92ff3f89a605c3df2aca056ff9ce4a79830f1766082";
    const ROLE: &str = "arn:aws:iam::123456789012:role/kv-fleet-test-instance";

    fn policy(statements: Value) -> Value {
        json!({ "Version": "2012-10-17", "Statement": statements })
    }

    fn attested(operator: &str, key: &str) -> Value {
        json!({ operator: { key: PCR0 } })
    }

    fn allow(action: Value, condition: Option<Value>) -> Value {
        let mut st = json!({
            "Sid": "S", "Effect": "Allow", "Principal": { "AWS": ROLE },
            "Action": action, "Resource": "*"
        });
        if let Some(c) = condition {
            st["Condition"] = c;
        }
        st
    }

    fn rules(doc: &Value) -> Vec<Rule> {
        lint(doc).into_iter().map(|f| f.rule).collect()
    }

    #[test]
    fn the_rendered_fleet_key_policy_passes() {
        // Written by terraform/tests/run.sh from modules/kv-service/modules/fleet-key-policy.
        let doc: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/fleet-key-policy.json")).unwrap();
        assert_eq!(lint(&doc), vec![]);
        // And it is the policy the lint is about: two attested Allows of Decrypt.
        let allows = doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["Effect"] == "Allow" && !granted_by_action(&strings(&s["Action"]).unwrap()).is_empty()
            })
            .count();
        assert_eq!(allows, 2);
    }

    #[test]
    fn the_account_root_default_statement_fails() {
        let doc = policy(json!([{
            "Sid": "Enable IAM User Permissions", "Effect": "Allow",
            "Principal": { "AWS": "arn:aws:iam::123456789012:root" }, "Action": "kms:*", "Resource": "*"
        }]));
        let f = lint(&doc);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, Rule::UnattestedAllow);
        assert_eq!(f[0].statement, Some((0, Some("Enable IAM User Permissions".into()))));
        let line = f[0].to_string();
        assert!(line.starts_with("statement 0 (Sid \"Enable IAM User Permissions\"): unattested-allow: allows kms:Decrypt, kms:Encrypt"), "{line}");
    }

    #[test]
    fn every_key_material_action_needs_attestation_directly_or_through_wildcards() {
        for action in [
            json!("kms:Decrypt"),
            json!("kms:Encrypt"),
            json!("KMS:decrypt"),
            json!(["kms:DescribeKey", "kms:GenerateDataKey"]),
            json!("kms:GenerateDataKeyWithoutPlaintext"),
            json!("kms:ReEncryptFrom"),
            json!("kms:ReEncrypt*"),
            json!("kms:Generate*"),
            json!("kms:*"),
            json!("*"),
            json!("kms:?ecrypt"),
            json!("*crypt*"),
        ] {
            assert_eq!(
                rules(&policy(json!([allow(action.clone(), None)]))),
                vec![Rule::UnattestedAllow],
                "{action}"
            );
            let ok = allow(
                action.clone(),
                Some(attested("StringEqualsIgnoreCase", "kms:RecipientAttestation:PCR0")),
            );
            assert_eq!(rules(&policy(json!([ok]))), vec![], "{action}");
        }
    }

    #[test]
    fn management_actions_need_no_attestation() {
        let doc = policy(json!([allow(
            json!(["kms:DescribeKey", "kms:PutKeyPolicy", "kms:Get*", "kms:Create*"]),
            None
        )]));
        assert_eq!(lint(&doc), vec![]);
    }

    #[test]
    fn deny_statements_are_not_grants() {
        let doc = policy(json!([{ "Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*" }]));
        assert_eq!(lint(&doc), vec![]);
    }

    #[test]
    fn only_string_equals_operators_on_attestation_keys_bind() {
        for (operator, key, passes) in [
            ("StringEquals", "kms:RecipientAttestation:PCR0", true),
            ("StringEqualsIgnoreCase", "kms:RecipientAttestation:PCR2", true),
            ("StringEqualsIgnoreCase", "kms:RecipientAttestation:ImageSha384", true),
            ("StringEquals", "kms:recipientattestation:imagesha384", true),
            ("StringEqualsIgnoreCase", "kms:RecipientAttestation:PCR8", true),
            ("StringEqualsIfExists", "kms:RecipientAttestation:PCR0", false),
            ("StringEqualsIgnoreCaseIfExists", "kms:RecipientAttestation:PCR0", false),
            ("StringLike", "kms:RecipientAttestation:PCR0", false),
            ("StringNotEquals", "kms:RecipientAttestation:PCR0", false),
            ("ForAnyValue:StringEquals", "kms:RecipientAttestation:PCR0", false),
            ("Null", "kms:RecipientAttestation:ImageSha384", false),
            ("StringEquals", "kms:RecipientAttestation:PCR", false),
            ("StringEquals", "kms:RecipientAttestation:PCR32", false),
            ("StringEquals", "kms:CallerAccount", false),
            ("StringEquals", "aws:PrincipalArn", false),
        ] {
            let doc = policy(json!([allow(json!("kms:Decrypt"), Some(attested(operator, key)))]));
            assert_eq!(lint(&doc).is_empty(), passes, "{operator} {key}: {:?}", lint(&doc));
        }
    }

    #[test]
    fn an_empty_attestation_value_does_not_bind() {
        for values in [json!([]), json!(""), json!([""]), json!(7)] {
            let c = json!({ "StringEquals": { "kms:RecipientAttestation:PCR0": values } });
            let doc = policy(json!([allow(json!("kms:Decrypt"), Some(c))]));
            assert_eq!(rules(&doc), vec![Rule::UnattestedAllow], "{values}");
        }
    }

    #[test]
    fn not_action_that_leaves_a_key_material_action_fails() {
        let st = |not_action: Value, condition: Option<Value>| {
            let mut s = json!({ "Effect": "Allow", "Principal": { "AWS": ROLE }, "NotAction": not_action, "Resource": "*" });
            if let Some(c) = condition {
                s["Condition"] = c;
            }
            s
        };
        // Everything but DescribeKey: includes Decrypt.
        let f = lint(&policy(json!([st(json!("kms:DescribeKey"), None)])));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, Rule::UnattestedNotAction);
        assert_eq!(f[0].statement, Some((0, None)));
        assert!(
            f[0].to_string()
                .starts_with("statement 0 (no Sid): unattested-notaction-allow: allows kms:Decrypt"),
            "{}",
            f[0]
        );
        // Everything but the key-material actions (by wildcards): nothing to attest.
        let all_out = json!(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*"]);
        assert_eq!(lint(&policy(json!([st(all_out, None)]))), vec![]);
        // Leaving one out is enough to fail; attested, it passes.
        let one_left = json!(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*"]);
        assert_eq!(rules(&policy(json!([st(one_left.clone(), None)]))), vec![Rule::UnattestedNotAction]);
        let c = attested("StringEqualsIgnoreCase", "kms:RecipientAttestation:PCR0");
        assert_eq!(lint(&policy(json!([st(one_left, Some(c))]))), vec![]);
    }

    #[test]
    fn not_principal_allow_without_attestation_fails() {
        let mut st = allow(json!("kms:Decrypt"), None);
        st.as_object_mut().unwrap().remove("Principal");
        st["NotPrincipal"] = json!({ "AWS": ROLE });
        assert_eq!(rules(&policy(json!([st.clone()]))), vec![Rule::UnattestedNotPrincipal]);
        st["Condition"] = attested("StringEquals", "kms:RecipientAttestation:ImageSha384");
        assert_eq!(lint(&policy(json!([st]))), vec![]);
    }

    #[test]
    fn each_statement_is_reported_with_its_index_and_sid() {
        let mut second = allow(json!("kms:Encrypt"), None);
        second["Sid"] = json!("Planter");
        let doc = policy(json!([
            allow(json!("kms:Decrypt"), Some(attested("StringEquals", "kms:RecipientAttestation:PCR0"))),
            second,
            { "Effect": "Allow", "Principal": "*", "Action": "kms:ReEncryptTo", "Resource": "*" },
        ]));
        let lines: Vec<String> = lint(&doc).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "statement 1 (Sid \"Planter\"): unattested-allow: allows kms:Encrypt without any Condition",
                "statement 2 (no Sid): unattested-allow: allows kms:ReEncryptTo without any Condition",
            ]
        );
    }

    #[test]
    fn a_single_statement_object_is_linted() {
        let doc = json!({ "Statement": allow(json!("kms:*"), None) });
        assert_eq!(rules(&doc), vec![Rule::UnattestedAllow]);
    }

    #[test]
    fn malformed_statements_and_documents_are_findings() {
        for (doc, rule) in [
            (json!({ "Statement": [7] }), Rule::MalformedStatement),
            (json!({ "Statement": [{ "Action": "kms:Decrypt" }] }), Rule::MalformedStatement),
            (
                json!({ "Statement": [{ "Effect": "allow", "Action": "kms:Decrypt" }] }),
                Rule::MalformedStatement,
            ),
            (json!({ "Statement": [{ "Effect": "Allow", "Principal": "*" }] }), Rule::MalformedStatement),
            (
                json!({ "Statement": [{ "Effect": "Allow", "Action": ["kms:Decrypt", 1] }] }),
                Rule::MalformedStatement,
            ),
            (
                json!({ "Statement": [{ "Effect": "Allow", "Action": "kms:Decrypt", "NotAction": "x" }] }),
                Rule::MalformedStatement,
            ),
            (json!({ "Version": "2012-10-17" }), Rule::MalformedPolicy),
            (json!({ "Statement": "x" }), Rule::MalformedPolicy),
            (json!([]), Rule::MalformedPolicy),
        ] {
            assert_eq!(rules(&doc), vec![rule], "{doc}");
        }
    }

    #[test]
    fn unparseable_json_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{\n  \"Statement\": [\n    { \"Effect\": \"Allow\", }\n  ]\n}\n").unwrap();
        let e = lint_file(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:3:", path.display())), "{e}");
        let missing = dir.path().join("missing.json");
        let e = lint_file(&missing).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: cannot read", missing.display())), "{e}");
    }

    #[test]
    fn iam_matching() {
        for (p, a, m) in [
            ("kms:Decrypt", "kms:Decrypt", true),
            ("KMS:DECRYPT", "kms:Decrypt", true),
            ("kms:*", "kms:Decrypt", true),
            ("*", "kms:Decrypt", true),
            ("kms:Generate*", "kms:GenerateDataKey", true),
            ("kms:GenerateDataKey", "kms:GenerateDataKeyPair", false),
            ("kms:?ecrypt", "kms:Decrypt", true),
            ("kms:?ecrypt", "kms:Encrypt", false),
            ("kms:??crypt", "kms:Decrypt", true),
            ("kms:??crypt", "kms:Encrypt", true),
            ("kms:?crypt", "kms:Decrypt", false),
            ("*a*b*", "kms:GenerateDataKeyPair", false),
            ("*Data*Pair*", "kms:GenerateDataKeyPair", true),
            ("kms:Decrypt*", "kms:Decrypt", true),
            ("", "kms:Decrypt", false),
            ("s3:*", "kms:Decrypt", false),
        ] {
            assert_eq!(iam_match(p, a), m, "{p} vs {a}");
        }
    }
}
