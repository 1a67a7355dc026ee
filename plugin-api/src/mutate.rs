//! Deterministic damage to encoded messages, for the tests that hold the SDK's readers to
//! prost's verdict on the same bytes.

/// A small xorshift generator: deterministic, so a failure reproduces. `next(n)` is in `0..n`.
pub(crate) fn generator(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    }
}

/// `body` with one random change: a bit flipped, cut short, a byte replaced or inserted.
pub(crate) fn mutated(body: &[u8], next: &mut impl FnMut(usize) -> usize) -> Vec<u8> {
    let mut m = body.to_vec();
    if m.is_empty() {
        return vec![next(256) as u8];
    }
    let i = next(m.len());
    match next(4) {
        0 => m[i] ^= 1 << next(8),
        1 => m.truncate(i),
        2 => m[i] = next(256) as u8,
        _ => m.insert(i, next(256) as u8),
    }
    m
}
