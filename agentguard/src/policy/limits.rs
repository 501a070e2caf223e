//! Bounded replacements for builtins whose output size comes from a number
//! in their arguments. regorus's execution timer is checked between rule
//! steps, not inside a builtin: `numbers.range(1, 100000000)` would build a
//! 100M-element array (gigabytes, seconds) before the timer could fire.
//! Extensions are looked up before builtins, so these take their place.

use anyhow::bail;
use regorus::{Engine, Value};

use super::PolicyError;

/// Largest array `numbers.range` / `numbers.range_step` may build. Ports
/// (1..65535) fit; anything bigger is not a policy, it is a loop.
pub const MAX_RANGE: i64 = 100_000;

pub fn install(engine: &mut Engine) -> Result<(), PolicyError> {
    let err =
        |e: anyhow::Error| PolicyError::Compile(format!("cannot install builtin limits: {e:#}"));
    engine
        .add_extension(
            "numbers.range".into(),
            2,
            Box::new(|args: Vec<Value>| range(&args, None)),
        )
        .map_err(err)?;
    engine
        .add_extension(
            "numbers.range_step".into(),
            3,
            Box::new(|args: Vec<Value>| {
                let step = int_arg("numbers.range_step", &args, 2)?;
                if step <= 0 {
                    bail!("numbers.range_step: step must be a positive integer");
                }
                range(&args, Some(step))
            }),
        )
        .map_err(err)?;
    Ok(())
}

fn int_arg(name: &str, args: &[Value], i: usize) -> anyhow::Result<i64> {
    match args.get(i) {
        Some(Value::Number(n)) if n.is_integer() => match n.as_i64() {
            Some(v) => Ok(v),
            None => bail!("{name}: operand {} is out of range", i + 1),
        },
        _ => bail!("{name}: operand {} must be an integer", i + 1),
    }
}

/// Inclusive, counting down when `to < from` (OPA's semantics).
fn range(args: &[Value], step: Option<i64>) -> anyhow::Result<Value> {
    let name = if step.is_some() {
        "numbers.range_step"
    } else {
        "numbers.range"
    };
    let from = int_arg(name, args, 0)?;
    let to = int_arg(name, args, 1)?;
    let step = step.unwrap_or(1);
    let span = i128::from(to) - i128::from(from);
    let count = span.abs() / i128::from(step) + 1;
    if count > i128::from(MAX_RANGE) {
        bail!("{name}: {count} elements exceed agentguard's limit of {MAX_RANGE}");
    }
    let dir = if to >= from { step } else { -step };
    let values = (0..count as i64)
        .map(|k| Value::from(from + k * dir))
        .collect::<Vec<_>>();
    Ok(Value::from(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &Value) -> Vec<i64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_i64().expect("int"))
            .collect()
    }

    #[test]
    fn ranges_match_opa() {
        let r = |a: i64, b: i64| range(&[Value::from(a), Value::from(b)], None).expect("range");
        assert_eq!(ints(&r(1, 3)), vec![1, 2, 3]);
        assert_eq!(ints(&r(3, 1)), vec![3, 2, 1]);
        assert_eq!(ints(&r(2, 2)), vec![2]);
        let s = range(&[Value::from(0), Value::from(10), Value::from(4)], Some(4)).expect("step");
        assert_eq!(ints(&s), vec![0, 4, 8]);
        let s = range(&[Value::from(10), Value::from(0), Value::from(4)], Some(4)).expect("step");
        assert_eq!(ints(&s), vec![10, 6, 2]);
    }

    #[test]
    fn huge_ranges_are_refused() {
        let e = range(&[Value::from(1), Value::from(100_000_000)], None).expect_err("too big");
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
