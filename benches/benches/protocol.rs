//! Protocol benchmarks.

use criterion::{Criterion, criterion_group, criterion_main};

fn memmem_baseline(c: &mut Criterion) {
    let hay = vec![0u8; 1 << 16];
    c.bench_function("memmem_64k_miss", |b| {
        b.iter(|| memchr::memmem::find(std::hint::black_box(&hay), b"Leak"))
    });
}

criterion_group!(benches, memmem_baseline);
criterion_main!(benches);
