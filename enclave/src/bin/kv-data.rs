//! `kv-data`: make and check kv-server data files offline (docs/data-files.md).

#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kv_server::data::{self, DataFileName, Mutation, Record, Value};

#[derive(Parser)]
#[command(
    name = "kv-data",
    version,
    about = "Make and check kv-server data files (CSV and Avro/FlatBuffers)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a data file (CSV or Avro) to another format; Avro by default.
    Convert {
        /// Input file (format detected from its content).
        #[arg(long = "in")]
        input: PathBuf,
        /// Output file, normally named DELTA_<16 digits> or SNAPSHOT_<16 digits>. Written to a
        /// temporary name beside it and renamed, so a watching server never sees half a file.
        #[arg(long)]
        out: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutFormat::Avro)]
        format: OutFormat,
    },
    /// Check data files; prints record counts, exits non-zero if any file is bad.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a data file's records as CSV on stdout.
    Dump {
        /// File to print.
        file: PathBuf,
    },
    /// Write a synthetic snapshot (unique keys, random values) for benchmarks and tests.
    Generate {
        /// Number of records.
        #[arg(long)]
        records: u64,
        /// Key length in bytes.
        #[arg(long, default_value_t = 16)]
        key_len: usize,
        /// Value length in bytes.
        #[arg(long, default_value_t = 100)]
        value_len: usize,
        /// Seed of the generator: the same arguments give the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// logical_commit_time of every record.
        #[arg(long, default_value_t = 1)]
        commit_time: i64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutFormat::Avro)]
        format: OutFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutFormat {
    Avro,
    Csv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert { input, out, format } => convert(&input, &out, format),
        Command::Validate { files } => return validate(&files),
        Command::Dump { file } => dump(&file),
        Command::Generate { records, key_len, value_len, seed, commit_time, out, format } => {
            generate(records, key_len, value_len, seed, commit_time, &out, format)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-data: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> Result<Vec<Record>, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: read: {e}", path.display()))?;
    data::parse_file(&path.display().to_string(), &bytes).map_err(|e| e.to_string())
}

fn warn_if_not_data_file_name(path: &Path) {
    if DataFileName::parse(&path.to_string_lossy()).is_none() {
        eprintln!(
            "kv-data: note: {} is not named DELTA_<16 digits> or SNAPSHOT_<16 digits>; \
             kv-server ignores such files",
            path.display()
        );
    }
}

/// Writes `records` to `out` through a temporary file in the same directory, then renames it.
fn write_file(records: &[Record], out: &Path, format: OutFormat) -> Result<(), String> {
    let file_name = out.file_name().ok_or_else(|| format!("{}: not a file path", out.display()))?;
    // A leading dot and a suffix keep the temporary name from looking like a data file.
    let tmp = out.with_file_name(format!(".{}.kv-data-tmp", file_name.to_string_lossy()));
    let result = (|| -> io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
        match format {
            OutFormat::Avro => data::write_avro(records, &mut w)?,
            OutFormat::Csv => data::write_csv(records, &mut w)?,
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, out)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("{}: write: {e}", out.display())
    })
}

fn convert(input: &Path, out: &Path, format: OutFormat) -> Result<(), String> {
    warn_if_not_data_file_name(out);
    let records = read(input)?;
    write_file(&records, out, format)?;
    println!("{}: {} records -> {}", input.display(), records.len(), out.display());
    Ok(())
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut failed = 0;
    for path in files {
        match read(path) {
            Ok(records) => {
                let deletes = records.iter().filter(|r| r.mutation == Mutation::Delete).count();
                println!(
                    "{}: ok, {} records ({} updates, {} deletes)",
                    path.display(),
                    records.len(),
                    records.len() - deletes,
                    deletes
                );
                warn_if_not_data_file_name(path);
            }
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("kv-data: {failed} of {} files are invalid", files.len());
        ExitCode::FAILURE
    }
}

fn dump(file: &Path) -> Result<(), String> {
    let records = read(file)?;
    let stdout = io::stdout();
    let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
    match data::write_csv(&records, &mut w).and_then(|()| w.flush()) {
        // `kv-data dump FILE | head` closes the pipe early: not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| format!("{}: dump: {e}", file.display())),
    }
}

/// splitmix64: a small, fast, well-mixed generator; deterministic for a seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
}

/// The splitmix64 finalizer: a bijection on u64, so distinct inputs give distinct keys.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn generate(
    n: u64,
    key_len: usize,
    value_len: usize,
    seed: u64,
    commit_time: i64,
    out: &Path,
    format: OutFormat,
) -> Result<(), String> {
    // Keys of 16+ bytes: the hex of a bijective mix of the index (unique, unordered), padded.
    // Shorter keys: the zero-padded decimal index, which must fit.
    // key_len < 16, so 10^key_len fits in u64.
    let short_key_capacity = (key_len < 16).then(|| 10u64.pow(key_len as u32));
    if key_len == 0 || short_key_capacity.is_some_and(|cap| n > cap) {
        return Err(format!("--key-len {key_len} cannot hold {n} unique keys"));
    }
    let n_usize = usize::try_from(n).map_err(|_| format!("--records {n} is too large"))?;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = SplitMix(seed);
    let salt = rng.next();
    let mut records = Vec::with_capacity(n_usize);
    for i in 0..n {
        let key = if key_len >= 16 {
            let mut k = format!("{:016x}", mix(i.wrapping_add(salt)));
            k.extend(std::iter::repeat_n('k', key_len - 16));
            k
        } else {
            format!("{i:0key_len$}")
        };
        let mut value = String::with_capacity(value_len);
        let mut bits = 0u64;
        for j in 0..value_len {
            if j.is_multiple_of(10) {
                bits = rng.next();
            }
            value.push(ALPHABET[(bits & 63) as usize] as char);
            bits >>= 6;
        }
        records.push(Record {
            key: key.into(),
            logical_commit_time: commit_time,
            mutation: Mutation::Update(Value::String(value)),
        });
    }
    write_file(&records, out, format)?;
    println!("{}: {n} records", out.display());
    Ok(())
}
