//! Throughput of the mask engine on one core:
//! - 10 KB of PII-dense text (goal ≤ 0.1 ms),
//! - 10 KB of prose with no PII and no digits (goal ≥ 1 GB/s: the
//!   prefilter path),
//! - 10 KB of logs with no PII but many numbers (timestamps, ids, versions:
//!   the regex path),
//! - one 10-column row (per-row cost, one call per column).

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use agentguard_mask::{Engine, FieldContext, MaskConfig};
use common::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SIZE: usize = 10 * 1024;

fn dense() -> String {
    let mut r = Rng::new(42);
    let mut s = String::new();
    while s.len() < SIZE {
        s += &format!(
            "Customer {} <{}> paid with {}; IBAN {}; call {}; SSN {}.\n",
            r.pick(&["Ann", "Bo", "Chen", "Dee"]),
            email(&mut r),
            card(&mut r),
            iban(&mut r),
            phone(&mut r),
            ssn(&mut r),
        );
    }
    s.truncate(s[..SIZE].rfind('\n').unwrap_or(SIZE));
    s
}

fn prose() -> String {
    let words = "the agent reads the ticket and replies to the customer about the refund \
                 policy which applies when an order arrives late or damaged and the team \
                 reviews each case before closing it with a short note for the record";
    let mut s = String::new();
    while s.len() < SIZE {
        s += words;
        s += ".\n";
    }
    s.truncate(SIZE);
    s
}

fn logs() -> String {
    let mut r = Rng::new(7);
    let mut s = String::new();
    while s.len() < SIZE {
        s += &format!(
            "2024-03-{:02}T{:02}:{:02}:{:02}Z INFO worker-{} handled job {} in {} ms (v{}.{}.{}, rows={})\n",
            r.range(1, 28),
            r.below(24),
            r.below(60),
            r.below(60),
            r.below(16),
            r.range(100_000, 999_999),
            r.below(2000),
            r.below(3),
            r.below(20),
            r.below(100),
            r.below(10_000),
        );
    }
    s.truncate(SIZE);
    s
}

fn bench(c: &mut Criterion) {
    let engine = Engine::new(&MaskConfig {
        hash_key: Some("bench-key-0123456789".into()),
        ..MaskConfig::default()
    })
    .unwrap();
    let sel = engine.default_selection();
    let text = FieldContext::text();

    let mut g = c.benchmark_group("mask_10k");
    for (name, input) in [
        ("dense_pii", dense()),
        ("no_pii_prose", prose()),
        ("no_pii_logs", logs()),
    ] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| engine.mask_value(black_box(&input), &text, sel))
        });
    }
    g.finish();

    let mut r = Rng::new(3);
    let row: Vec<(&str, String)> = vec![
        ("id", "1048576".into()),
        ("name", "Maria Garcia".into()),
        ("email", email(&mut r)),
        ("phone", phone(&mut r)),
        ("created_at", "2024-03-01 12:34:56+00".into()),
        ("status", "active".into()),
        ("balance", "1234.56".into()),
        ("card", card(&mut r)),
        ("address", "221B Baker Street, London".into()),
        ("notes", "prefers email contact; VIP since last year".into()),
    ];
    let paths: Vec<String> = row.iter().map(|(c, _)| format!("users.{c}")).collect();
    c.bench_function("row_10_columns", |b| {
        b.iter(|| {
            for ((col, v), path) in row.iter().zip(&paths) {
                black_box(engine.mask_value(v, &FieldContext::column(col, Some(path)), sel));
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
