//! The two ends of the L4 benchmark, plain blocking std networking so that
//! nothing but the path between them differs from run to run.
//!
//! Protocol, one server port for everything (so haproxy and agentguard each
//! need a single frontend / target):
//! 1. on accept the server sends one byte at once ([`HELLO`]);
//! 2. the client may then send a little-endian `u64` N, and the server sends N
//!    bytes and closes. A client that only wanted the first byte closes instead.
//!
//! The client prints its results on stdout as `key value…` lines (see
//! [`Report`]); the orchestrator parses them.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

const HELLO: u8 = b'!';
const BUF: usize = 256 * 1024;

/// Serves until killed. Prints the port it listens on (127.0.0.1) as the
/// first line of stdout.
pub fn serve() -> anyhow::Result<()> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind 127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{port}")?;
    stdout.flush()?;
    drop(stdout);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        // The first byte goes out from the accept loop, before any thread is
        // spawned, so the latency probe measures the path and not our spawn.
        if stream.write_all(&[HELLO]).is_err() {
            continue;
        }
        thread::spawn(move || {
            let _ = source(stream);
        });
    }
    Ok(())
}

fn source(mut stream: TcpStream) -> io::Result<()> {
    let mut request = [0u8; 8];
    match stream.read_exact(&mut request) {
        // A latency probe: the client closed after the first byte.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
        other => other?,
    }
    let mut left = u64::from_le_bytes(request);
    let buf = vec![0x5a_u8; BUF];
    while left > 0 {
        let n = usize::try_from(left).map_or(BUF, |l| l.min(BUF));
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server (or whatever stands in front of it).
    #[arg(long)]
    pub addr: SocketAddr,
    /// Bytes received by the single-stream run.
    #[arg(long)]
    pub one_stream_bytes: u64,
    /// Bytes received in total by the parallel run, split evenly over the streams.
    #[arg(long)]
    pub many_stream_bytes: u64,
    #[arg(long)]
    pub streams: usize,
    /// Sequential connect + first-byte probes.
    #[arg(long)]
    pub connects: usize,
}

/// What one client run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub one_stream_bytes_per_sec: f64,
    pub many_stream_bytes_per_sec: f64,
    /// Connect + first byte, one per probe.
    pub connect_first_byte: Vec<Duration>,
}

impl Report {
    const ONE: &str = "one_stream_bytes_per_sec";
    const MANY: &str = "many_stream_bytes_per_sec";
    const LATENCY: &str = "connect_first_byte_ns";

    fn print(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "{} {}", Self::ONE, self.one_stream_bytes_per_sec)?;
        writeln!(out, "{} {}", Self::MANY, self.many_stream_bytes_per_sec)?;
        write!(out, "{}", Self::LATENCY)?;
        for d in &self.connect_first_byte {
            write!(out, " {}", d.as_nanos())?;
        }
        writeln!(out)?;
        out.flush()
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut report = Self::default();
        let mut seen = 0;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let key = words.next();
            let mut number = |what: &str| -> anyhow::Result<f64> {
                let word = words
                    .next()
                    .with_context(|| format!("client output: `{what}` has no value"))?;
                word.parse()
                    .with_context(|| format!("client output: `{what}`: `{word}` is not a number"))
            };
            match key {
                Some(Self::ONE) => report.one_stream_bytes_per_sec = number(Self::ONE)?,
                Some(Self::MANY) => report.many_stream_bytes_per_sec = number(Self::MANY)?,
                Some(Self::LATENCY) => {
                    report.connect_first_byte = words
                        .map(|w| w.parse().map(Duration::from_nanos))
                        .collect::<Result<_, _>>()
                        .context("client output: bad latency sample")?;
                }
                _ => continue,
            }
            seen += 1;
        }
        if seen != 3 {
            bail!("client output is incomplete:\n{text}");
        }
        Ok(report)
    }
}

pub fn client(args: &ClientArgs) -> anyhow::Result<()> {
    if args.streams == 0 {
        bail!("--streams must be at least 1");
    }
    // Warm-up: fault in the paths (and the proxies' buffers) before timing.
    latency(args.addr, 50).context("warm-up probes")?;
    throughput(args.addr, 1, 16 << 20).context("warm-up transfer")?;

    let report = Report {
        one_stream_bytes_per_sec: throughput(args.addr, 1, args.one_stream_bytes)
            .context("1-stream transfer")?,
        many_stream_bytes_per_sec: throughput(args.addr, args.streams, args.many_stream_bytes)
            .with_context(|| format!("{}-stream transfer", args.streams))?,
        connect_first_byte: latency(args.addr, args.connects)
            .context("connect + first-byte probes")?,
    };
    report.print()?;
    Ok(())
}

/// Receives `total` bytes over `streams` connections at once; bytes per
/// second from the first stream's request to the last stream's last byte.
/// Every stream connects first and they all start together. Each stream keeps
/// its own clock: with 32 threads on a small machine, the thread that
/// released them may not run again until they are done.
fn throughput(addr: SocketAddr, streams: usize, total: u64) -> anyhow::Result<f64> {
    let per_stream = total / streams as u64;
    let ready = Arc::new(Barrier::new(streams));
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let ready = Arc::clone(&ready);
            thread::spawn(move || -> io::Result<(Instant, Instant)> {
                let connected = connect(addr);
                ready.wait();
                let start = Instant::now();
                receive(connected?, per_stream)?;
                Ok((start, Instant::now()))
            })
        })
        .collect();
    let mut span: Option<(Instant, Instant)> = None;
    for worker in workers {
        let (start, end) = match worker.join() {
            Ok(result) => result?,
            Err(_) => bail!("a client stream panicked"),
        };
        span = Some(span.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
    }
    let (start, end) = span.context("no streams")?;
    Ok((per_stream * streams as u64) as f64 / (end - start).as_secs_f64())
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    let mut hello = [0u8; 1];
    stream.read_exact(&mut hello)?;
    if hello[0] != HELLO {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected first byte from the server",
        ));
    }
    Ok(stream)
}

fn receive(mut stream: TcpStream, bytes: u64) -> io::Result<()> {
    stream.write_all(&bytes.to_le_bytes())?;
    let mut buf = vec![0u8; BUF];
    let mut left = bytes;
    while left > 0 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("stream ended {left} bytes early"),
            ));
        }
        left = left.saturating_sub(n as u64);
    }
    Ok(())
}

/// `count` sequential probes: connect, read the server's first byte, close.
fn latency(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        let stream = connect(addr).with_context(|| format!("probe {i} of {count}"))?;
        samples.push(start.elapsed());
        drop(stream);
    }
    Ok(samples)
}
