//! `idvault bench packets`: seal, chain and verify packets in memory, one core.

use std::time::Instant;

use idvault_core::SystemRng;

use crate::BenchError;

/// Seals `count` packets into one chain, then verifies it; prints packets/s.
pub fn run(count: u64) -> Result<(), BenchError> {
    use idvault_core::keys::generate_dek;
    use idvault_core::packet::{self, ChainHead};
    use idvault_core::subject::{SubjectId, validate_fields};
    let rng = SystemRng::default();
    let id = SubjectId::generate(&rng)?;
    let dek = generate_dek(&rng)?;
    let fields = validate_fields([("email".to_owned(), "ada.lovelace@example.org".to_owned())])?;
    let mut head = ChainHead::genesis(&id);
    let mut stored = Vec::with_capacity(usize::try_from(count)?);
    let t = Instant::now();
    for _ in 0..count {
        let (p, h) = packet::append(&id, &dek, head, &fields, 0, &rng)?;
        head = h;
        stored.extend(p.into_iter().map(|p| p.packet.into_bytes()));
    }
    let seal = t.elapsed();
    let t = Instant::now();
    let report = packet::verify_chain(
        &id,
        &dek,
        stored.iter().zip(1u64..).map(|(b, s)| (s, b.as_slice())),
        head,
    );
    let verify = t.elapsed();
    if !report.intact() {
        return Err("benchmark chain did not verify".into());
    }
    let rate = |d: std::time::Duration| count as f64 / d.as_secs_f64();
    println!("packets: {count}, value 24 bytes, one core");
    println!("seal+chain:        {:>12.0} packets/s", rate(seal));
    println!("verify (decrypt):  {:>12.0} packets/s", rate(verify));
    Ok(())
}
