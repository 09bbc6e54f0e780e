//! A packet-level link emulator: bridges TUN interface A (in network namespace A) and TUN interface B (in
//! namespace B), holding every packet for the one-way delay of its direction and dropping a share of them.
//! Rate limits are the kernel's (`tc ... tbf` on each TUN interface), applied by `testbed/run`.
//!
//! Because it forwards *packets*, TCP's congestion control sees the full RTT (a TCP proxy would end each
//! connection locally and hide it). One reader and one writer thread per direction: the writer sleeps with
//! the OS timer (tens of µs), not an async runtime's 1 ms wheel.
//!
//! Settings change at run time: each stdin line `ab_delay_ms=D ba_delay_ms=D ab_loss_pct=P ba_loss_pct=P`
//! (any subset) applies at once. When stdin closes (whoever started it is gone), it exits.
//!
//! ```sh
//! strata-netem --a dev:tdev0 --b edge:tedge0 --ab-delay-ms 10 --ba-delay-ms 10
//! ```

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use strata_testbed::sys;

#[derive(Parser)]
#[command(about = "Bridges two TUN interfaces in two network namespaces with delay and loss")]
struct Args {
    /// Side A: NAMESPACE:TUN.
    #[arg(long)]
    a: String,
    /// Side B: NAMESPACE:TUN.
    #[arg(long)]
    b: String,
    /// One-way delay A → B, ms.
    #[arg(long, default_value_t = 0.0)]
    ab_delay_ms: f64,
    /// One-way delay B → A, ms.
    #[arg(long, default_value_t = 0.0)]
    ba_delay_ms: f64,
    /// Packets lost A → B, percent.
    #[arg(long, default_value_t = 0.0)]
    ab_loss_pct: f64,
    /// Packets lost B → A, percent.
    #[arg(long, default_value_t = 0.0)]
    ba_loss_pct: f64,
}

/// One direction's settings, shared with the control thread: delay in ns, loss in parts per billion.
#[derive(Default)]
struct Direction {
    delay_ns: AtomicU64,
    loss_ppb: AtomicU64,
}

impl Direction {
    fn set(&self, delay_ms: Option<f64>, loss_pct: Option<f64>) -> Result<()> {
        if let Some(d) = delay_ms {
            if !(d.is_finite() && d >= 0.0) {
                bail!("delay {d} ms is impossible: it must be a number >= 0");
            }
            self.delay_ns.store((d * 1e6) as u64, Ordering::Relaxed);
        }
        if let Some(p) = loss_pct {
            if !(0.0..=100.0).contains(&p) {
                bail!("loss {p} % is impossible: it must be between 0 and 100");
            }
            self.loss_ppb.store((p * 1e7) as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn open(side: &str) -> Result<File> {
    let (ns, tun) = side
        .split_once(':')
        .with_context(|| format!("\"{side}\" is not NAMESPACE:TUN"))?;
    sys::enter_netns(ns).with_context(|| format!("entering network namespace {ns}"))?;
    sys::open_tun(tun).with_context(|| format!("attaching to TUN {tun} in {ns}"))
}

/// Reads packets from `from`, stamps each with its due time, drops the lost ones.
fn read_side(mut from: File, dir: Arc<Direction>, to: mpsc::Sender<(Instant, Vec<u8>)>, seed: u64) {
    let mut rng = seed | 1;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("strata-netem: read failed: {e}");
                return;
            }
        };
        let loss = dir.loss_ppb.load(Ordering::Relaxed);
        if loss > 0 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng % 1_000_000_000 < loss {
                continue;
            }
        }
        let due = Instant::now() + Duration::from_nanos(dir.delay_ns.load(Ordering::Relaxed));
        if to.send((due, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

/// Writes each packet to `to` when it is due. The OS oversleeps by tens of µs; the writer learns by how much
/// (a moving average) and wakes that much earlier.
fn write_side(mut to: File, from: mpsc::Receiver<(Instant, Vec<u8>)>) {
    let mut oversleep = Duration::ZERO;
    for (due, packet) in from {
        let now = Instant::now();
        if due > now + oversleep {
            let asked = due - now - oversleep;
            let slept_from = Instant::now();
            std::thread::sleep(asked);
            let over = slept_from.elapsed().saturating_sub(asked);
            oversleep = (oversleep * 7 + over) / 8;
        }
        if let Err(e) = to.write(&packet) {
            // A packet the kernel refuses (the interface went down) is a lost packet, as on a real link.
            if e.kind() != std::io::ErrorKind::Interrupted {
                eprintln!("strata-netem: write failed: {e}");
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let ab = Arc::new(Direction::default());
    let ba = Arc::new(Direction::default());
    ab.set(Some(args.ab_delay_ms), Some(args.ab_loss_pct))?;
    ba.set(Some(args.ba_delay_ms), Some(args.ba_loss_pct))?;
    let a = open(&args.a)?;
    let b = open(&args.b)?;
    let (a_read, b_read) = (a.try_clone()?, b.try_clone()?);
    let (to_b, for_b) = mpsc::channel();
    let (to_a, for_a) = mpsc::channel();
    let threads = [
        {
            let ab = ab.clone();
            std::thread::spawn(move || read_side(a_read, ab, to_b, 0x9e37_79b9))
        },
        {
            let ba = ba.clone();
            std::thread::spawn(move || read_side(b_read, ba, to_a, 0x7f4a_7c15))
        },
        std::thread::spawn(move || write_side(b, for_b)),
        std::thread::spawn(move || write_side(a, for_a)),
    ];
    eprintln!("strata-netem: bridging {} <-> {}", args.a, args.b);
    // Settings from stdin until it closes; then keep bridging.
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let apply = || -> Result<()> {
            for kv in line.split_whitespace() {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("\"{kv}\" is not KEY=VALUE"))?;
                let v: f64 = v
                    .parse()
                    .with_context(|| format!("\"{v}\" is not a number"))?;
                match k {
                    "ab_delay_ms" => ab.set(Some(v), None)?,
                    "ba_delay_ms" => ba.set(Some(v), None)?,
                    "ab_loss_pct" => ab.set(None, Some(v))?,
                    "ba_loss_pct" => ba.set(None, Some(v))?,
                    _ => bail!(
                        "unknown setting \"{k}\" (ab_delay_ms, ba_delay_ms, ab_loss_pct, ba_loss_pct)"
                    ),
                }
            }
            Ok(())
        };
        if let Err(e) = apply() {
            eprintln!("strata-netem: {e:#}");
        }
    }
    // Stdin closed: the orchestrator is gone (or never meant to steer): stop bridging.
    drop(threads);
    Ok(())
}
