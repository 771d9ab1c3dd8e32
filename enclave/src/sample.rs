//! The built-in sample data set (`--sample-data`): a few keys to try the API without data files.

use crate::data::{Mutation, Record, Value};

/// The sample records, as if loaded from one snapshot at logical time 1.
pub fn records() -> Vec<Record> {
    let string = |key: &str, value: &str| Record {
        key: key.into(),
        logical_commit_time: 1,
        mutation: Mutation::Update(Value::String(value.into())),
    };
    vec![
        string("hello", "world"),
        string("example-key", "example-value"),
        string("json-key", r#"{"bid_floor":0.5,"categories":["news","sports"]}"#),
        string("https://ads.example/render/1", r#"{"size":"300x250"}"#),
        Record {
            key: "example-set".into(),
            logical_commit_time: 1,
            mutation: Mutation::Update(Value::StringSet(vec!["alpha".into(), "beta".into(), "gamma".into()])),
        },
        string("interest-group-1", r#"{"priorityVector":{"signal":1}}"#),
    ]
}
