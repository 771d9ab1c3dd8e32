//! Key policy: loading a real KMS key policy document and evaluating a request against it.
//!
//! IAM's rules, restricted to what a key policy for attested enclaves uses: a request is allowed
//! when some `Allow` statement matches it (principal, action, resource and every condition) and
//! no `Deny` statement does. Anything the double cannot evaluate faithfully (an unknown condition
//! operator or key, `NotAction`, `NotPrincipal`, `NotResource`, the `ForAnyValue:`/`IfExists`
//! qualifiers) is refused when the policy is loaded, naming the statement, so a policy is never
//! evaluated with a part silently ignored.
//!
//! Principals: `"*"`, or `{"AWS": ARN | [ARN, ...]}` where an ARN is a role/user ARN, an account
//! root `arn:aws:iam::ACCOUNT:root` or a bare account id. An account root matches every caller of
//! that account here; real KMS would then also require an IAM policy of the caller's account to
//! allow the action, which the double does not model. `Service` and `Federated` principals are
//! accepted and never match (every caller of the double is an IAM principal).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// The condition keys the double knows, in the case IAM documents them.
pub const IMAGE_SHA384: &str = "kms:RecipientAttestation:ImageSha384";
pub const PCR_PREFIX: &str = "kms:RecipientAttestation:PCR";
pub const ENCRYPTION_CONTEXT_PREFIX: &str = "kms:EncryptionContext:";
pub const CALLER_ACCOUNT: &str = "kms:CallerAccount";

/// The highest PCR index a condition key may name (Nitro Enclaves has 32 PCRs).
const MAX_PCR: usize = 31;

/// Why a policy document was refused at load.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// the policy is not JSON: {0}
    #[error("the policy is not JSON: {0}")]
    Json(String),
    /// the document itself is malformed (no Statement, a non-object statement list)
    #[error("{0}")]
    Document(String),
    /// one statement cannot be evaluated faithfully
    #[error("statement {statement}: {reason}")]
    Statement { statement: String, reason: String },
}

/// A loaded key policy.
#[derive(Debug, Clone)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
struct Statement {
    /// `Sid "X"` or `#3` (0-based index), for messages.
    label: String,
    effect: Effect,
    principals: Principals,
    actions: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone)]
enum Principals {
    Anyone,
    Aws(Vec<String>),
    /// Service or Federated principals only: never an IAM caller.
    NoIamCaller,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringEqualsIgnoreCase,
    StringNotEquals,
    StringNotEqualsIgnoreCase,
    Null,
}

impl Operator {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "StringEquals" => Self::StringEquals,
            "StringEqualsIgnoreCase" => Self::StringEqualsIgnoreCase,
            "StringNotEquals" => Self::StringNotEquals,
            "StringNotEqualsIgnoreCase" => Self::StringNotEqualsIgnoreCase,
            "Null" => Self::Null,
            _ => return None,
        })
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A condition key, resolved at load.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConditionKey {
    ImageSha384,
    Pcr(usize),
    /// The context key, as the policy spells it; matched case-insensitively, as IAM does.
    EncryptionContext(String),
    CallerAccount,
}

impl ConditionKey {
    fn parse(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower == IMAGE_SHA384.to_ascii_lowercase() {
            return Some(Self::ImageSha384);
        }
        if lower == CALLER_ACCOUNT.to_ascii_lowercase() {
            return Some(Self::CallerAccount);
        }
        if let Some(index) = lower.strip_prefix(&PCR_PREFIX.to_ascii_lowercase()) {
            // "PCR0".."PCR31", no sign, no leading zeros.
            let canonical = index.parse::<usize>().ok().filter(|i| *i <= MAX_PCR && i.to_string() == index);
            return canonical.map(Self::Pcr);
        }
        if lower.starts_with(&ENCRYPTION_CONTEXT_PREFIX.to_ascii_lowercase()) {
            let context_key = &name[ENCRYPTION_CONTEXT_PREFIX.len()..];
            return (!context_key.is_empty()).then(|| Self::EncryptionContext(context_key.to_string()));
        }
        None
    }
}

impl fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ImageSha384 => f.write_str(IMAGE_SHA384),
            Self::Pcr(i) => write!(f, "{PCR_PREFIX}{i}"),
            Self::EncryptionContext(k) => write!(f, "{ENCRYPTION_CONTEXT_PREFIX}{k}"),
            Self::CallerAccount => f.write_str(CALLER_ACCOUNT),
        }
    }
}

#[derive(Debug, Clone)]
struct Condition {
    operator: Operator,
    key: ConditionKey,
    values: Vec<String>,
}

/// What the policy sees of one request.
#[derive(Debug, Clone)]
pub struct RequestContext<'a> {
    /// `kms:GenerateDataKey`, ...
    pub action: &'a str,
    /// The key's ARN.
    pub resource: &'a str,
    pub caller_arn: &'a str,
    pub encryption_context: &'a BTreeMap<String, String>,
    /// The recipient's PCRs (index -> value), when the request has a `Recipient`.
    pub recipient_pcrs: Option<&'a BTreeMap<usize, Vec<u8>>>,
}

impl RequestContext<'_> {
    fn value_of(&self, key: &ConditionKey) -> Option<String> {
        match key {
            ConditionKey::ImageSha384 => self.pcr(0),
            ConditionKey::Pcr(i) => self.pcr(*i),
            ConditionKey::EncryptionContext(name) => self
                .encryption_context
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone()),
            ConditionKey::CallerAccount => account_of(self.caller_arn).map(str::to_string),
        }
    }

    fn pcr(&self, index: usize) -> Option<String> {
        self.recipient_pcrs?.get(&index).map(|v| hex(v))
    }
}

/// The outcome of an evaluation; the reason never holds key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by this statement.
    Allow {
        statement: String,
    },
    Deny {
        reason: String,
    },
}

impl Policy {
    /// Loads a key policy document, refusing what the double cannot evaluate.
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let doc: Value = serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
        let Value::Object(doc) = doc else {
            return Err(PolicyError::Document("the policy is not a JSON object".into()));
        };
        for key in doc.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(PolicyError::Document(format!("unknown top-level element {key:?}")));
            }
        }
        let statements = match doc.get("Statement") {
            Some(Value::Array(list)) => list.clone(),
            Some(one @ Value::Object(_)) => vec![one.clone()],
            _ => return Err(PolicyError::Document("no Statement list".into())),
        };
        let statements =
            statements.iter().enumerate().map(|(i, s)| Statement::parse(i, s)).collect::<Result<_, _>>()?;
        Ok(Self { statements })
    }

    /// IAM's evaluation: an explicit Deny wins, then any Allow, else an implicit deny.
    pub fn evaluate(&self, request: &RequestContext<'_>) -> Decision {
        let mut allowed_by = None;
        let mut misses = Vec::new();
        for statement in &self.statements {
            match (statement.effect, statement.matches(request)) {
                (Effect::Deny, Ok(())) => {
                    return Decision::Deny {
                        reason: format!(
                            "{} is explicitly denied by statement {}",
                            request.action, statement.label
                        ),
                    };
                }
                (Effect::Allow, Ok(())) => {
                    allowed_by.get_or_insert_with(|| statement.label.clone());
                }
                (Effect::Allow, Err(Miss::Condition(why))) => {
                    misses.push(format!("statement {}: {why}", statement.label));
                }
                _ => {}
            }
        }
        match allowed_by {
            Some(statement) => Decision::Allow { statement },
            None if misses.is_empty() => Decision::Deny {
                reason: format!("no Allow statement grants {} to {}", request.action, request.caller_arn),
            },
            None => {
                Decision::Deny { reason: format!("{} is not allowed: {}", request.action, misses.join("; ")) }
            }
        }
    }
}

/// Why a statement does not apply to a request.
enum Miss {
    /// Principal, action or resource: the statement is about something else.
    Scope,
    /// In scope, but this condition failed (the message names it).
    Condition(String),
}

fn statement_error(label: &str, reason: impl Into<String>) -> PolicyError {
    PolicyError::Statement { statement: label.to_string(), reason: reason.into() }
}

/// A string or a list of strings, as IAM writes Action, Resource, principals and values.
fn string_list(value: &Value) -> Option<Vec<String>> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match value {
        Value::Array(items) => items.iter().map(scalar).collect(),
        other => scalar(other).map(|s| vec![s]),
    }
}

impl Statement {
    fn parse(index: usize, value: &Value) -> Result<Self, PolicyError> {
        let Value::Object(map) = value else {
            return Err(statement_error(&format!("#{index}"), "is not a JSON object"));
        };
        let label = match map.get("Sid") {
            Some(Value::String(sid)) if !sid.is_empty() => format!("{sid:?}"),
            _ => format!("#{index}"),
        };
        for key in map.keys() {
            match key.as_str() {
                "Sid" | "Effect" | "Principal" | "Action" | "Resource" | "Condition" => {}
                "NotPrincipal" | "NotAction" | "NotResource" => {
                    return Err(statement_error(&label, format!("{key} is not supported by the KMS double")));
                }
                other => return Err(statement_error(&label, format!("unknown element {other:?}"))),
            }
        }
        let effect = match map.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => return Err(statement_error(&label, "Effect must be \"Allow\" or \"Deny\"")),
        };
        let principals = Self::parse_principals(&label, map.get("Principal"))?;
        let actions = map
            .get("Action")
            .and_then(string_list)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| statement_error(&label, "Action must be a string or a list of strings"))?;
        let resources = match map.get("Resource") {
            // A key policy's Resource is the key itself; "*" is what AWS writes.
            None => vec!["*".to_string()],
            Some(v) => string_list(v)
                .ok_or_else(|| statement_error(&label, "Resource must be a string or a list"))?,
        };
        let conditions = match map.get("Condition") {
            None => Vec::new(),
            Some(v) => Self::parse_conditions(&label, v)?,
        };
        Ok(Self { label, effect, principals, actions, resources, conditions })
    }

    fn parse_principals(label: &str, value: Option<&Value>) -> Result<Principals, PolicyError> {
        match value {
            Some(Value::String(s)) if s == "*" => Ok(Principals::Anyone),
            Some(Value::Object(map)) => {
                let mut aws = None;
                for (kind, v) in map {
                    match kind.as_str() {
                        "AWS" => {
                            let list = string_list(v).ok_or_else(|| {
                                statement_error(label, "Principal.AWS must be a string or a list")
                            })?;
                            aws = Some(list);
                        }
                        "Service" | "Federated" => {}
                        other => {
                            return Err(statement_error(label, format!("unknown principal type {other:?}")));
                        }
                    }
                }
                Ok(match aws {
                    Some(list) if list.iter().any(|p| p == "*") => Principals::Anyone,
                    Some(list) => Principals::Aws(list),
                    None => Principals::NoIamCaller,
                })
            }
            _ => Err(statement_error(
                label,
                "a key policy statement needs a Principal (\"*\" or {\"AWS\": ...})",
            )),
        }
    }

    fn parse_conditions(label: &str, value: &Value) -> Result<Vec<Condition>, PolicyError> {
        let Value::Object(blocks) = value else {
            return Err(statement_error(label, "Condition must be an object"));
        };
        let mut conditions = Vec::new();
        for (operator_name, block) in blocks {
            let operator = Operator::parse(operator_name).ok_or_else(|| {
                statement_error(
                    label,
                    format!("condition operator {operator_name:?} is not supported by the KMS double"),
                )
            })?;
            let Value::Object(keys) = block else {
                return Err(statement_error(
                    label,
                    format!("{operator_name} must map condition keys to values"),
                ));
            };
            for (key_name, values) in keys {
                let key = ConditionKey::parse(key_name).ok_or_else(|| {
                    statement_error(
                        label,
                        format!("condition key {key_name:?} is not supported by the KMS double"),
                    )
                })?;
                let values = string_list(values).filter(|v| !v.is_empty()).ok_or_else(|| {
                    statement_error(
                        label,
                        format!("{operator_name} {key_name}: values must be a string or a list"),
                    )
                })?;
                if operator == Operator::Null && values.iter().any(|v| v != "true" && v != "false") {
                    return Err(statement_error(
                        label,
                        format!("Null {key_name}: the value must be true or false"),
                    ));
                }
                conditions.push(Condition { operator, key, values });
            }
        }
        Ok(conditions)
    }

    fn matches(&self, request: &RequestContext<'_>) -> Result<(), Miss> {
        let principal = match &self.principals {
            Principals::Anyone => true,
            Principals::Aws(list) => list.iter().any(|p| principal_matches(p, request.caller_arn)),
            Principals::NoIamCaller => false,
        };
        let action = self
            .actions
            .iter()
            .any(|a| wildcard_match(&a.to_ascii_lowercase(), &request.action.to_ascii_lowercase()));
        let resource = self.resources.iter().any(|r| wildcard_match(r, request.resource));
        if !(principal && action && resource) {
            return Err(Miss::Scope);
        }
        self.conditions.iter().try_for_each(|c| c.holds(request).map_err(Miss::Condition))
    }
}

impl Condition {
    /// Ok, or why not (the request's value is a PCR or context value, never key material).
    fn holds(&self, request: &RequestContext<'_>) -> Result<(), String> {
        let actual = request.value_of(&self.key);
        let any_equal = |ignore_case: bool| {
            actual.as_deref().is_some_and(|a| {
                self.values.iter().any(|v| if ignore_case { v.eq_ignore_ascii_case(a) } else { v == a })
            })
        };
        let holds = match self.operator {
            Operator::StringEquals => any_equal(false),
            Operator::StringEqualsIgnoreCase => any_equal(true),
            Operator::StringNotEquals => !any_equal(false),
            Operator::StringNotEqualsIgnoreCase => !any_equal(true),
            Operator::Null => self.values.iter().any(|v| (v == "true") == actual.is_none()),
        };
        if holds {
            return Ok(());
        }
        let found = match (&actual, &self.key) {
            (Some(value), _) => format!("the request has {value}"),
            (None, ConditionKey::ImageSha384 | ConditionKey::Pcr(_)) if request.recipient_pcrs.is_none() => {
                "the request has no Recipient attestation".to_string()
            }
            (None, _) => "the request has no such value".to_string(),
        };
        Err(format!("{} {} {:?} does not hold: {found}", self.operator, self.key, self.values))
    }
}

/// `*` matches any run of characters, `?` one character; everything else literally.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The account id of an ARN (`arn:PARTITION:SERVICE:REGION:ACCOUNT:...`).
pub fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// Whether a policy principal names the caller: the same ARN, the caller's account (root ARN
/// or bare id), or the role of an assumed-role session.
fn principal_matches(principal: &str, caller: &str) -> bool {
    if principal == caller {
        return true;
    }
    let caller_account = account_of(caller);
    let root_account =
        principal.strip_prefix("arn:aws:iam::").and_then(|rest| rest.strip_suffix(":root")).or_else(|| {
            (principal.len() == 12 && principal.bytes().all(|b| b.is_ascii_digit())).then_some(principal)
        });
    if root_account.is_some() && root_account == caller_account {
        return true;
    }
    // arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION is a session of arn:aws:iam::ACCOUNT:role/ROLE.
    if let (Some(account), Some(rest)) = (caller_account, caller.split(':').nth(5))
        && let Some(role) = rest.strip_prefix("assumed-role/").and_then(|r| r.split('/').next())
    {
        return principal == format!("arn:aws:iam::{account}:role/{role}");
    }
    false
}

/// Lowercase hex, as the PCR condition keys compare.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "arn:aws:iam::123456789012:role/kv-enclave";
    const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/fleet";

    fn pcrs(fill: u8) -> BTreeMap<usize, Vec<u8>> {
        (0..16).map(|i| (i, vec![if i < 3 { fill + i as u8 } else { 0 }; 48])).collect()
    }

    fn pcr_hex(fill: u8, index: usize) -> String {
        hex(&pcrs(fill)[&index])
    }

    fn request<'a>(
        action: &'a str,
        context: &'a BTreeMap<String, String>,
        recipient: Option<&'a BTreeMap<usize, Vec<u8>>>,
    ) -> RequestContext<'a> {
        RequestContext {
            action,
            resource: KEY,
            caller_arn: CALLER,
            encryption_context: context,
            recipient_pcrs: recipient,
        }
    }

    /// The shape of the fleet policy: the account administers, the enclave role may get data keys
    /// only for attested images (two PCR sets: the current and the next release), and a Deny
    /// refuses any data key that would leave KMS unwrapped.
    fn fleet_policy() -> Policy {
        let text = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Admin",
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::123456789012:role/admin"},
                    "Action": ["kms:Describe*", "kms:Put*"],
                    "Resource": "*"
                },
                {
                    "Sid": "CurrentRelease",
                    "Effect": "Allow",
                    "Principal": {"AWS": [CALLER]},
                    "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
                    "Resource": "*",
                    "Condition": {"StringEqualsIgnoreCase": {
                        "kms:RecipientAttestation:ImageSha384": pcr_hex(0x10, 0),
                        "kms:RecipientAttestation:PCR1": pcr_hex(0x10, 1),
                        "kms:RecipientAttestation:PCR2": pcr_hex(0x10, 2)
                    }}
                },
                {
                    "Sid": "NextRelease",
                    "Effect": "Allow",
                    "Principal": {"AWS": CALLER},
                    "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
                    "Resource": "*",
                    "Condition": {"StringEquals": {
                        "kms:RecipientAttestation:PCR0": [pcr_hex(0x20, 0)],
                        "kms:RecipientAttestation:PCR2": pcr_hex(0x20, 2)
                    }}
                },
                {
                    "Sid": "NoPlaintextDataKeys",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
                    "Resource": "*",
                    "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}
                }
            ]
        });
        Policy::from_json(&text.to_string()).expect("the fleet policy loads")
    }

    fn is_allowed_by(decision: &Decision, sid: &str) -> bool {
        matches!(decision, Decision::Allow { statement } if statement == &format!("{sid:?}"))
    }

    #[test]
    fn an_allow_per_pcr_set_admits_each_attested_image() {
        let policy = fleet_policy();
        let context = BTreeMap::new();
        let current = pcrs(0x10);
        let next = pcrs(0x20);
        let decision = policy.evaluate(&request("kms:GenerateDataKey", &context, Some(&current)));
        assert!(is_allowed_by(&decision, "CurrentRelease"), "{decision:?}");
        let decision = policy.evaluate(&request("kms:Decrypt", &context, Some(&next)));
        assert!(is_allowed_by(&decision, "NextRelease"), "{decision:?}");
    }

    #[test]
    fn other_pcrs_are_denied_naming_the_pcr_that_did_not_match() {
        let policy = fleet_policy();
        let context = BTreeMap::new();
        // The current release's PCR0 and PCR1 but another PCR2 (another signing certificate).
        let mut other = pcrs(0x10);
        other.insert(2, vec![0x99; 48]);
        let Decision::Deny { reason } = policy.evaluate(&request("kms:Decrypt", &context, Some(&other)))
        else {
            panic!("a PCR2 in neither set is allowed");
        };
        assert!(reason.contains("kms:Decrypt"), "{reason}");
        assert!(reason.contains("kms:RecipientAttestation:PCR2"), "{reason}");
        assert!(reason.contains(&hex(&[0x99; 48])), "{reason}");
        assert!(!reason.contains("PCR1 "), "PCR1 matched the current release: {reason}");
    }

    #[test]
    fn the_null_deny_refuses_requests_without_a_recipient() {
        let policy = fleet_policy();
        let context = BTreeMap::new();
        for action in ["kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:Decrypt"] {
            let Decision::Deny { reason } = policy.evaluate(&request(action, &context, None)) else {
                panic!("{action} without a Recipient is allowed");
            };
            assert!(reason.contains("explicitly denied by statement \"NoPlaintextDataKeys\""), "{reason}");
        }
    }

    #[test]
    fn a_deny_wins_over_a_matching_allow() {
        let mut text: Value = serde_json::from_str(&fleet_policy_text()).unwrap();
        text["Statement"].as_array_mut().unwrap().push(serde_json::json!({
            "Effect": "Deny", "Principal": {"AWS": "123456789012"}, "Action": "kms:Decrypt",
            "Condition": {"StringNotEquals": {"kms:EncryptionContext:purpose": "fleet-keys"}}
        }));
        let policy = Policy::from_json(&text.to_string()).unwrap();
        let current = pcrs(0x10);
        let mut context = BTreeMap::from([("Purpose".to_string(), "fleet-keys".to_string())]);
        let decision = policy.evaluate(&request("kms:Decrypt", &context, Some(&current)));
        assert!(
            is_allowed_by(&decision, "CurrentRelease"),
            "context key names match case-insensitively: {decision:?}"
        );
        context.clear();
        let decision = policy.evaluate(&request("kms:Decrypt", &context, Some(&current)));
        assert!(
            matches!(&decision, Decision::Deny { reason } if reason.contains("statement #1")),
            "{decision:?}"
        );
    }

    fn fleet_policy_text() -> String {
        serde_json::json!({"Statement": [{
            "Sid": "CurrentRelease", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "kms:*",
            "Condition": {"StringEquals": {"kms:CallerAccount": "123456789012"}}
        }]})
        .to_string()
    }

    #[test]
    fn an_account_root_principal_matches_callers_of_that_account_only() {
        let policy = Policy::from_json(&fleet_policy_text()).unwrap();
        let context = BTreeMap::new();
        let mut req = request("kms:DescribeKey", &context, None);
        assert!(matches!(policy.evaluate(&req), Decision::Allow { .. }));
        req.caller_arn = "arn:aws:sts::123456789012:assumed-role/kv-enclave/i-0abc";
        assert!(matches!(policy.evaluate(&req), Decision::Allow { .. }));
        req.caller_arn = "arn:aws:iam::999999999999:role/kv-enclave";
        let Decision::Deny { reason } = policy.evaluate(&req) else { panic!("another account is allowed") };
        assert!(reason.contains("no Allow statement grants kms:DescribeKey"), "{reason}");
    }

    #[test]
    fn a_role_principal_matches_its_assumed_role_sessions() {
        assert!(principal_matches(CALLER, "arn:aws:sts::123456789012:assumed-role/kv-enclave/i-0abc"));
        assert!(!principal_matches(CALLER, "arn:aws:sts::123456789012:assumed-role/kv-enclave-2/i-0abc"));
        assert!(!principal_matches(CALLER, "arn:aws:iam::123456789012:role/other"));
    }

    #[test]
    fn action_wildcards_follow_iam() {
        assert!(wildcard_match("kms:*", "kms:Decrypt"));
        assert!(wildcard_match("kms:generatedatakey*", "kms:generatedatakey"));
        assert!(wildcard_match("kms:generatedatakey*", "kms:generatedatakeywithoutplaintext"));
        assert!(wildcard_match("kms:?ecrypt", "kms:decrypt"));
        assert!(!wildcard_match("kms:generatedatakey", "kms:generatedatakeypair"));
        assert!(!wildcard_match("kms:de*t", "kms:describekey"));
        assert!(wildcard_match("*", ""));
    }

    fn load_error(statement: Value) -> PolicyError {
        let text = serde_json::json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "Fine", "Effect": "Allow", "Principal": "*", "Action": "kms:*"},
            statement
        ]});
        Policy::from_json(&text.to_string()).expect_err("the policy loads")
    }

    #[test]
    fn an_unknown_operator_is_refused_at_load_naming_the_statement() {
        let err = load_error(serde_json::json!({
            "Sid": "Attested", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
            "Condition": {"StringLike": {"kms:RecipientAttestation:PCR0": "ab*"}}
        }));
        assert_eq!(
            err.to_string(),
            "statement \"Attested\": condition operator \"StringLike\" is not supported by the KMS double"
        );
        let err = load_error(serde_json::json!({
            "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
            "Condition": {"ForAnyValue:StringEquals": {"kms:CallerAccount": "1"}}
        }));
        assert!(
            err.to_string().starts_with("statement #1: condition operator \"ForAnyValue:StringEquals\""),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_condition_key_or_element_is_refused_at_load() {
        let err = load_error(serde_json::json!({
            "Sid": "S", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
            "Condition": {"StringEquals": {"aws:PrincipalArn": "x"}}
        }));
        assert!(err.to_string().contains("condition key \"aws:PrincipalArn\""), "{err}");
        let err = load_error(serde_json::json!({
            "Sid": "S", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
            "Condition": {"StringEquals": {"kms:RecipientAttestation:PCR32": "x"}}
        }));
        assert!(err.to_string().contains("PCR32"), "{err}");
        let err = load_error(
            serde_json::json!({"Sid": "S", "Effect": "Allow", "Principal": "*", "NotAction": "kms:Decrypt"}),
        );
        assert!(err.to_string().contains("NotAction"), "{err}");
    }
}
