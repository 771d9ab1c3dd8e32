//! Closed-loop echo load: C connections, each doing N round trips of 1 KiB (one outstanding
//! request per connection), through ENTRY. Unlike `bench`'s time-bounded latency figure, every
//! connection does the same number of requests, so the mean is the true per-request time and
//! the spread of per-connection means shows how fairly a proxy serves its connections.
//!
//! ```sh
//! target/release/examples/echo_load 127.0.0.1:PORT 64 2000
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [entry, c, n] => {
            entry.parse::<SocketAddr>().ok().zip(c.parse::<usize>().ok()).zip(n.parse::<usize>().ok())
        }
        _ => None,
    };
    let Some(((entry, c), n)) = parsed.filter(|((_, c), n)| *c > 0 && *n > 0) else {
        eprintln!("usage: echo_load ENTRY(ip:port) CONNECTIONS(>0) REQUESTS_PER_CONNECTION(>0)");
        return ExitCode::from(2);
    };
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(entry).await?;
            s.set_nodelay(true)?;
            let msg = [0xa5u8; 1024];
            let mut back = [0u8; 1024];
            let mut took = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                s.write_all(&msg).await?;
                s.read_exact(&mut back).await?;
                took.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, std::io::Error>(took)
        }));
    }
    let mut all = Vec::with_capacity(c * n);
    let mut means = Vec::with_capacity(c);
    for task in tasks {
        match task.await {
            Ok(Ok(took)) => {
                means.push(took.iter().sum::<u64>() / n as u64);
                all.extend(took);
            }
            Ok(Err(e)) => {
                eprintln!("echo_load: a connection through {entry} failed: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("echo_load: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let elapsed = t.elapsed();
    all.sort_unstable();
    means.sort_unstable();
    let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    println!(
        "{} requests in {:.2} s: {:.0} req/s; p50 {} p90 {} p99 {} mean {} µs; per-connection mean {}..{} µs",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        all.iter().sum::<u64>() / all.len() as u64,
        means[0],
        means[means.len() - 1]
    );
    ExitCode::SUCCESS
}
