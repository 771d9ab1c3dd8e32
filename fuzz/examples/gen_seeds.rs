//! Writes the seed corpora `fuzz/seeds/TARGET/` from the repository's own writers and fixtures:
//! kv-server's `write_csv`/`write_avro` and its Avro fixtures (made by fastavro and flatc), the
//! SOCKS5 encoders, kv-protocol's framing and encryption, and the store and policy scenarios of
//! the unit tests, coded by the targets' own encoders.
//!
//! Run: `cd fuzz && cargo run --example gen_seeds` (it replaces every seed directory). The seeds
//! are deterministic except `v2_request/encrypted-*` (HPKE encapsulation is randomized).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use kv_server::data::{Mutation, Record, Value, write_avro, write_csv};
use kv_server::kv_protocol::cbor::{self, Argument, Partition};
use kv_server::kv_protocol::{client, framing, keys::KeyPair};
use nitro_kv_fuzz::store_apply::{self, Op};
use nitro_kv_fuzz::{TARGETS, policy_name, socks5_policy};
use transport::socks5::{
    Address, Command, ReplyCode, Request, encode_greeting, encode_reply, encode_request,
};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = Seeds::new(&root.join("seeds"));
    data_csv(&mut seeds);
    data_avro(&mut seeds, &root.join("../enclave/tests/fixtures"));
    socks5(&mut seeds);
    policy(&mut seeds);
    v2_request(&mut seeds);
    store(&mut seeds);
    for (name, _) in TARGETS {
        assert!(seeds.written.contains_key(*name), "no seeds for {name}");
    }
    for (target, (files, bytes)) in &seeds.written {
        println!("{target}: {files} seeds, {bytes} bytes");
    }
}

struct Seeds {
    dir: PathBuf,
    /// Per target: files and bytes written.
    written: BTreeMap<String, (usize, usize)>,
}

impl Seeds {
    fn new(dir: &Path) -> Seeds {
        Seeds { dir: dir.to_owned(), written: BTreeMap::new() }
    }

    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.dir.join(target);
        if !self.written.contains_key(target) {
            // Regenerated whole: a seed dropped here disappears from the corpus.
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create the seed directory");
        }
        fs::write(dir.join(name), bytes).expect("write a seed");
        let entry = self.written.entry(target.to_owned()).or_default();
        entry.0 += 1;
        entry.1 += bytes.len();
    }
}

fn update(key: &str, t: i64, v: Value) -> Record {
    Record { key: key.into(), logical_commit_time: t, mutation: Mutation::Update(v) }
}

fn string(key: &str, t: i64, v: &str) -> Record {
    update(key, t, Value::String(v.into()))
}

fn set(key: &str, t: i64, members: &[&str]) -> Record {
    update(key, t, Value::StringSet(members.iter().map(|m| m.to_string()).collect()))
}

fn delete(key: &str, t: i64) -> Record {
    Record { key: key.into(), logical_commit_time: t, mutation: Mutation::Delete }
}

/// The records of enclave/src/data/tests.rs `sample()`: quoting, sets, extremes, a delete.
fn sample() -> Vec<Record> {
    vec![
        string("k1", 10, "hello, \"world\"\nnext line"),
        set("k2", -5, &["a", "b c", "\u{fc}"]),
        set("k3", i64::MAX, &[]),
        delete("k4", 7),
        string("k5", 0, ""),
    ]
}

fn data_csv(seeds: &mut Seeds) {
    let csv = |records: &[Record]| {
        let mut out = Vec::new();
        write_csv(records, &mut out).expect("CSV can carry these records");
        out
    };
    seeds.put("data_csv", "sample.csv", &csv(&sample()));
    seeds.put("data_csv", "sample-data.csv", &csv(&kv_server::sample::records()));
    seeds.put("data_csv", "header-only.csv", &csv(&[]));
    // From the CSV unit tests: the reference column order, case, a BOM, number sets, spaces.
    seeds.put(
        "data_csv",
        "reference-order.csv",
        "\u{feff}key,logical_commit_time,mutation_type,value,value_type\n\
         a,1,Update,x,STRING\n\
         b,2,delete,,\n\
         c,3,UPDATE,1|+2| 4294967295,uint32_set\n\
         d,4,update,18446744073709551615,uint64_set\n\
         e, 5 ,update,,string_set\n"
            .as_bytes(),
    );
    seeds.put(
        "data_csv",
        "crlf-quoted.csv",
        b"key,mutation_type,logical_commit_time,value,value_type\r\n\
          a,UPDATE,1,\"two\r\nlines\",string\r\n\
          b,UPDATE,2,x|y,string_set\r\n\r\n",
    );
}

/// Splits a null-codec container into its header's sync marker and its blocks (count, data).
fn null_blocks(file: &[u8]) -> ([u8; 16], Vec<(i64, Vec<u8>)>) {
    fn long(b: &[u8], pos: &mut usize) -> i64 {
        let mut v = 0u64;
        for i in 0.. {
            let byte = b[*pos];
            *pos += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                break;
            }
        }
        (v >> 1) as i64 ^ -((v & 1) as i64)
    }
    let sync: [u8; 16] = file[file.len() - 16..].try_into().expect("16 bytes");
    let mut pos = file.windows(16).position(|w| w == sync).expect("the header's sync marker") + 16;
    let mut blocks = Vec::new();
    while pos < file.len() {
        let count = long(file, &mut pos);
        let size = long(file, &mut pos) as usize;
        blocks.push((count, file[pos..pos + size].to_vec()));
        pos += size + 16;
    }
    (sync, blocks)
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// A container with the given codec, sync marker and (already coded) blocks.
fn container(codec: &str, sync: &[u8; 16], blocks: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"Obj\x01".to_vec();
    put_long(&mut out, 2);
    put_bytes(&mut out, b"avro.schema");
    put_bytes(&mut out, br#""bytes""#);
    put_bytes(&mut out, b"avro.codec");
    put_bytes(&mut out, codec.as_bytes());
    put_long(&mut out, 0);
    out.extend_from_slice(sync);
    for (count, data) in blocks {
        put_long(&mut out, *count);
        put_bytes(&mut out, data);
        out.extend_from_slice(sync);
    }
    out
}

/// The same records, each block raw-deflated (RFC 1951, as Avro's deflate codec).
fn deflated(null_file: &[u8]) -> Vec<u8> {
    let (sync, blocks) = null_blocks(null_file);
    let blocks: Vec<(i64, Vec<u8>)> = blocks
        .into_iter()
        .map(|(count, data)| {
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(&data).expect("deflate to memory");
            (count, z.finish().expect("deflate to memory"))
        })
        .collect();
    container("deflate", &sync, &blocks)
}

fn data_avro(seeds: &mut Seeds, fixtures: &Path) {
    let avro = |records: &[Record]| {
        let mut out = Vec::new();
        write_avro(records, &mut out).expect("write to memory");
        out
    };
    seeds.put("data_avro", "sample.avro", &avro(&sample()));
    seeds.put("data_avro", "sample-data.avro", &avro(&kv_server::sample::records()));
    seeds.put("data_avro", "empty.avro", &avro(&[]));
    seeds.put("data_avro", "sample-deflate.avro", &deflated(&avro(&sample())));
    // One 64 KiB value in a block of about 100 bytes: the inflation budget's deflate side.
    let big = string("big", 1, &"a".repeat(64 * 1024));
    seeds.put("data_avro", "high-ratio-deflate.avro", &deflated(&avro(&[big])));
    // The fixtures of independent writers (fastavro containers of flatc rows: number sets, extra
    // metadata, several blocks). The null one is cut after its first block to stay small.
    let read = |name: &str| fs::read(fixtures.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    seeds.put("data_avro", "fastavro-deflate.avro", &read("fastavro_deflate_flatc_records.avro"));
    let null = read("fastavro_null_flatc_records.avro");
    let (sync, blocks) = null_blocks(&null);
    seeds.put("data_avro", "fastavro-null-first-block.avro", &container("null", &sync, &blocks[..1]));
}

fn socks5(seeds: &mut Seeds) {
    let request = |dest: Address| {
        encode_request(&Request { command: Command::Connect, dest }).expect("a seed request encodes")
    };
    let v4: SocketAddr = "203.0.113.7:443".parse().expect("an address");
    let v6: SocketAddr = "[2001:db8::1]:8443".parse().expect("an address");
    seeds.put("socks5_request", "connect-ipv4", &request(Address::Ip(v4)));
    seeds.put("socks5_request", "connect-ipv6", &request(Address::Ip(v6)));
    seeds.put(
        "socks5_request",
        "connect-domain",
        &request(Address::Domain("kms.us-east-1.amazonaws.com".into(), 443)),
    );
    let bind = Request { command: Command::Bind, dest: Address::Domain("a".into(), 1) };
    seeds.put("socks5_request", "bind-domain", &encode_request(&bind).expect("encodes"));
    seeds.put("socks5_request", "reply-succeeded", &encode_reply(ReplyCode::Succeeded, Some(v6)));
    seeds.put("socks5_request", "reply-not-allowed", &encode_reply(ReplyCode::NotAllowed, None));
    seeds.put("socks5_greeting", "no-auth", &encode_greeting(&[0]).expect("encodes"));
    seeds.put("socks5_greeting", "three-methods", &encode_greeting(&[2, 0, 1]).expect("encodes"));
    seeds.put(
        "socks5_greeting",
        "no-auth-then-request",
        &[encode_greeting(&[0]).expect("encodes"), request(Address::Ip(v4))].concat(),
    );
}

fn policy(seeds: &mut Seeds) {
    for (i, (port, pattern, name)) in [
        (443, "*.amazonaws.com", "kms.us-east-1.amazonaws.com"),
        (443, "*.amazonaws.com", "amazonaws.com"),
        (8000, "allowed.com", "Allowed.COM."),
        (443, "example.com", "0x7f000001"),
        (4317, "collector.local", "127.1"),
        (80, "*.a-b_c.example", "x.a-b_c.example"),
    ]
    .into_iter()
    .enumerate()
    {
        seeds.put("policy_name", &format!("rule-{i}"), &policy_name::encode(port, pattern, name));
    }

    let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
    let domain = |name: &str, port| Address::Domain(name.into(), port);
    let at = |s: &str, port| Address::Ip(SocketAddr::new(ip(s), port));
    let aws = "host *.amazonaws.com 443";
    let cases: Vec<(&str, Vec<&str>, Address, Vec<IpAddr>)> = vec![
        (
            "name-resolves-public",
            vec![aws],
            domain("kms.us-east-1.amazonaws.com", 443),
            vec![ip("52.94.0.1")],
        ),
        (
            "name-resolves-to-imds",
            vec![aws, "cidr 169.254.0.0/16 80"],
            domain("evil.amazonaws.com", 443),
            vec![ip("169.254.169.254"), ip("::ffff:169.254.169.254"), ip("fd00:ec2::254")],
        ),
        ("imds-by-address", vec!["cidr 0.0.0.0/0 *"], at("169.254.169.254", 80), vec![]),
        ("imds-allowed-exactly", vec!["ip 169.254.169.254 80"], at("169.254.169.254", 80), vec![]),
        ("imds-hex-name", vec!["ip 169.254.169.254 80", aws], domain("0xa9fea9fe", 80), vec![]),
        ("imds6-mapped", vec!["cidr ::/0 *", "cidr fc00::/7 *"], at("::ffff:169.254.169.254", 80), vec![]),
        ("imds6", vec!["cidr fd00::/8 *"], at("fd00:ec2::254", 80), vec![]),
        ("loopback-collector", vec!["ip 127.0.0.1 4317"], domain("127.1", 4317), vec![]),
        (
            "loopback-wrong-port",
            vec!["ip 127.0.0.1 4317", "cidr 0.0.0.0/0 1-65535"],
            at("127.0.0.1", 4318),
            vec![],
        ),
        ("loopback6", vec!["ip ::1 4317", "ip [::1] 80"], at("::1", 80), vec![]),
        (
            "nat64-and-compatible",
            vec!["cidr 10.0.0.0/8 *"],
            domain("internal.example", 443),
            vec![ip("64:ff9b::a00:1"), ip("::a00:1")],
        ),
        (
            "port-range",
            vec!["host allowed.com 443,8000-8100", "host *.example.com *"],
            domain("Allowed.COM.", 8080),
            vec![ip("198.51.100.1"), ip("93.184.216.34")],
        ),
        (
            "bad-rules-dropped",
            vec!["host * 443", "cidr 10.0.0.1/8 *", "ip 300.1.1.1 1", "host ok.example 0"],
            domain("ok.example", 1),
            vec![],
        ),
    ];
    for (name, rules, dest, answers) in cases {
        seeds.put("socks5_policy", name, &socks5_policy::encode(&rules, dest, &answers));
    }
}

fn v2_request(seeds: &mut Seeds) {
    let request = cbor::Request {
        metadata: Some(BTreeMap::from([("hostname".into(), "example.com".into())])),
        partitions: vec![Partition {
            id: 0,
            compression_group_id: 0,
            metadata: Some(BTreeMap::from([("slotSize".into(), "100,200".into())])),
            arguments: vec![
                Argument { tags: vec!["interestGroupNames".into()], data: vec!["InterestGroup1".into()] },
                Argument { tags: vec!["keys".into()], data: vec!["keyA".into(), "FUZZSECRET".into()] },
            ],
        }],
        accept_compression: vec!["none".into(), "gzip".into()],
    };
    let plain = cbor::encode_request(&request).expect("a request encodes");
    let framed = framing::frame_request(&plain).expect("frames");
    seeds.put("v2_request", "framed-cbor", &framed);
    seeds.put("v2_request", "framed-empty", &framing::frame_request(&[]).expect("frames"));
    // Encrypted to a key of id 1 that the target does not hold: the header and the HPKE
    // decapsulation run; the AEAD refuses.
    let key = KeyPair::generate(1).expect("the OS random number generator");
    let (sealed, _) = client::encrypt_request(1, &key.public, &framed).expect("encrypts");
    seeds.put("v2_request", "encrypted-other-key", &sealed);
}

fn store(seeds: &mut Seeds) {
    let records = |rs: Vec<Record>| rs.into_iter().map(Op::Record).collect::<Vec<_>>();
    let one_by_one =
        |rs: Vec<Record>| rs.into_iter().flat_map(|r| [Op::Record(r), Op::EndBatch]).collect::<Vec<_>>();
    // The scenarios of enclave/src/store.rs's unit tests.
    let scenarios: Vec<(&str, Vec<Op>)> = vec![
        (
            "newest-wins",
            records(vec![
                string("a", 5, "b"),
                string("a", 3, "z"),
                string("a", 9, "a"),
                string("a", 9, "ab"),
            ]),
        ),
        (
            "ties-delete-wins",
            one_by_one(vec![string("a", 7, "b"), delete("a", 7), string("a", 7, "a"), set("a", 7, &["z"])]),
        ),
        (
            "ties-larger-set",
            records(vec![
                string("b", 7, "b"),
                set("b", 7, &["a"]),
                set("b", 7, &["a", "b"]),
                string("b", 7, "z"),
            ]),
        ),
        ("set-dedup", records(vec![set("c", 1, &["b", "a", "b", "", "a", "ab", ""]), set("d", 1, &[])])),
        (
            "tombstone-blocks-older",
            one_by_one(vec![string("a", 1, "a"), delete("a", 5), string("a", 4, "z"), string("a", 6, "b")]),
        ),
        (
            "cleanup-floor",
            [
                records(vec![string("a", 1, "a"), delete("a", 10), delete("b", 15), string("c", 5, "z")]),
                vec![Op::Cleanup(12)],
                records(vec![
                    string("a", 9, "b"),
                    string("a", 12, "ab"),
                    string("b", 14, "b"),
                    string("a", 13, "ba"),
                ]),
                vec![Op::Cleanup(10), Op::Cleanup(i64::MAX)],
                records(vec![string("d", i64::MAX, "z")]),
            ]
            .concat(),
        ),
        (
            "extremes-and-literals",
            records(vec![
                string("a", i64::MIN, "a"),
                delete("b", -1),
                string("a key spelled out", 1_700_000_000, "a value spelled out"),
                set("\u{fc}", i64::MAX, &["\u{e9}", "a|b", "\u{e9}"]),
            ]),
        ),
    ];
    for (name, ops) in scenarios {
        let bytes = store_apply::encode(&ops);
        assert_eq!(store_apply::decode(&bytes), ops, "{name}: the coding round trips");
        seeds.put("store_apply", name, &bytes);
    }
}
