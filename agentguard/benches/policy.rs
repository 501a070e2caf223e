//! One decision with the shipped policies (`policies/`) per request kind.
//!
//! `cargo bench -p agentguard --bench policy` runs Criterion per kind:
//! `eval/KIND` is the evaluation itself on the calling thread, on the path
//! the daemon uses (regorus's bytecode VM for the shipped policies), what one
//! core sustains; `decide/KIND` is the daemon's full path (hand-off to a
//! policy worker under the watchdog, decision checks). `decide/connect-typed`
//! is a connect decision from the typed input as the proxy makes it, served
//! by the connect decision cache after the first call, and
//! `decide/connect-typed-uncached` the same without the cache (input
//! conversion + decide). Afterwards it prints p50/p99 per kind from a plain
//! sample, for the VM and the tree interpreter, since Criterion reports means
//! and medians only. The inputs are `agentguard/src/policy/cases.json`
//! (`"bench": true`); the lib tests check that both evaluators agree on every
//! input of that file.

use std::{
    hint::black_box,
    path::Path,
    time::{Duration, Instant},
};

use agentguard::{
    config::Protocol,
    decide::{Decide as _, Input, Request, Target},
    identity::Identity,
    policy::{self, Bundle, EvalPath, PolicyEngine, samples},
};
use criterion::Criterion;
use regorus::Value;

fn connect_input() -> Input {
    Input {
        identity: Identity {
            uid: 1000,
            gid: 1000,
            user: Some("agent".into()),
            pid: 4242,
            comm: "python3".into(),
            exe: Some("/usr/bin/python3".into()),
            cmdline: vec!["python3".into(), "agent.py".into()],
            cgroup: Some("/agentguard/coder".into()),
            cgroup_id: 1234,
            agent: Some("coder".into()),
            unit: None,
        },
        target: Target {
            ip: "10.0.0.5".into(),
            port: 5432,
            name: Some("prod-db".into()),
            protocol: Protocol::Postgres,
            host: Some("db.internal".into()),
            labels: vec!["production".into()],
        },
        request: Request::Connect,
    }
}

fn policies() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn bundles() -> (Bundle, Bundle) {
    let files = policy::read_dir(&policies()).expect("shipped policies");
    let vm = Bundle::compile_with(&files, policy::DEFAULT_BUDGET, true).expect("compile");
    let interp = Bundle::compile_with(&files, policy::DEFAULT_BUDGET, false).expect("compile");
    assert_eq!(vm.path(), EvalPath::Vm, "{}", vm.path_description());
    (vm, interp)
}

fn benched() -> Vec<(String, Value)> {
    samples::samples()
        .into_iter()
        .filter(|s| s.bench)
        .map(|s| (s.name, s.input))
        .collect()
}

fn benches(c: &mut Criterion) {
    let (vm, _) = bundles();
    let engine = PolicyEngine::from_dir(&policies(), None);
    for sample in samples::samples().into_iter().filter(|s| s.bench) {
        let (kind, input) = (sample.name, sample.input);
        let d = engine.decide_value(input.clone());
        assert_eq!(d.action, sample.expect, "{kind}: {}", d.reason);
        let mut local = vm.evaluator().expect("evaluator");
        c.bench_function(&format!("eval/{kind}"), |b| {
            // An error (the timer firing while the machine is busy) is
            // timed like any result; `percentiles` counts them.
            b.iter(|| black_box(local.eval(input.clone()).is_ok()))
        });
        c.bench_function(&format!("decide/{kind}"), |b| {
            b.iter(|| black_box(engine.decide_value(input.clone())))
        });
    }
    let typed = connect_input();
    c.bench_function("decide/connect-typed", |b| {
        b.iter(|| black_box(engine.decide(&typed)))
    });
    c.bench_function("decide/connect-typed-uncached", |b| {
        b.iter(|| black_box(engine.decide_value(policy::to_value(&typed).expect("input"))))
    });
    c.bench_function("input/connect-to_value", |b| {
        b.iter(|| black_box(policy::to_value(&typed).expect("input")))
    });
    c.bench_function("input/connect-serde_json", |b| {
        b.iter(|| black_box(Value::from(serde_json::to_value(&typed).expect("json"))))
    });
}

fn sample(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        v.push(t.elapsed());
    }
    v.sort();
    v
}

fn p(v: &[Duration], q: usize) -> Duration {
    v[v.len() * q / 100]
}

fn per_sec(v: &[Duration]) -> f64 {
    v.len() as f64 / v.iter().sum::<Duration>().as_secs_f64()
}

/// p50 / p99 from single timed calls.
fn percentiles() {
    let (vm, interp) = bundles();
    let engine = PolicyEngine::from_dir(&policies(), None);
    let n = 20_000;
    println!(
        "\n{:<10} {:>10} {:>10} {:>12}   {:>10} {:>10} {:>12}   {:>10} {:>10}",
        "kind",
        "vm p50",
        "vm p99",
        "vm eval/s",
        "interp p50",
        "interp p99",
        "interp eval/s",
        "decide p50",
        "decide p99"
    );
    for (kind, input) in benched() {
        let mut on_vm = vm.evaluator().expect("vm");
        let mut on_interp = interp.evaluator().expect("interpreter");
        let mut errors = 0;
        let e_vm = sample(n, || {
            errors += usize::from(black_box(on_vm.eval(input.clone())).is_err());
        });
        let e_in = sample(n / 4, || {
            errors += usize::from(black_box(on_interp.eval(input.clone())).is_err());
        });
        let dec = sample(n, || {
            black_box(engine.decide_value(input.clone()));
        });
        println!(
            "{kind:<10} {:>10.1?} {:>10.1?} {:>12.0}   {:>10.1?} {:>10.1?} {:>12.0}   {:>10.1?} {:>10.1?}",
            p(&e_vm, 50),
            p(&e_vm, 99),
            per_sec(&e_vm),
            p(&e_in, 50),
            p(&e_in, 99),
            per_sec(&e_in),
            p(&dec, 50),
            p(&dec, 99)
        );
        if errors > 0 {
            println!(
                "  ({errors} evaluations failed, e.g. over the time budget while descheduled)"
            );
        }
    }
    let typed = connect_input();
    let hit = sample(n, || {
        black_box(engine.decide(&typed));
    });
    let miss = sample(n, || {
        black_box(engine.decide_value(policy::to_value(&typed).expect("input")));
    });
    println!(
        "connect, typed input: cache hit p50 {:.2?} p99 {:.2?} ({:.0}/s); uncached p50 {:.1?} p99 {:.1?}",
        p(&hit, 50),
        p(&hit, 99),
        per_sec(&hit),
        p(&miss, 50),
        p(&miss, 99)
    );
    // The hand-off alone: a policy that does nothing, inline vs. through a worker.
    let dir = std::env::temp_dir().join(format!("agentguard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("p.rego"),
        "package agentguard\nimport rego.v1\ndecision := {\"action\": \"allow\"}\n",
    )
    .expect("write");
    let trivial = PolicyEngine::from_dir(&dir, None);
    let files = policy::read_dir(&dir).expect("read");
    let mut inline = Bundle::compile(&files, policy::DEFAULT_BUDGET)
        .expect("compile")
        .evaluator()
        .expect("evaluator");
    let input = Value::new_object();
    let a = sample(n, || {
        black_box(inline.eval(input.clone()).is_ok());
    });
    let b = sample(n, || {
        black_box(trivial.decide_value(input.clone()));
    });
    println!(
        "trivial policy: inline p50 {:.2?} p99 {:.2?}; via worker p50 {:.2?} p99 {:.2?} (hand-off ≈ {:.2?} at p50)",
        p(&a, 50),
        p(&a, 99),
        p(&b, 50),
        p(&b, 99),
        p(&b, 50).saturating_sub(p(&a, 50))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    percentiles();
}
