//! What mutual TLS's record encryption costs per MiB on this machine: ring's AEADs (rustls's provider in
//! Strata) sealing and opening 1 MiB in 16 KiB records, as a TLS connection does. Compare with the hop
//! benchmark (`cargo bench -p strata-edge-agent --bench serving`, part 3): a 1 MiB hop that goes up and
//! comes back seals and opens 2 MiB.
//!
//! `cargo bench -p strata-trust --bench cipher`

use std::time::Instant;

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, Algorithm, CHACHA20_POLY1305, LessSafeKey, Nonce};
use ring::aead::{Tag, UnboundKey};

const MIB: usize = 1 << 20;
const RECORD: usize = 16 * 1024;
const ROUNDS: usize = 300;

fn nonce(i: usize) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&(i as u64).to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Best-of-`ROUNDS` seal and open times of 1 MiB, ms.
fn measure(algorithm: &'static Algorithm) -> Result<(f64, f64), ring::error::Unspecified> {
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &vec![7u8; algorithm.key_len()])?);
    let mut data = vec![1u8; MIB];
    let mut sealed: Vec<Vec<u8>> = Vec::new();
    let (mut seal, mut open) = (f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let tags: Vec<Tag> = data
            .chunks_mut(RECORD)
            .enumerate()
            .map(|(i, record)| key.seal_in_place_separate_tag(nonce(i), Aad::empty(), record))
            .collect::<Result<_, _>>()?;
        seal = seal.min(t.elapsed().as_secs_f64() * 1e3);
        sealed.clear();
        for (record, tag) in data.chunks(RECORD).zip(&tags) {
            let mut r = record.to_vec();
            r.extend_from_slice(tag.as_ref());
            sealed.push(r);
        }
        let t = Instant::now();
        for (i, record) in sealed.iter_mut().enumerate() {
            key.open_in_place(nonce(i), Aad::empty(), record)?;
        }
        open = open.min(t.elapsed().as_secs_f64() * 1e3);
        // Back to plaintext for the next round (the data's content does not matter to the cipher).
        data.fill(1);
    }
    Ok((seal, open))
}

fn main() -> Result<(), ring::error::Unspecified> {
    println!("| AEAD (ring, 16 KiB records) | seal 1 MiB | open 1 MiB | seal GB/s |");
    println!("|---|---:|---:|---:|");
    for (name, algorithm) in [
        ("AES-128-GCM", &AES_128_GCM),
        ("AES-256-GCM (rustls's first choice)", &AES_256_GCM),
        ("CHACHA20-POLY1305", &CHACHA20_POLY1305),
    ] {
        let (seal, open) = measure(algorithm)?;
        println!(
            "| {name} | {seal:.3} ms | {open:.3} ms | {:.1} |",
            MIB as f64 / (seal / 1e3) / 1e9
        );
    }
    Ok(())
}
